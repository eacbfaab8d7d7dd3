"""train_gan on damaged or mismatched input, through the real CLI (tiny preset, 16 px):
a damaged newest checkpoint falls back to the previous one; bad --batch, a --cond rerun of an
unconditional run and a damaged input shard stop with one line and leave the run directory as
it was (or absent)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from test_train_gan import ROOT, _write_dataset

# batch 8, one step per tick: ticks (and checkpoints) at nimg 8, 16, 24 -> ckpt-1, -2, -3
# (two kept: ckpt-2 and ckpt-3); one snapshot, at the end.
BASE = ["--cfg=tiny", "--batch=8", "--tick=0.008", "--snap=0", "--aug=noaug",
        "--shuffle_buffer=16", "--tensorboard=false"]


def _cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "histaug_tf.train_gan", *args], env=env,
                       capture_output=True, text=True, timeout=timeout)
    r.seconds = time.time() - t0
    return r


def _one_error_line(r):
    """The run failed with exactly one 'error:' line and no traceback; returns that line."""
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1, r.stderr[-3000:]
    return err[0]


def _tree(path):
    """{relative path: sha256} of every file under ``path`` (what 'nothing modified' compares)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return _write_dataset(str(tmp_path_factory.mktemp("data") / "toy"))


@pytest.fixture(scope="module")
def base_run(toy_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("base") / "run")
    r = _cli(f"--data={toy_data}", f"--outdir={out}", *BASE, "--kimg=0.024")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    ck = os.path.join(out, "checkpoints")
    assert sorted(f for f in os.listdir(ck) if f.endswith(".index")) == ["ckpt-2.index",
                                                                        "ckpt-3.index"]
    return out


def _copy(base_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(base_run, out)
    return out


def _data_file(run, step):
    return os.path.join(run, "checkpoints", f"ckpt-{step}.data-00000-of-00001")


def _damage(path, how):
    size = os.path.getsize(path)
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    else:  # one flipped bit in the middle, size unchanged
        with open(path, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x10]))


def _stats(run):
    with open(os.path.join(run, "stats.jsonl")) as f:
        return [json.loads(x) for x in f]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_damaged_latest_checkpoint_falls_back_to_previous(toy_data, base_run, tmp_path, how):
    from histaug_tf.gan.snapshot import read_metadata
    run = _copy(base_run, tmp_path)
    bad = _data_file(run, 3)
    _damage(bad, how)
    r = _cli(f"--data={toy_data}", f"--outdir={run}", *BASE, "--kimg=0.032")
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    warn = [x for x in log.splitlines() if "damaged checkpoint" in x]
    assert len(warn) == 1 and bad in warn[0], log[-3000:]
    assert f"Resuming from {os.path.join(run, 'checkpoints', 'ckpt-2')} (kimg 0.0, step 2)" in log
    # ticks 0, 1 kept from the first run (checkpoint at step 2), 2 and 3 trained again / new
    assert [s["nimg"] for s in _stats(run)] == [8, 16, 24, 32]
    assert [s["tick"] for s in _stats(run)] == [0, 1, 2, 3]
    assert read_metadata(os.path.join(run, "network-snapshot-000000.keras"))["nimg"] == 32
    ck = os.path.join(run, "checkpoints")
    # the damaged files are set aside under their own name, the kept checkpoints are readable
    assert os.path.exists(os.path.join(ck, "damaged-ckpt-3.data-00000-of-00001"))
    assert sorted(f for f in os.listdir(ck) if f.startswith("ckpt-") and f.endswith(".index")) \
        == ["ckpt-3.index", "ckpt-4.index"]
    import tensorflow as tf
    assert tf.train.latest_checkpoint(ck).endswith("ckpt-4")
    assert tf.train.load_variable(os.path.join(ck, "ckpt-3"), "nimg/.ATTRIBUTES/VARIABLE_VALUE") \
        == 24


