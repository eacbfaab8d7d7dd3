"""The typed training config (gan/config.py) and the per-name statistics (gan/stats.py)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.gan.config import SECTIONS, TrainingConfig
from histaug_tf.gan.stats import TrainingStats, moments


def test_fields_go_to_their_sections_and_survive_json():
    c = TrainingConfig.from_flat(outdir="/r", data="/d", resolution=32, label_names=["a", "b"],
                                 cfg="tiny", c_dim=2, gamma=0.5, p=0.2, target=0.6, tick=2.0,
                                 snap=1, batch=16, grid=[4, 2], metrics=["fid10k"], jit=True)
    assert (c.data.resolution, c.networks.c_dim, c.loss.gamma, c.augment.p, c.augment.target,
            c.schedule.tick, c.schedule.snap, c.distribution.jit) == (32, 2, 0.5, 0.2, 0.6, 2.0,
                                                                     1, True)
    assert c.data.label_names == ("a", "b") and c.schedule.grid == (4, 2)
    d = json.loads(c.to_json())
    assert set(d) == set(SECTIONS) | {"outdir", "preset"}
    assert d["loss"]["gamma"] == 0.5 and d["augment"]["target"] == 0.6
    assert TrainingConfig.from_dict(d) == c
    with pytest.raises(Exception):  # frozen
        c.loss.gamma = 1.0
    assert c.replace(kimg=2.0).schedule.kimg == 2.0 and c.schedule.kimg != 2.0


def test_unknown_fields_and_flat_files_are_refused():
    with pytest.raises(TypeError, match="r1_gamma"):
        TrainingConfig.from_flat(r1_gamma=1.0)  # the flag is --gamma: no second name
    d = TrainingConfig().to_dict()
    d["loss"]["gama"] = 1.0
    with pytest.raises(ValueError, match="loss.gama"):
        TrainingConfig.from_dict(d)
    with pytest.raises(ValueError):  # the flat training_options.json of older versions
        TrainingConfig.from_dict({"cfg": "tiny", "resolution": 16})


def test_values_of_another_type_are_refused_naming_the_field():
    """A field gets a value of its annotated type (an int also fits a float, a JSON list a
    tuple, None an optional); anything else (a damaged training_options.json) is a ValueError
    naming section.field, never a config that fails later."""
    ok = TrainingConfig.from_flat(gamma=1, class_filter=None, label_names=["a"], jit=False,
                                  resolution=np.int64(32))
    assert ok.loss.gamma == 1 and ok.data.label_names == ("a",) and ok.data.resolution == 32
    for name, value, section in (("gamma", "0.5", "loss"), ("resolution", 32.5, "data"),
                                 ("resolution", True, "data"), ("jit", 1, "distribution"),
                                 ("label_names", 5, "data"), ("cfg", None, "networks"),
                                 ("class_filter", "1", "data")):
        with pytest.raises(ValueError, match=rf"^{section}\.{name}: "):
            TrainingConfig.from_flat(**{name: value})
        d = TrainingConfig().to_dict()
        d[section][name] = value
        with pytest.raises(ValueError, match=rf"^{section}\.{name}: "):
            TrainingConfig.from_dict(d)
    d = TrainingConfig().to_dict()
    d["preset"] = [1]
    with pytest.raises(ValueError, match="preset"):
        TrainingConfig.from_dict(d)


def test_statistics_by_name_against_numpy():
    rnd = np.random.RandomState(0)
    a, b = rnd.randn(7).astype(np.float32), rnd.randn(5).astype(np.float32)
    st = TrainingStats(["Loss/x", "Loss/y"])
    st.add("Loss/x", moments(a))
    st.add("Loss/x", moments(b))
    out = st.read()
    both = np.concatenate([a, b]).astype(np.float64)
    assert set(out) == {"Loss/x", "Loss/x/std"}  # y reported nothing: absent, not 0
    np.testing.assert_allclose(out["Loss/x"], both.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["Loss/x/std"], both.std(), rtol=1e-4)
    assert st.read() == {}  # read restarts the sums
    with pytest.raises(KeyError, match="Loss/z"):  # a name nobody declared is an error
        st.add("Loss/z", moments(tf.ones([2])))
