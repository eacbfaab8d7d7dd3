"""Unit tests of histaug_tf.distribute: SLURM parsing, TF_CONFIG, strategy selection, batch checks.

Expected values are written out by hand from SLURM's documented syntax (``man sbatch``, OUTPUT
ENVIRONMENT VARIABLES: ``SLURM_TASKS_PER_NODE`` e.g. ``2(x3),1``; hostlists ``node[01-03,07]``).
"""
import json
import os
import shutil
import subprocess

import pytest

from histaug_tf import distribute as D
from histaug_tf.common import UserError


# ---------------------------------------------------------------------------------------------
# hostlist expansion

@pytest.mark.parametrize("expr, expected", [
    ("node01", ["node01"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("a[1-2],b,c[5]", ["a1", "a2", "b", "c5"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("gpu[001-002]-ib", ["gpu001-ib", "gpu002-ib"]),
    ("localhost", ["localhost"]),
    ("x-1.cluster,y", ["x-1.cluster", "y"]),
])
def test_expand_hostlist(expr, expected):
    assert D.expand_hostlist(expr) == expected


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]", "n[1-2]x]"])
def test_expand_hostlist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        D.expand_hostlist(bad)


def test_expand_hostlist_matches_scontrol(tmp_path, request):
    """Cross-check against SLURM's own expansion (independent reference). Without scontrol it
    skips, unless HISTAUG_REQUIRE_SLURM=1 (CI): then the session's SLURM cluster fixture installs
    slurm-wlm (or the test fails with the reason)."""
    import _slurm_cluster
    if shutil.which("scontrol") is None:
        if not _slurm_cluster.required():
            pytest.skip("scontrol not installed (HISTAUG_REQUIRE_SLURM=1 makes this a failure)")
        request.getfixturevalue("slurm")  # installs slurm-wlm, or fails with the reason
        assert shutil.which("scontrol"), "the SLURM fixture is up but scontrol is not on PATH"
    conf = tmp_path / "slurm.conf"  # scontrol wants a parseable config even for hostnames
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=localhost\n"
                    "PartitionName=p Nodes=localhost\n")
    expr = "node[01-03,07],gpu[8-10],rack[1-2]-n[01-02],solo"
    r = subprocess.run(["scontrol", "show", "hostnames", expr], capture_output=True, text=True,
                       env={**os.environ, "SLURM_CONF": str(conf)})
    assert r.returncode == 0, r.stderr
    assert D.expand_hostlist(expr) == r.stdout.split()
    assert len(r.stdout.split()) == 4 + 3 + 4 + 1


@pytest.mark.parametrize("spec, expected", [
    ("2", [2]), ("2(x3),1", [2, 2, 2, 1]), ("1,4(x2)", [1, 4, 4]),
])
def test_expand_tasks_per_node(spec, expected):
    assert D.expand_tasks_per_node(spec) == expected


# ---------------------------------------------------------------------------------------------
# TF_CONFIG from a fake SLURM step environment

def step_env(procid, nodelist="node[01-02]", tpn="2(x2)", ntasks=4, **extra):
    env = {"SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(procid),
           "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_NTASKS": str(ntasks),
           "SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_TASKS_PER_NODE": tpn,
           "SLURM_JOB_NODELIST": nodelist}
    env.update(extra)
    return env


def test_tf_config_block_layout_two_nodes_two_tasks_each():
    expected_workers = ["node01:20000", "node01:20001", "node02:20000", "node02:20001"]
    for procid, (node, local) in enumerate([("node01", 0), ("node01", 1), ("node02", 0),
                                            ("node02", 1)]):
        env = step_env(procid, HISTAUG_PORT_BASE="20000", SLURMD_NODENAME=node,
                       SLURM_LOCALID=str(local))
        cfg = D.tf_config_from_slurm(env)
        assert cfg == {"cluster": {"worker": expected_workers},
                       "task": {"type": "worker", "index": procid}}


def test_tf_config_cyclic_layout():
    env = step_env(1, SLURM_DISTRIBUTION="cyclic", HISTAUG_PORT_BASE="30000",
                   SLURMD_NODENAME="node02", SLURM_LOCALID="0")
    cfg = D.tf_config_from_slurm(env)
    assert cfg["cluster"]["worker"] == ["node01:30000", "node02:30000", "node01:30001",
                                        "node02:30001"]
    assert cfg["task"] == {"type": "worker", "index": 1}


def test_tf_config_uneven_nodes_and_job_nodelist_fallback():
    env = step_env(2, nodelist="c[1-2]", tpn="2,1", ntasks=3, HISTAUG_PORT_BASE="4000")
    del env["SLURM_STEP_NODELIST"]
    cfg = D.tf_config_from_slurm(env)
    assert cfg["cluster"]["worker"] == ["c1:4000", "c1:4001", "c2:4000"]
    assert cfg["task"]["index"] == 2


def test_tf_config_default_port_base_differs_between_jobs():
    a = D.tf_config_from_slurm(step_env(0, SLURM_JOB_ID="100"))
    b = D.tf_config_from_slurm(step_env(0, SLURM_JOB_ID="101"))
    pa = [int(w.split(":")[1]) for w in a["cluster"]["worker"]]
    pb = [int(w.split(":")[1]) for w in b["cluster"]["worker"]]
    assert pa[0] != pb[0]
    assert not set(pa) & set(pb)  # no clash on a shared node
    assert all(1024 <= p < 65536 for p in pa + pb)


def test_tf_config_inconsistent_env_is_a_user_error():
    with pytest.raises(UserError, match="4 tasks but the node layout"):
        D.tf_config_from_slurm(step_env(0, tpn="1(x2)"))
    with pytest.raises(UserError, match="runs on node01"):
        # task 2 is on node02 under block distribution
        D.tf_config_from_slurm(step_env(2, SLURMD_NODENAME="node01", SLURM_LOCALID="0"))
    with pytest.raises(UserError, match="HISTAUG_PORT_BASE"):
        D.tf_config_from_slurm(step_env(0, HISTAUG_PORT_BASE="80"))


# ---------------------------------------------------------------------------------------------
# auto selection (no TensorFlow runtime needed: resolve_name)

def test_auto_selection():
    assert D.resolve_name("auto", {}, num_gpus=0) == "default"
    assert D.resolve_name("auto", {}, num_gpus=1) == "default"
    assert D.resolve_name("auto", {}, num_gpus=4) == "mirrored"
    tf_config = json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                            "task": {"type": "worker", "index": 0}})
    assert D.resolve_name("auto", {"TF_CONFIG": tf_config}, num_gpus=4) == "multiworker"
    assert D.resolve_name("auto", step_env(1), num_gpus=0) == "multiworker"
    # A one-task step is not a cluster.
    assert D.resolve_name("auto", step_env(0, tpn="1", nodelist="n1", ntasks=1),
                          num_gpus=0) == "default"
    # The batch script of a 2-task allocation has SLURM_NTASKS=2 and SLURM_PROCID=0 but runs once.
    batch = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
             "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "n1"}
    assert D.resolve_name("auto", batch, num_gpus=0) == "default"
    assert D.resolve_name("auto", {**batch, "SLURM_STEP_ID": "batch"}, num_gpus=0) == "default"
    # An explicit name is taken as is.
    assert D.resolve_name("mirrored", step_env(1), num_gpus=0) == "mirrored"
    with pytest.raises(UserError, match="--strategy=tpu"):
        D.resolve_name("tpu", {})


