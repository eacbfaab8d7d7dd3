"""train_gan end to end on the real networks (tiny preset, 16 px): run-directory contract, a
loadable snapshot, rerun resumes, bad flags give one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_dataset(path, n=32, size=16):
    from histaug_tf.data.writer import DatasetWriter
    rnd = np.random.RandomState(0)
    with DatasetWriter(path, "toy", (size, size, 3), shard_size=8) as w:
        for i in range(n):
            label = i % 2
            img = np.full((size, size, 3), 200 if label else 60, np.uint8)
            img = np.clip(img + rnd.randint(-30, 30, img.shape), 0, 255).astype(np.uint8)
            w.add("train", img, label, f"toy/{i}", f"g{i}")
    return path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return _write_dataset(str(tmp_path_factory.mktemp("data") / "toy"))


@pytest.mark.slow
def test_train_gan_end_to_end_and_resume(toy_data, tmp_path):
    from histaug_tf.apps.train_gan import launch
    from histaug_tf.gan.snapshot import latest_snapshot, load_snapshot
    out = str(tmp_path / "run")
    common = dict(data=toy_data, outdir=out, cfg="tiny", batch=8, tick=0.016, snap=1,
                  aug="noaug", cond=True, shuffle_buffer=16)
    launch(kimg=0.024, **common)
    files = set(os.listdir(out))
    assert {"training_options.json", "stats.jsonl", "checkpoints", "fakes000000.png",
            "network-snapshot-000000.keras"} <= files
    opts = json.load(open(os.path.join(out, "training_options.json")))
    assert opts["networks"]["cfg"] == "tiny" and opts["networks"]["c_dim"] == 2
    assert opts["data"]["resolution"] == opts["networks"]["G_kwargs"]["img_resolution"] == 16
    assert opts["networks"]["G_kwargs"]["c_dim"] == 2
    lines = [json.loads(x) for x in open(os.path.join(out, "stats.jsonl"))]
    assert [r["nimg"] for r in lines] == [8, 24]
    snap = load_snapshot(latest_snapshot(out))
    assert snap["metadata"]["nimg"] == 24
    G = snap["G_ema"]
    img = np.asarray(G(np.zeros([2, G.z_dim], np.float32), np.eye(2, dtype=np.float32),
                       noise_mode="const"))
    assert img.shape == (2, 16, 16, 3) and np.isfinite(img).all()
    # rerunning with a longer --kimg continues from the checkpoint
    launch(kimg=0.048, **common)
    lines = [json.loads(x) for x in open(os.path.join(out, "stats.jsonl"))]
    assert [r["nimg"] for r in lines] == [8, 24, 40, 48]
    assert [r["tick"] for r in lines] == [0, 1, 2, 3]

    # transfer learning: a new run from the snapshot, with Freeze-D on the first 2 D layers
    # (reference numbering: top block fromrgb = 0, conv0 = 1, conv1 = 2, skip = 3, next block 4...)
    from histaug_tf.gan.networks import freeze_d_variables
    src = latest_snapshot(out)
    snap = load_snapshot(src)
    out2 = str(tmp_path / "transfer")
    t = launch(**dict(common, outdir=out2, resume=src, freezed=2, kimg=0.016))
    top = snap["D"].blocks[0]
    frozen_src = top.fromrgb.trainable_variables + top.conv0.trainable_variables
    assert len(freeze_d_variables(t.D, 2)) == len(frozen_src) == 4  # weight + bias each
    for a, b in zip(freeze_d_variables(t.D, 2), frozen_src):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # frozen: unchanged
    moved = [np.abs(a.numpy() - b.numpy()).max() for a, b in
             zip(t.D.blocks[0].conv1.trainable_variables, top.conv1.trainable_variables)]
    # the rest of D trains, starting from the snapshot's values (2 Adam steps of lr 0.0025)
    assert 0 < max(moved) < 0.05
    assert json.load(open(os.path.join(out2, "training_options.json")))["schedule"]["ema_rampup"] is None


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "histaug_tf.train_gan", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line(toy_data, tmp_path):
    out = str(tmp_path / "o")
    r = _cli(f"--data={tmp_path / 'missing'}", f"--outdir={out}")
    assert r.returncode == 1
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "missing" in err[0], r.stderr[-2000:]
    assert not os.path.exists(out)


def test_bad_flag_combinations(toy_data, tmp_path):
    from histaug_tf.common import UserError
    from histaug_tf.apps.train_gan import resolve_config
    out = str(tmp_path / "o")
    with pytest.raises(UserError, match="--class_filter"):
        resolve_config(data=toy_data, outdir=out, cond=True, class_filter=1, cfg="tiny")
    with pytest.raises(UserError, match="power of two"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", resolution=12)
    with pytest.raises(UserError, match="cannot crop 16x16 images to --resolution=32"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", resolution=32)
    with pytest.raises(UserError, match="cannot pad 16x16 images to --resolution=8"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", resolution=8, resize="pad")
    with pytest.raises(UserError, match="--batch=6: the per-replica batch 6 is not a multiple "
                       "of the minibatch-std group size 4"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", batch=6)
    with pytest.raises(UserError, match="--batch=8 is not divisible by 3 replicas"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", batch=8, num_replicas=3)
    with pytest.raises(UserError, match="--aug=fixed needs --p"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", aug="fixed")
    with pytest.raises(UserError, match="class_filter=5"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", class_filter=5)
    with pytest.raises(UserError, match="missing.pth: Inception weights file not found"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", metrics=["fid"],
                        inception_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="--inception_weights is required"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", metrics=["fid50k_full"])
    with pytest.raises(UserError, match="--jit_phases=Gmain,Gfoo: unknown phase 'Gfoo'"):
        resolve_config(data=toy_data, outdir=out, cfg="tiny", jit=True, jit_phases="Gmain,Gfoo")
    assert not os.path.exists(out)
    o = resolve_config(data=toy_data, outdir=out, cfg="tiny", class_filter=1, batch=4, gamma=0.5)
    assert (o.networks.c_dim, o.schedule.batch, o.loss.gamma, o.data.resolution) == (0, 4, 0.5, 16)


def test_metrics_hook_passes_inception_weights(toy_data, tmp_path, monkeypatch):
    """--inception_weights reaches training_metrics (it used to fall back to the environment)."""
    import histaug_tf.metrics as metrics_pkg
    from histaug_tf.apps.train_gan import _metrics_hook, resolve_config

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not read here")
    o = resolve_config(data=toy_data, outdir=str(tmp_path / "run"), cfg="tiny", metrics=["fid"],
                        inception_weights=str(weights))
    from histaug_tf.apps import generate as generate_lib

    seen = {}
    monkeypatch.setattr(metrics_pkg, "training_metrics", lambda **kw: seen.update(kw) or {"fid": 1.0})
    monkeypatch.setattr(generate_lib, "Synthesizer", lambda **kw: ("synth", kw))
    G_ema = object()
    assert _metrics_hook(o)(G_ema, None, 1.0) == {"fid": 1.0}
    assert seen["inception_weights"] == str(weights) and seen["metrics"] == ["fid"]
    assert seen["kimg"] == 1.0  # the per-snapshot generator seed derives from it
    # the metrics draw from G_ema with random noise, as NVlabs' metrics during training
    tag, kw = seen["generator"]
    assert tag == "synth" and kw["G"] is G_ema and kw["noise_mode"] == "random"


def test_seed_sets_the_initial_networks(toy_data, tmp_path, monkeypatch):
    """--seed fixes the initial weights without --deterministic (the reference seeds its
    networks with the run's seed); another seed gives other weights."""
    import random

    from histaug_tf.apps.train_gan import launch
    from histaug_tf.gan.trainer import Trainer
    monkeypatch.setattr(Trainer, "run", lambda self: None)  # networks only, no training
    common = dict(data=toy_data, cfg="tiny", batch=8, aug="noaug", shuffle_buffer=16, kimg=1)
    state = random.getstate()
    runs = [launch(outdir=str(tmp_path / f"r{i}"), seed=s, **common)
            for i, s in enumerate([3, 3, 4])]
    assert random.getstate() == state  # the build leaves Python's RNG as it found it
    weights = [[v.numpy() for v in t.G.variables + t.D.variables] for t in runs]
    assert len(weights[0]) > 10
    for a, b in zip(weights[0], weights[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(weights[0], weights[2]))
