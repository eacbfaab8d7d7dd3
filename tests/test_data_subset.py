"""Subsets: stratified (per-class counts within one example of the fraction), nested, stable for one
seed and different for another; other splits referenced, not copied; the manifest names the parent."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from histaug_tf.common import UserError
from histaug_tf.data import pipeline
from histaug_tf.data.subsets import make_subsets
from histaug_tf.data.writer import DatasetWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("p") / "parent")
    rng = np.random.default_rng(0)
    labels = (rng.random(533) < 0.3).astype(int)  # imbalanced: 30 % class 1
    with DatasetWriter(d, "toy", (4, 4, 3), shard_size=50) as w:
        for i, lab in enumerate(labels):
            w.add("train", np.full((4, 4, 3), i % 256, np.uint8), int(lab), f"toy/train/{i}", "train")
        for i in range(20):
            w.add("test", np.full((4, 4, 3), i, np.uint8), i % 2, f"toy/test/{i}", "test")
    return d, labels


def keys_of(d, split="train"):
    return [ex["key"].numpy().decode() for ex in pipeline.make_dataset(d, split, with_meta=True)]


def test_subsets_stratified_nested_stable(tmp_path, parent):
    src, labels = parent
    n = np.bincount(labels)
    res = make_subsets(src, "0.03,0.2", 0, str(tmp_path / "a"), quiet=True)
    subs = {}
    for f in (0.03, 0.2):
        d = str(tmp_path / "a" / f"frac{f:g}")
        ks = keys_of(d)
        assert len(ks) == len(set(ks))
        idx = [int(k.split("/")[-1]) for k in ks]
        cc = np.bincount(labels[idx], minlength=2)
        assert np.all(np.abs(cc - f * n) <= 0.5), (f, cc, f * n)  # rounded to nearest
        assert res[f]["splits"]["train"]["class_counts"] == cc.tolist()
        assert idx == sorted(idx)  # stored order kept
        subs[f] = set(ks)
    assert subs[0.03] < subs[0.2]
    again = make_subsets(src, [0.2, 0.03], 0, str(tmp_path / "b"), quiet=True)
    assert set(keys_of(str(tmp_path / "b" / "frac0.03"))) == subs[0.03]
    assert set(keys_of(str(tmp_path / "b" / "frac0.2"))) == subs[0.2]
    other = make_subsets(src, "0.2", 1, str(tmp_path / "c"), quiet=True)
    assert set(keys_of(str(tmp_path / "c" / "frac0.2"))) != subs[0.2]
    assert other[0.2]["splits"]["train"]["class_counts"] == res[0.2]["splits"]["train"]["class_counts"]


def test_counts_round_to_nearest(tmp_path, parent):
    """round(f · n_c) per class, not the floor: fractions chosen so that some class's exact count
    has a fractional part above one half."""
    src, labels = parent
    n = np.bincount(labels)
    fractions = (0.05, 0.11, 0.37)
    exact = np.outer(fractions, n)
    assert (exact - np.floor(exact) > 0.5).any()  # otherwise floor and round would agree
    res = make_subsets(src, fractions, 3, str(tmp_path / "r"), quiet=True)
    for f, e in zip(fractions, exact):
        assert res[f]["splits"]["train"]["class_counts"] == np.floor(e + 0.5).astype(int).tolist()


def test_other_splits_referenced_and_parent_named(tmp_path, parent):
    src, _ = parent
    out = str(tmp_path / "s")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1")
    p = subprocess.run([sys.executable, "-m", "histaug_tf.subset", f"--src={src}", "--fractions=0.1",
                        "--seed=0", f"--out={out}"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    d = os.path.join(out, "frac0.1")
    m = json.load(open(os.path.join(d, "manifest.json")))
    assert m["provenance"]["parent"] == os.path.abspath(src)
    assert m["provenance"]["subset_of"]["fraction"] == 0.1
    assert m["splits"]["test"]["referenced"] is True
    assert sorted(os.listdir(d)) == ["manifest.json", "train-00000-of-00001.tfrecord"]  # test not copied
    for sh in m["splits"]["test"]["shards"]:
        assert os.path.samefile(os.path.join(d, sh["file"]), os.path.join(src, os.path.basename(sh["file"])))
    assert sorted(keys_of(d, "test")) == sorted(keys_of(src, "test"))
    with pytest.raises(UserError, match=f"{d}: output directory exists"):
        make_subsets(src, "0.1", 0, out)


def test_bad_fractions(tmp_path, parent):
    with pytest.raises(UserError, match="fractions"):
        make_subsets(parent[0], "0,0.2", 0, str(tmp_path / "x"))
    with pytest.raises(UserError, match="manifest.json: missing"):
        make_subsets(str(tmp_path), "0.2", 0, str(tmp_path / "x"))