# ---------------------------------------------------------------------------------------------
# batch divisibility, worker info, chief, write paths

class FakeResolver:
    def __init__(self, spec, task_type, task_id):
        import tensorflow as tf
        self._spec = tf.train.ClusterSpec(spec)
        self.task_type, self.task_id = task_type, task_id

    def cluster_spec(self):
        return self._spec


class FakeStrategy:
    def __init__(self, replicas, resolver=None):
        self.num_replicas_in_sync = replicas
        self.cluster_resolver = resolver


def test_per_replica_batch():
    assert D.per_replica_batch(32, FakeStrategy(4)) == 8
    assert D.per_replica_batch(5, FakeStrategy(1)) == 5
    with pytest.raises(UserError, match=r"--batch=30 is not divisible by 4 replicas"):
        D.per_replica_batch(30, FakeStrategy(4))
    with pytest.raises(UserError, match="--batch=0"):
        D.per_replica_batch(0, FakeStrategy(1))


def test_worker_info_and_chief():
    spec = {"worker": ["a:1", "b:1", "c:1"]}
    infos = [D.worker_info(FakeStrategy(3, FakeResolver(spec, "worker", i))) for i in range(3)]
    assert infos == [(3, 0), (3, 1), (3, 2)]
    assert [D.is_chief(FakeStrategy(3, FakeResolver(spec, "worker", i))) for i in range(3)] == \
        [True, False, False]
    with_chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert D.worker_info(FakeStrategy(3, FakeResolver(with_chief, "chief", 0))) == (3, 0)
    assert D.worker_info(FakeStrategy(3, FakeResolver(with_chief, "worker", 0))) == (3, 1)
    assert not D.is_chief(FakeStrategy(3, FakeResolver(with_chief, "worker", 0)))
    assert D.worker_info(FakeStrategy(1)) == (1, 0)


