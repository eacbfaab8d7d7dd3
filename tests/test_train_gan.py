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
    from histaug_tf.gan.launch import launch
    from histaug_tf.gan.snapshot import latest_snapshot, load_snapshot
    out = str(tmp_path / "run")
    common = dict(data=toy_data, outdir=out, cfg="tiny", batch=8, tick=0.016, snap=1,
                  aug="noaug", cond=True, shuffle_buffer=16)
    launch(kimg=0.024, **common)
    files = set(os.listdir(out))
    assert {"training_options.json", "stats.jsonl", "checkpoints", "fakes000000.png",
            "network-snapshot-000000.keras"} <= files
    opts = json.load(open(os.path.join(out, "training_options.json")))
    assert opts["cfg"] == "tiny" and opts["c_dim"] == 2 and opts["resolution"] == 16
    assert opts["preset"]["G_kwargs"]["c_dim"] == 2
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


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "histaug_tf.train_gan", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line(toy_data, tmp_path):
    out = str(tmp_path / "o")
    r = _cli(f"--data={tmp_path / 'missing'}", f"--outdir={out}")
    assert r.returncode == 1
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "missing" in err[0]
    assert not os.path.exists(out)
    r = _cli(f"--data={toy_data}", f"--outdir={out}", "--cond", "--class_filter=1",
             "--cfg=tiny")
    assert r.returncode == 1 and "--class_filter" in r.stderr
    r = _cli(f"--data={toy_data}", f"--outdir={out}", "--cfg=tiny", "--resolution=12")
    assert r.returncode == 1 and "power of two" in r.stderr
    assert not os.path.exists(out)
