"""Two real worker processes on localhost, configured only through a fake SLURM step environment.

Checks, without SLURM, that ``get_strategy('auto')`` turns the step environment into a working
2-worker MultiWorkerMirroredStrategy: one all-reduce, synchronous SGD whose weights equal a plain
NumPy loop over the global batch (independent reference), identical weights on both workers, chief-only
stats, and a rerun resuming from the checkpoint. The same program runs under real SLURM in
tests/test_slurm_integration.py.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "jobs", "slurm", "cluster_check.py")


def free_port_pair():
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def numpy_reference(steps, batch, replicas, dim=3, seed=0, lr=0.1):
    """SGD on mean squared error over the global batch, written from scratch."""
    W, b = np.zeros((dim, 1)), np.zeros(1)
    n = batch // replicas
    for s in range(steps):
        xs, ys = [], []
        for r in range(replicas):
            rng = np.random.default_rng([seed, s, r])
            x = rng.standard_normal((n, dim)).astype(np.float32)
            w_true = np.arange(1, dim + 1, dtype=np.float32)[:, None] / dim
            xs.append(x)
            ys.append((x @ w_true + 0.5 + 0.1 * rng.standard_normal((n, 1))).astype(np.float32))
        X, Y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
        e = X @ W + b - Y
        W = W - lr * 2 * X.T @ e / batch
        b = b - lr * 2 * e.sum(0) / batch
    return W, b


def run_pair(outdir, steps, port, extra=()):
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "TF_CONFIG"}
        env.update(SLURM_JOB_ID="77", SLURM_STEP_ID="0", SLURM_PROCID=str(i),
                   SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="localhost",
                   SLURM_STEP_TASKS_PER_NODE="2", SLURM_LOCALID=str(i),
                   HISTAUG_PORT_BASE=str(port), CUDA_VISIBLE_DEVICES="",
                   TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
        procs.append(subprocess.Popen(
            [sys.executable, CHECK, f"--outdir={outdir}", f"--steps={steps}", "--batch=8",
             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def load_workers(outdir):
    return [json.load(open(os.path.join(outdir, "workers", f"worker-{i}.json"))) for i in range(2)]


@pytest.mark.slow
def test_two_local_workers_from_slurm_env_train_and_resume(tmp_path):
    out = str(tmp_path / "run")
    run_pair(out, 3, free_port_pair())
    w = load_workers(out)
    assert [x["worker_index"] for x in w] == [0, 1]
    assert all(x["num_workers"] == 2 and x["replicas"] == 2 for x in w)
    assert w[0]["tf_config"]["cluster"] == w[1]["tf_config"]["cluster"]
    assert len(w[0]["tf_config"]["cluster"]["worker"]) == 2
    assert all(x["allreduce"] == 3.0 for x in w)  # (0+1) + (1+1)
    assert all(x["resumed_from"] == 0 and x["final_step"] == 3 for x in w)
    assert w[0]["weights"] == w[1]["weights"]
    W, b = numpy_reference(3, 8, 2)
    np.testing.assert_allclose(np.array(w[0]["weights"][0]), W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(w[0]["weights"][1]), b, rtol=1e-5, atol=1e-6)
    # only the chief wrote stats and the checkpoint; the other worker's temp dir is gone
    assert sorted(os.listdir(out)) == ["checkpoints", "stats.jsonl", "workers"]
    # rerun with more steps resumes at step 3 and ends where 5 uninterrupted steps would
    run_pair(out, 5, free_port_pair())
    w = load_workers(out)
    assert all(x["resumed_from"] == 3 and x["final_step"] == 5 for x in w)
    assert w[0]["weights"] == w[1]["weights"]
    W, b = numpy_reference(5, 8, 2)
    np.testing.assert_allclose(np.array(w[1]["weights"][0]), W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(w[1]["weights"][1]), b, rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "stats.jsonl"))]
    assert steps == [1, 2, 3, 4, 5]
    assert sorted(os.listdir(out)) == ["checkpoints", "stats.jsonl", "workers"]