def test_default_strategy_with_real_tensorflow(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SLURM_") or k == "TF_CONFIG":
            monkeypatch.delenv(k)
    s = D.get_strategy("default")
    assert D.worker_info(s) == (1, 0) and D.is_chief(s)
    assert D.per_replica_batch(6, s) == 6
    assert "1 replicas, worker 0/1" in D.describe(s)
    s = D.get_strategy("auto")  # no GPU, no cluster -> default
    assert D.describe(s).startswith("default")


def test_worker_write_path(tmp_path):
    spec = {"worker": ["a:1", "b:1"]}
    chief = FakeStrategy(2, FakeResolver(spec, "worker", 0))
    other = FakeStrategy(2, FakeResolver(spec, "worker", 1))
    target = str(tmp_path / "run" / "checkpoints")
    assert D.worker_write_path(target, chief) == target
    p = D.worker_write_path(target, other)
    assert p == str(tmp_path / "run" / ".workertemp_1" / "checkpoints")
    os.makedirs(p)
    open(os.path.join(p, "x"), "w").close()
    D.remove_worker_path(p, other)
    assert not os.path.exists(os.path.dirname(p))
    D.remove_worker_path(target, chief)  # no-op for the chief


def test_stop_signal_peer_signal_stops_this_worker_as_sigterm():
    """Worker 1 got no signal, worker 0 did: the collective says stop, and worker 1 records
    SIGTERM too (it used to keep signum None, so train_gan exited 0 on an unfinished run)."""
    import signal

    class TwoWorkers(FakeStrategy):
        def __init__(self, peers_signalled):
            super().__init__(2, FakeResolver({"worker": ["a:1", "b:1"]}, "worker", 1))
            self.peers = peers_signalled

        def run(self, fn):
            return fn()

        def reduce(self, op, value, axis=None):
            return float(value) + self.peers

    old = signal.getsignal(signal.SIGTERM)
    try:
        stop = D.StopSignal()
        assert not stop.should_stop(TwoWorkers(0)) and stop.signum is None
        assert stop.should_stop(TwoWorkers(1)) and stop.signum == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)


def test_stop_signal_records_sigterm():
    import signal
    old = signal.getsignal(signal.SIGTERM)
    try:
        stop = D.StopSignal()
        assert not stop.received and not stop.should_stop(FakeStrategy(1))
        signal.raise_signal(signal.SIGTERM)  # would kill the process without the handler
        assert stop.received and stop.signum == signal.SIGTERM
        assert stop.should_stop(FakeStrategy(1))
    finally:
        signal.signal(signal.SIGTERM, old)
