"""PCAM conversion: files written here (.h5 and .h5.gz) → TFRecords → tf.data equals the source by key;
every bad input gives one line naming the file, exit 1 and no manifest; SIGKILL mid-way leaves no
manifest and a rerun with --overwrite completes."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from histaug_tf.common import UserError
from histaug_tf.data import pipeline
from histaug_tf.data.convert import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"train": 23, "valid": 7, "test": 5}


def write_pcam(d, sizes=SIZES, gz=False, seed=0, shape=(96, 96, 3), xkey="x", ykey="y"):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in sizes.items():
        x = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
        x[:, :40] //= 4  # not only noise
        y = rng.integers(0, 2, (n, 1, 1, 1)).astype(np.uint8)
        data[split] = (x, y)
        for name, key, arr in (("x", xkey, x), ("y", ykey, y)):
            p = os.path.join(d, f"camelyonpatch_level_2_split_{split}_{name}.h5")
            with h5py.File(p, "w") as f:
                f.create_dataset(key, data=arr, chunks=(min(4, len(arr)),) + arr.shape[1:])
            if gz:
                with open(p, "rb") as fi, gzip.open(p + ".gz", "wb", compresslevel=1) as fo:
                    fo.write(fi.read())
                os.remove(p)
    return data


def run_cli(*args, timeout=300):
    """``(exit code, stderr)`` of ``prepare_data``. A run that outlives ``timeout`` fails the test
    with the Python stacks of all its threads (faulthandler on SIGABRT): it hung once under a
    loaded suite on a truncated input, and only a stack dump can say where."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1",
               PYTHONFAULTHANDLER="1")
    p = subprocess.Popen([sys.executable, "-m", "histaug_tf.prepare_data", *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        pytest.fail(f"prepare_data {' '.join(args)} still running after {timeout} s; its "
                    f"stderr with the stacks:\n{err[-8000:]}")
    return p.returncode, err


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("gz,encoding,workers", [(False, "png", 0), (True, "raw", 0), (True, "png", 2)])
def test_readback_equals_source_by_key(tmp_path, gz, encoding, workers):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    data = write_pcam(src, gz=gz)
    m = convert("pcam", out, src=src, encoding=encoding, shard_size=6, workers=workers, quiet=True)
    assert not any(n.startswith(".tmp") for n in os.listdir(out))  # decompressed copies removed
    for split, (x, y) in data.items():
        info = m["splits"][split]
        assert info["num_examples"] == len(x)
        assert info["class_counts"] == [int((y == 0).sum()), int((y == 1).sum())]
        seen = set()
        for ex in pipeline.make_dataset(out, split, pixel_range=None, with_meta=True, check="count"):
            key = ex["key"].numpy().decode()
            pre, sp, idx = key.split("/")
            assert pre == "pcam" and sp == split and len(idx) == 6
            i = int(idx)
            np.testing.assert_array_equal(ex["image"].numpy(), x[i])
            assert int(ex["label"]) == int(y[i, 0, 0, 0])
            assert ex["group"].numpy().decode() == split
            seen.add(i)
        assert seen == set(range(len(x)))


@pytest.mark.slow
def test_cli_converts_gz(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_pcam(src, sizes={"train": 5, "valid": 3, "test": 2}, gz=True)
    rc, err = run_cli("--dataset=pcam", f"--src={src}", f"--out={out}", "--workers=2")
    assert rc == 0, err
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert {s: v["num_examples"] for s, v in m["splits"].items()} == {"train": 5, "valid": 3, "test": 2}
    assert m["provenance"]["flags"]["workers"] == 2
    # refused without --overwrite, names the directory
    rc, err = run_cli("--dataset=pcam", f"--src={src}", f"--out={out}")
    assert rc == 1 and error_lines(err) == [ln for ln in err.splitlines() if ln.strip()][-1:]
    assert f"error: {out}: output directory exists" in err and "--overwrite" in err
    assert os.path.exists(os.path.join(out, "manifest.json"))  # the old dataset is untouched


def _bad_input_cases(src):
    """(name, corrupt the source dir, expected file, expected text)."""
    def fn(split, xy, ext=".h5"):
        return os.path.join(src, f"camelyonpatch_level_2_split_{split}_{xy}{ext}")

    def missing():
        os.remove(fn("valid", "y"))

    def mismatch():
        with h5py.File(fn("test", "y"), "w") as f:
            f.create_dataset("y", data=np.zeros((4, 1, 1, 1), np.uint8))

    def shape():
        with h5py.File(fn("valid", "x"), "w") as f:
            f.create_dataset("x", data=np.zeros((7, 64, 64, 3), np.uint8))

    def key():
        with h5py.File(fn("train", "x"), "a") as f:
            f.create_dataset("extra", data=np.zeros(3))

    def truncated():
        p = fn("test", "x")
        with open(p, "rb") as fi, gzip.open(p + ".gz", "wb") as fo:
            fo.write(fi.read())
        os.remove(p)
        blob = open(p + ".gz", "rb").read()
        open(p + ".gz", "wb").write(blob[: len(blob) // 2])

    return [
        ("missing", missing, fn("valid", "y"), "missing split file"),
        ("mismatch", mismatch, fn("test", "x"), "5 images but camelyonpatch_level_2_split_test_y.h5 has 4 labels"),
        ("shape", shape, fn("valid", "x"), "shape (7, 64, 64, 3), expected (N, 96, 96, 3)"),
        ("key", key, fn("train", "x"), "unexpected HDF5 keys ['extra', 'x']"),
        ("truncated", truncated, fn("test", "x", ".h5.gz"), "truncated gzip"),
    ]


@pytest.mark.parametrize("case", ["missing", "mismatch", "shape", "key", "truncated"])
def test_bad_input_one_line_error_no_manifest(tmp_path, case):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_pcam(src)
    name, corrupt, path, text = [c for c in _bad_input_cases(src) if c[0] == case][0]
    corrupt()
    rc, err = run_cli("--dataset=pcam", f"--src={src}", f"--out={out}", "--shard_size=4", "--workers=1")
    assert rc == 1
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ") and text in lines[0], lines[0]
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    assert not os.path.exists(out) or not [n for n in os.listdir(out) if not n.startswith(".tmp")]
    # the in-process API raises UserError too
    with pytest.raises(UserError, match=text.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        convert("pcam", str(tmp_path / "out2"), src=src, workers=0, quiet=True)


@pytest.mark.slow
def test_sigkill_mid_conversion_leaves_no_manifest_and_rerun_completes(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_pcam(src, sizes={"train": 1500, "valid": 10, "test": 10})
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", HISTAUG_QUIET="1")
    args = [sys.executable, "-m", "histaug_tf.prepare_data", "--dataset=pcam", f"--src={src}",
            f"--out={out}", "--shard_size=50", "--workers=1"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(out) and os.path.exists(os.path.join(out, ".tmp-train-00003.tfrecord")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "conversion ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the process group we started: main + encoder
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    names = os.listdir(out)
    assert "manifest.json" not in names and any(n.startswith(".tmp-train") for n in names)
    with pytest.raises(UserError, match="manifest.json: missing"):
        pipeline.make_dataset(out, "train")
    rc, err = run_cli(*args[3:])
    assert rc == 1 and "incomplete dataset" in err
    rc, err = run_cli(*args[3:], "--overwrite", "--encoding=raw")
    assert rc == 0, err
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["splits"]["train"]["num_examples"] == 1500 and len(m["splits"]["train"]["shards"]) == 30
    assert sorted(os.listdir(out)) == sorted(["manifest.json"] + [
        s["file"] for v in m["splits"].values() for s in v["shards"]])
