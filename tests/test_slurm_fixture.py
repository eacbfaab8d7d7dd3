"""The shared SLURM cluster fixture itself (tests/_slurm_cluster.py), with a fake up.sh/down.sh: no
SLURM needed, fast. Two processes asking for the cluster at once run up.sh ONCE and share it; with
HISTAUG_REQUIRE_SLURM=1 an unavailable cluster is a failure, not a skip."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import _slurm_cluster as sc

HERE = os.path.dirname(os.path.abspath(__file__))

FAKE_UP = """#!/usr/bin/env bash
# fake up.sh: takes 2 s, then "runs" a controller whose pid is the caller's (alive)
sleep 2
mkdir -p "$HISTAUG_SLURM_STATE"
echo "$FAKE_ALIVE_PID" > "$HISTAUG_SLURM_STATE/slurmctld.pid"
echo "local_slurm: up (fake)" >&2
"""
FAKE_DOWN = """#!/usr/bin/env bash
echo "down $HISTAUG_SLURM_STATE $*" >> "$FAKE_DOWN_LOG"
rm -f "$HISTAUG_SLURM_STATE/slurmctld.pid"
"""

CHILD = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {here!r})
    import _slurm_cluster as sc
    sc.UP, sc.DOWN = {up!r}, {down!r}

    class Factory:
        def getbasetemp(self):
            return {shared!r}

    class Config:
        _tmp_path_factory = Factory()

    s = sc.cluster(Config())
    json.dump({{"state": s.state, "conf": s.env["SLURM_CONF"]}}, open(sys.argv[1], "w"))
""")


def _fakes(tmp_path):
    up, down = tmp_path / "up.sh", tmp_path / "down.sh"
    up.write_text(FAKE_UP)
    down.write_text(FAKE_DOWN)
    up.chmod(0o755)
    down.chmod(0o755)
    return str(up), str(down)


@pytest.mark.skipif(os.geteuid() != 0, reason="the fixture starts a cluster only as root")
def test_two_processes_share_one_cluster_started_once_under_the_lock(tmp_path):
    up, down = _fakes(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(here=HERE, up=up, down=down, shared=str(shared)))
    env = dict(os.environ, FAKE_ALIVE_PID=str(os.getpid()), FAKE_DOWN_LOG=str(tmp_path / "down"))
    env.pop(sc.REQUIRE_ENV, None)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"out{i}.json")],
                              env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    got = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
    assert got[0] == got[1]  # one cluster for both
    log = open(shared / "slurm-up.log").read().splitlines()
    assert [ln.split()[0] for ln in log] == ["start", "end"], log  # up.sh ran once
    record = json.load(open(shared / "slurm.json"))
    assert record["status"] == "up" and record["state"] == got[0]["state"]

    class Factory:
        _basetemp = str(shared)

    class Config:
        _tmp_path_factory = Factory()

    old = sc.DOWN
    try:
        sc.DOWN = down
        os.environ["FAKE_DOWN_LOG"] = str(tmp_path / "down")
        sc.teardown(Config())
    finally:
        sc.DOWN = old
        os.environ.pop("FAKE_DOWN_LOG")
    assert open(tmp_path / "down").read().split() == ["down", got[0]["state"], "--purge"]
    assert json.load(open(shared / "slurm.json"))["status"] == "down"


def test_require_switch_turns_the_skip_into_a_failure(monkeypatch):
    monkeypatch.delenv(sc.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no cluster here"):
        sc.unavailable("no cluster here")
    monkeypatch.setenv(sc.REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        sc.unavailable("no cluster here")
    monkeypatch.setenv(sc.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="HISTAUG_REQUIRE_SLURM=1 but no cluster here"):
        sc.unavailable("no cluster here")


def test_not_root_is_unavailable_and_required_fails(monkeypatch, tmp_path):
    class Factory:
        def getbasetemp(self):
            return str(tmp_path)

    class Config:
        _tmp_path_factory = Factory()

    monkeypatch.setattr(sc.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sc, "UP", "/nonexistent/up.sh")  # must not even be tried
    monkeypatch.setenv(sc.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="needs root"):
        sc.cluster(Config())
    monkeypatch.delenv(sc.REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        sc.cluster(Config())
