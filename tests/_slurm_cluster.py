"""One local SLURM cluster (jobs/local_slurm/up.sh) shared by every SLURM test of a pytest session.

The ``slurm`` fixture (session scope, defined in conftest.py) calls ``cluster(config)``. Under an
fcntl lock on ``<shared>/slurm.lock`` — ``<shared>`` is the session's base temp dir, the same
directory for the xdist controller and all its workers — the first caller runs up.sh (fresh state
dir, free ports) and records the cluster in ``<shared>/slurm.json``; every later caller, in this or
another xdist worker, reuses it. So up.sh (and its apt-get) never runs twice at once and runs once
per session. The cluster is taken down (down.sh --purge) once, by ``pytest_sessionfinish`` in the
process that owns the base temp dir (the xdist controller, after all workers ended; or the only
process without xdist), also when tests failed.

Required services: with ``HISTAUG_REQUIRE_SLURM=1`` (set by .ci/run) a test that cannot get its
cluster FAILS with the reason. Without it, a machine that cannot run SLURM at all (not root, or
slurm-wlm/munge absent and not installable) skips those tests; any other up.sh failure fails.

Every up.sh run appends "start"/"end" lines (pid, time) to ``<shared>/slurm-up.log``.
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP = os.path.join(ROOT, "jobs", "local_slurm", "up.sh")
DOWN = os.path.join(ROOT, "jobs", "local_slurm", "down.sh")
CPUS = 4  # two 2-task jobs of two test modules (two xdist workers) can run at the same time
REQUIRE_ENV = "HISTAUG_REQUIRE_SLURM"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def unavailable(reason: str):
    """Skip the test, or fail it when SLURM is a required service (HISTAUG_REQUIRE_SLURM=1)."""
    if required():
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


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


class Slurm:
    def __init__(self, state, env):
        self.state, self.env = state, env

    def run(self, *cmd, check=True, timeout=60, **kw):
        r = subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
                                 f"\n{self.logs()}")
        return r

    def job(self, jobid) -> dict:
        out = self.run("scontrol", "show", "job", "-o", str(jobid)).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def jobcomp(self, jobid) -> list[str]:
        path = os.path.join(self.state, "jobcomp.txt")
        if not os.path.exists(path):
            return []
        return [ln.strip() for ln in open(path) if ln.startswith(f"JobId={jobid} ")]

    def wait_state(self, jobid, states, timeout=300):
        t0 = time.time()
        info = {}
        while time.time() - t0 < timeout:
            info = self.job(jobid)
            if info.get("JobState") in states:
                return info
            time.sleep(1)
        raise AssertionError(f"job {jobid} not in {states} after {timeout}s: {info}\n{self.logs()}")

    def logs(self):
        out = []
        for name in ("log/slurmctld.log", "log/slurmd.log"):
            p = os.path.join(self.state, name)
            if os.path.exists(p):
                out.append(f"--- {name} (tail)\n" + "".join(open(p).readlines()[-15:]))
        return "\n".join(out)


def shared_dir(config) -> str:
    """The session's base temp dir: one directory for the xdist controller and all workers."""
    base = str(config._tmp_path_factory.getbasetemp())
    return os.path.dirname(base) if hasattr(config, "workerinput") else base


from histaug_tf.common import file_lock as locked  # noqa: E402  (one lock for tests and study)


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write(path, info):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def _base_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "TF_CONFIG"}


def _alive(state):
    try:
        pid = int(open(os.path.join(state, "slurmctld.pid")).read().strip())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def _up(shared) -> dict:
    """Run up.sh once (the caller holds the lock); the record of the outcome."""
    if os.geteuid() != 0:
        return {"status": "unavailable",
                "reason": "local SLURM needs root (it installs slurm-wlm/munge, slurmd runs jobs)"}
    state = tempfile.mkdtemp(prefix="histaug_slurm_", dir="/tmp")  # short: munge socket path
    port = free_port_pair()
    env = dict(_base_env(), HISTAUG_SLURM_STATE=state, HISTAUG_SLURM_PORT=str(port),
               HISTAUG_SLURM_CPUS=str(CPUS))
    had_slurm = shutil.which("slurmctld") is not None
    log = os.path.join(shared, "slurm-up.log")
    with open(log, "a") as f:
        f.write(f"start pid={os.getpid()} t={time.time():.3f} state={state}\n")
    try:
        r = subprocess.run([UP], env=env, capture_output=True, text=True, timeout=900)
        rc, err = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", f"up.sh did not finish in 900 s: {e}"
    with open(log, "a") as f:
        f.write(f"end pid={os.getpid()} t={time.time():.3f} rc={rc}\n")
    info = {"state": state, "port": port}
    if rc == 0:
        return dict(info, status="up", log=err.strip()[-2000:])
    subprocess.run([DOWN, "--purge"], env=env, capture_output=True, text=True, timeout=120)
    tail = " | ".join(err.strip().splitlines()[-5:])
    if not had_slurm and shutil.which("slurmctld") is None:
        return dict(info, status="unavailable",
                    reason=f"slurm-wlm is not installed and cannot be installed: {tail}")
    return dict(info, status="failed", reason=f"jobs/local_slurm/up.sh failed ({rc}): {tail}")


def cluster(config) -> Slurm:
    """The session's cluster: started by the first caller (under the lock), reused by the rest."""
    shared = shared_dir(config)
    record = os.path.join(shared, "slurm.json")
    with locked(os.path.join(shared, "slurm.lock")):
        info = _read(record)
        if info is None or (info["status"] == "up" and not _alive(info["state"])):
            info = _up(shared)
            _write(record, info)
    if info["status"] == "unavailable":
        unavailable(info["reason"])
    if info["status"] != "up":
        pytest.fail(info["reason"], pytrace=False)
    env = dict(_base_env(), HISTAUG_SLURM_STATE=info["state"],
               HISTAUG_SLURM_PORT=str(info["port"]), HISTAUG_SLURM_CPUS=str(CPUS),
               SLURM_CONF=os.path.join(info["state"], "slurm.conf"))
    return Slurm(info["state"], env)


def teardown(config):
    """Take the session's cluster down (from pytest_sessionfinish of the base temp dir's owner)."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller does it after every worker has ended
    factory = getattr(config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)
    if base is None:
        return  # no temp dir was ever made: no cluster either
    record = os.path.join(str(base), "slurm.json")
    if not os.path.exists(record):
        return
    with locked(os.path.join(str(base), "slurm.lock")):
        info = _read(record)
        if info and info.get("status") == "up":
            env = dict(_base_env(), HISTAUG_SLURM_STATE=info["state"])
            d = subprocess.run([DOWN, "--purge"], env=env, capture_output=True, text=True,
                               timeout=120)
            info["status"] = "down"
            info["down_log"] = d.stderr.strip()[-2000:]
            _write(record, info)
