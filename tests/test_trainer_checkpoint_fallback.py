"""A damaged newest checkpoint: the rerun restores EVERYTHING from the previous one (G, D, G_ema,
both optimizers, augment p, pl_mean, step/nimg/tick, the input iterator position) and, in
deterministic mode, ends with the same weights as the run that was never damaged."""
import json
import os
import shutil

import pytest

from test_trainer_distributed import _compare, _load, _run, _wait


@pytest.mark.slow
def test_fallback_resume_matches_undamaged_run(tmp_path):
    opts = dict(batch=8, kimg=0.24, tick=0.08, pipe=True, p=0.3, target=0.6,
                ada_kimg=1.0, noise_mode="random", style_mixing=0.9, deterministic=True,
                deterministic_ops=True)
    full = str(tmp_path / "full")
    _wait(_run("default", full, str(tmp_path / "full.npz"), opts))
    ck = os.path.join(full, "checkpoints")
    # ticks at nimg 8, 88, 168, 240: checkpoints at steps 1, 11, 21, 30; the last two are kept
    assert sorted(f for f in os.listdir(ck) if f.endswith(".index")) == ["ckpt-21.index",
                                                                        "ckpt-30.index"]
    run = str(tmp_path / "damaged")
    shutil.copytree(full, run)
    data = os.path.join(run, "checkpoints", "ckpt-30.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    # same command: falls back to step 21 and trains steps 21..29 again
    _wait(_run("default", run, str(tmp_path / "damaged.npz"), opts))
    assert os.path.exists(os.path.join(run, "checkpoints", "damaged-ckpt-30.data-00000-of-00001"))
    a, b = _load(tmp_path / "full.npz"), _load(tmp_path / "damaged.npz")
    assert int(a["nimg"]) == int(b["nimg"]) == 240
    assert float(a["p"]) != pytest.approx(0.3)  # ADA moved p; it continued from ckpt-21's value
    _compare(a, b, atol=0)
    ticks = [json.loads(x)["tick"] for x in open(os.path.join(run, "stats.jsonl"))]
    assert ticks == [0, 1, 2, 3]
