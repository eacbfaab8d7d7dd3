"""train_gan stops cleanly on SIGTERM (preemption, scancel, SLURM requeue) and --snap=0 still
writes the final snapshot."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_train_gan import ROOT, _write_dataset


def test_snap_zero_writes_final_snapshot(tmp_path):
    from histaug_tf.apps.train_gan import launch
    from histaug_tf.gan.snapshot import latest_snapshot, load_snapshot
    data = _write_dataset(str(tmp_path / "toy"))
    out = str(tmp_path / "run")
    launch(data=data, outdir=out, cfg="tiny", batch=8, tick=0.008, snap=0, kimg=0.024,
           aug="noaug", shuffle_buffer=16, tensorboard=False)
    snaps = [f for f in os.listdir(out) if f.startswith("network-snapshot-")]
    assert snaps == ["network-snapshot-000000.keras"], snaps  # exactly one: at the end
    assert load_snapshot(latest_snapshot(out))["metadata"]["nimg"] == 24


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_rerun_resumes(tmp_path):
    data = _write_dataset(str(tmp_path / "toy"))
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    args = [sys.executable, "-m", "histaug_tf.train_gan", f"--data={data}", f"--outdir={out}",
            "--cfg=tiny", "--batch=8", "--tick=0.008", "--snap=0", "--aug=noaug",
            "--shuffle_buffer=16", "--kimg=100"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    stats = os.path.join(out, "stats.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(stats) and sum(1 for _ in open(stats)) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=180)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert "checkpoint saved" in log, log[-3000:]
    ckpts = [f for f in os.listdir(os.path.join(out, "checkpoints")) if f.endswith(".index")]
    assert ckpts
    # no snapshot written for an unfinished run (--snap=0 means "at the end")
    assert not [f for f in os.listdir(out) if f.startswith("network-snapshot-")]
    # the rerun of the same command (with a reachable --kimg) resumes and finishes
    nimg = max(json.loads(x)["nimg"] for x in open(stats))
    args[-1] = f"--kimg={(nimg + 16) / 1000}"
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Resuming from" in r.stdout + r.stderr
    assert [f for f in os.listdir(out) if f.startswith("network-snapshot-")]
