"""Launch helpers shared by the tests that start ``train_gan`` as local MultiWorker processes
(tests/test_multiworker_train_gan.py, tests/test_resume_real_stack.py)."""
import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_ports(n):
    """``n`` localhost ports free at the time of the call."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(script, args, n=2, env=None, outputs=None):
    """``n`` processes ``python script *args`` forming one MultiWorkerMirroredStrategy cluster
    on fresh localhost ports (TF_CONFIG; SLURM variables removed so the TF_CONFIG resolver is
    used); worker i gets task index i. ``env`` adds variables. Worker i's stdout and stderr go
    to the open file ``outputs[i]``, or (default) to one text pipe."""
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(n)]}
    procs = []
    for i in range(n):
        e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
        e.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                 TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        e.update(env or {})
        out = subprocess.PIPE if outputs is None else outputs[i]
        procs.append(subprocess.Popen([sys.executable, script, *args], env=e, stdout=out,
                                      stderr=subprocess.STDOUT, text=True))
    return procs