@pytest.mark.slow
def test_all_checkpoints_damaged_is_one_line(toy_data, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    _damage(_data_file(run, 3), "truncate")
    _damage(_data_file(run, 2), "bitflip")
    before = _tree(run)
    r = _cli(f"--data={toy_data}", f"--outdir={run}", *BASE, "--kimg=0.032")
    err = _one_error_line(r)
    assert "no readable checkpoint" in err, err
    assert _data_file(run, 3) in err and _data_file(run, 2) in err, err
    assert _tree(run) == before


def test_batch_not_multiple_of_mbstd_group_is_one_fast_line(toy_data, tmp_path):
    out = str(tmp_path / "run")
    r = _cli(f"--data={toy_data}", f"--outdir={out}", "--cfg=tiny", "--batch=6", "--kimg=0.024")
    err = _one_error_line(r)
    assert "--batch=6" in err and "minibatch-std group size 4" in err, err
    assert not os.path.exists(out)
    # Before any network is built: as fast as the earliest error (a missing --data) give or take
    # the load of the shared machine; the interpreter start and the TF import dominate both.
    ref = _cli(f"--data={tmp_path / 'missing'}", f"--outdir={out}")
    assert ref.returncode == 1
    assert r.seconds < ref.seconds + 10, (r.seconds, ref.seconds)


@pytest.mark.slow
def test_cond_rerun_of_unconditional_run_is_refused(toy_data, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    before = _tree(run)
    r = _cli(f"--data={toy_data}", f"--outdir={run}", *BASE, "--kimg=0.032", "--cond")
    err = _one_error_line(r)
    assert os.path.join(run, "training_options.json") in err, err
    assert "--cond: run false, now true" in err, err
    assert _tree(run) == before


def _flip_first_shard(data):
    with open(os.path.join(data, "manifest.json")) as f:
        shard = os.path.join(data, json.load(f)["splits"]["train"]["shards"][0]["file"])
    _damage(shard, "bitflip")
    return shard


@pytest.mark.slow
def test_damaged_shard_stops_before_writing_the_run(tmp_path):
    data = _write_dataset(str(tmp_path / "toy"))
    shard = _flip_first_shard(data)  # same size: passes the manifest's size check
    out = str(tmp_path / "run")
    # a shuffle buffer larger than the dataset: the first batch reads every record
    r = _cli(f"--data={data}", f"--outdir={out}", "--cfg=tiny", "--batch=8", "--kimg=0.024",
             "--aug=noaug", "--shuffle_buffer=64")
    err = _one_error_line(r)
    assert shard in err, err
    assert not os.path.exists(os.path.join(out, "training_options.json"))
    assert not os.path.exists(os.path.join(out, "fakes_init.png"))
    assert not os.path.exists(out) or not os.listdir(out), os.listdir(out)


def test_verify_checks_shard_sha256_before_anything(tmp_path):
    data = _write_dataset(str(tmp_path / "toy"))
    shard = _flip_first_shard(data)
    out = str(tmp_path / "run")
    r = _cli(f"--data={data}", f"--outdir={out}", "--cfg=tiny", "--batch=8", "--kimg=0.024",
             "--verify")
    err = _one_error_line(r)
    assert shard in err and "sha256 differs from manifest" in err, err
    assert not os.path.exists(out)


def test_rerun_with_other_resolution_or_label_set_is_refused(toy_data, tmp_path):
    from histaug_tf.common import UserError
    from histaug_tf.apps.train_gan import check_rerun, resolve_config
    out = tmp_path / "run"
    out.mkdir()
    opts = resolve_config(data=toy_data, outdir=str(out), cfg="tiny")
    path = out / "training_options.json"
    path.write_text(opts.to_json())
    check_rerun(opts.replace(kimg=5.0))  # a longer run of the same thing is fine
    with pytest.raises(UserError, match=r"training_options.json: .*--resolution: run 16, now 8"):
        check_rerun(resolve_config(data=toy_data, outdir=str(out), cfg="tiny", resolution=8))
    with pytest.raises(UserError, match=r"--cfg: run \"tiny\", now \"demo\""):
        check_rerun(resolve_config(data=toy_data, outdir=str(out), cfg="demo"))
    path.write_text(opts.replace(label_names=("benign", "malignant")).to_json())
    with pytest.raises(UserError, match=r"dataset label names: run \[\"benign\", \"malignant\"\]"):
        check_rerun(opts)
    assert json.loads(path.read_text())["data"]["label_names"] == ["benign", "malignant"]  # untouched
    # the flat training_options.json of versions before the typed config is still compared
    flat = {"cfg": "tiny", "resolution": 16, "cond": False, "c_dim": 0,
            "label_names": list(opts.data.label_names), "image_shape": [16, 16, 3],
            "class_filter": None, "kimg": 1.0}
    path.write_text(json.dumps(flat))
    check_rerun(opts)
    path.write_text(json.dumps(dict(flat, class_filter=1)))
    with pytest.raises(UserError, match=r"--class_filter: run 1, now null"):
        check_rerun(opts)
    # a damaged sectioned file (fields of the wrong type): one line naming it, not a traceback
    for field, value in (("label_names", 5), ("image_shape", 7)):
        damaged = opts.to_dict()
        damaged["data"][field] = value
        path.write_text(json.dumps(damaged))
        with pytest.raises(UserError, match=rf"training_options.json: cannot be read \(data.{field}"):
            check_rerun(opts)
