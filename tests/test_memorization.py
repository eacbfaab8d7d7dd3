"""The memorisation check (metrics/memorization.py): nearest neighbours against a brute-force loop;
a synthetic set built to copy its training patches (noisy, turned over) scores near 1, a fresh set
from the same distribution near 0; the closest pair names the copied patch and its orientation."""
import numpy as np
import pytest

from histaug_tf.data.synthetic_tissue import render_patches
from histaug_tf.metrics import memorization as mem


def test_nearest_against_a_loop():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 7)).astype(np.float32)
    owner = np.arange(30) % 10
    q = rng.normal(size=(12, 7)).astype(np.float32)
    excl = rng.integers(0, 10, 12)
    d, j = mem.nearest(q, ref, owner, exclude_owner=excl)
    for i in range(12):
        best = min((np.sqrt(np.mean((q[i].astype(float) - ref[r]) ** 2)), r)
                   for r in range(30) if owner[r] != excl[i])
        assert d[i] == pytest.approx(best[0], rel=1e-6) and j[i] == best[1]


def test_dihedral_orientations():
    x = np.arange(2 * 3 * 3).reshape(2, 3, 3, 1)
    v = mem.dihedral(x)
    assert v.shape == (8, 2, 3, 3, 1) and np.array_equal(v[0], x)
    flat = {v[t, 1].tobytes() for t in range(8)}
    assert len(flat) == 8  # all distinct for an asymmetric patch
    assert np.array_equal(v[4], np.swapaxes(x, 1, 2)) and np.array_equal(v[1], x[:, :, ::-1])


@pytest.fixture(scope="module")
def train():
    seeds = np.arange(60)
    return render_patches(seeds, seeds % 2, size=32)


def test_copies_score_near_one(train):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 60, 300)
    views = mem.dihedral(train)
    orient = rng.integers(0, 8, 300)
    copies = views[orient, idx].astype(np.int16) + rng.integers(-6, 7, (300, 32, 32, 3))
    copies = np.clip(copies, 0, 255).astype(np.uint8)
    r = mem.memorization(train, copies)
    assert r["share"] >= 0.95, r["share"]
    assert r["n_train"] == 60 and r["orientations"] == 8 and r["n_synthetic"] == 300
    for pair in r["closest"]:  # the closest pairs are the copied patch in its orientation
        assert pair["train"] == idx[pair["synthetic"]]
        assert np.array_equal(views[pair["orientation"], pair["train"]],
                              views[orient[pair["synthetic"]], idx[pair["synthetic"]]])
    # without the orientations, turned-over copies are missed
    r0 = mem.memorization(train, copies, orientations=False)
    assert r0["share"] < 0.4, r0["share"]


def test_fresh_patches_score_near_zero(train):
    seeds = np.arange(1000, 1400)
    fresh = render_patches(seeds, seeds % 2, size=32)
    r = mem.memorization(train, fresh)
    assert r["share"] <= 0.05, r["share"]
    assert r["synthetic_nn_percentiles"]["50"] > r["threshold"]


@pytest.mark.slow
def test_calc_metrics_cli(train, tmp_path):
    """python -m histaug_tf.calc_metrics --metrics=memorization on a copying and a fresh set."""
    import json
    import os
    import subprocess
    import sys
    from histaug_tf.data.writer import DatasetWriter

    def write(path, images, source):
        with DatasetWriter(str(path), path.name, (32, 32, 3), encoding="raw") as w:
            for i, img in enumerate(images):
                w.add("train", img, i % 2, f"{path.name}/{i}", path.name, source=source)
        return str(path)
    real = write(tmp_path / "real", train, "real")
    rng = np.random.default_rng(2)
    copies = np.clip(train[rng.integers(0, 60, 100)].astype(np.int16)
                     + rng.integers(-6, 7, (100, 32, 32, 3)), 0, 255).astype(np.uint8)
    seeds = np.arange(2000, 2100)
    sets = {"copies": write(tmp_path / "copies", copies, "synthetic"),
            "fresh": write(tmp_path / "fresh", render_patches(seeds, seeds % 2, 32), "synthetic")}
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    share = {}
    for name, d in sets.items():
        p = subprocess.run([sys.executable, "-m", "histaug_tf.calc_metrics", f"--data={real}",
                            f"--gen_data={d}", "--metrics=memorization"], env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        res = json.loads(p.stdout.strip().splitlines()[-1])
        share[name] = res["metrics"]["memorization"]
        assert res["memorization"]["n_train"] == 60 and res["memorization"]["n_synthetic"] == 100
    assert share["copies"] >= 0.95 and share["fresh"] <= 0.05, share
