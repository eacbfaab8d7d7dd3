"""Distribution and resume, in subprocesses (logical devices / TF_CONFIG must be set before TF
initialises): MirroredStrategy on 2 logical CPUs and MultiWorkerMirroredStrategy with 2 local
workers give the same weights as one replica with the same global batch; a run killed with
SIGKILL and rerun ends with the same weights as an uninterrupted run (deterministic mode)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _helpers import free_ports

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "_training_tiny.py")
ROOT = os.path.dirname(HERE)


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(mode, run_dir, out, opts, env=None, timeout=240):
    return subprocess.Popen([sys.executable, SCRIPT, mode, run_dir, out, json.dumps(opts)],
                            env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _compare(a, b, atol):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


# A few steps: batch 8, 6 steps, Greg at steps 0 and 4, Dreg every 2 steps; no augmentation,
# constant noise, no style mixing.
OPTS = dict(batch=8, kimg=0.048, tick=0.016)


@pytest.mark.slow
def test_mirrored_and_multiworker_equal_single_replica(tmp_path):
    single = _run("default", str(tmp_path / "single"), str(tmp_path / "single.npz"), OPTS)
    mirrored = _run("mirrored", str(tmp_path / "mirrored"), str(tmp_path / "mirrored.npz"), OPTS)
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    tmp = tmp_path / "tmp"  # the workers' TMPDIR: worker 1 writes its checkpoints there
    tmp.mkdir()
    for i in range(2):
        env = _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                        "index": i}}),
                   TMPDIR=str(tmp))
        workers.append(_run("multiworker", str(tmp_path / "mw"), str(tmp_path / f"mw{i}.npz"),
                            OPTS, env=env))
    for proc in [single, mirrored] + workers:
        _wait(proc)
    ref = _load(tmp_path / "single.npz")
    assert int(ref["nimg"]) == 48
    _compare(ref, _load(tmp_path / "mirrored.npz"), atol=1e-4)
    mw0, mw1 = _load(tmp_path / "mw0.npz"), _load(tmp_path / "mw1.npz")
    _compare(ref, mw0, atol=1e-4)
    _compare(mw0, mw1, atol=0)  # the workers hold identical weights
    # only the chief wrote the run directory's stats
    assert os.path.exists(tmp_path / "mw" / "stats.jsonl")
    # and worker 1 removed its temporary checkpoint directory when it exited
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("ckpt-worker")]


@pytest.mark.slow
def test_multiworker_with_ada_augmentation_keeps_workers_identical(tmp_path):
    """Two workers, the real bgc pipe (seeded differently per worker) and ADA: gradients and the
    ADA statistic are all-reduced, so both workers end with identical weights and the same p,
    and p has moved (the target 0.01 is below r_t almost at once)."""
    opts = dict(OPTS, pipe="bgc", target=0.01, ada_interval=1, ada_kimg=0.5, kimg=0.064)
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(_run("multiworker", str(tmp_path / "mw"), str(tmp_path / f"mw{i}.npz"), opts,
                          env=env))
    for proc in procs:
        _wait(proc)
    mw0, mw1 = _load(tmp_path / "mw0.npz"), _load(tmp_path / "mw1.npz")
    _compare(mw0, mw1, atol=0)
    assert float(mw0["p"]) > 0.0 and int(mw0["nimg"]) == 64


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """Deterministic mode with random noise, an augment pipe using stateful random ops, style
    mixing and ADA: kill at a random moment, rerun the same command, compare final weights."""
    opts = dict(batch=8, kimg=0.24, tick=0.08, pipe=True, p=0.3, target=0.6,
                ada_kimg=1.0,
                noise_mode="random", style_mixing=0.9, deterministic=True,
                deterministic_ops=True)
    full = _run("default", str(tmp_path / "full"), str(tmp_path / "full.npz"), opts)
    run_dir = str(tmp_path / "killed")
    stats_path = os.path.join(run_dir, "stats.jsonl")
    all_ticks = round(opts["kimg"] / opts["tick"]) + 1  # ticks 0..3, the first after one step
    rng = random.Random()
    killed_mid_run = False
    for attempt in range(5):
        p = _run("default", run_dir, str(tmp_path / "killed.npz"), opts)
        # wait until training has started (a checkpoint exists), then kill at a random moment
        t0 = time.time()
        while time.time() - t0 < 120 and p.poll() is None and not os.path.exists(
                os.path.join(run_dir, "checkpoints", "checkpoint")):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.communicate()
        # mid-run means before the last tick was written; a kill after it (the process still
        # writing its last files: on a fast machine 2 s can be the rest of the run) or a run that
        # finished first does not test a resume: start over
        stats_before = []
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                stats_before = f.read().splitlines()
        if len(stats_before) < all_ticks:
            killed_mid_run = True
            break
        shutil.rmtree(run_dir)
    assert killed_mid_run
    rerun = _run("default", run_dir, str(tmp_path / "killed.npz"), opts)
    _wait(rerun)
    _wait(full)
    a, b = _load(tmp_path / "full.npz"), _load(tmp_path / "killed.npz")
    assert int(a["nimg"]) == int(b["nimg"]) == 240
    assert float(a["p"]) != pytest.approx(0.3)  # ADA moved p; p continued across the kill
    _compare(a, b, atol=0)
    ticks = [json.loads(x)["tick"] for x in open(os.path.join(run_dir, "stats.jsonl"))]
    assert ticks == list(range(len(ticks)))  # no duplicated or missing ticks after the resume
    assert len(stats_before) < len(ticks)
