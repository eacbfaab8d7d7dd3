"""Strategy selection for every stage: the one definition of how histaug_tf scales out.

``get_strategy(name)`` with ``name`` one of

* ``'auto'``: ``multiworker`` when ``TF_CONFIG`` is set or when this process is one task of a
  multi-task SLURM job step (``srun`` with ``SLURM_STEP_NUM_TASKS > 1``); ``mirrored`` when the
  machine has several GPUs; ``default`` otherwise.
* ``'default'``: ``tf.distribute.get_strategy()`` (one device, no replication).
* ``'mirrored'``: ``tf.distribute.MirroredStrategy()`` over all local GPUs (or the CPU).
* ``'multiworker'``: ``tf.distribute.MultiWorkerMirroredStrategy``. The cluster comes from
  ``TF_CONFIG`` when it is set, else from the SLURM step environment (``TF_CONFIG`` is then built
  and exported, so everything later in the process sees the same cluster), else a single worker.

The SLURM cluster (CPU-only works too) is built here, not with TF's ``SlurmClusterResolver``: that
resolver needs a GPU count (it calls ``nvidia-smi`` when ``CUDA_VISIBLE_DEVICES`` is unset and fails
with zero GPUs per node, ``range(0, 0, 0)``), which rules out CPU nodes. Tasks are placed on the step's
nodes as SLURM places them (``SLURM_STEP_NODELIST`` × ``SLURM_STEP_TASKS_PER_NODE``, block or cyclic
distribution); the address of a task is ``<node>:<port_base + local task index>``. The port base is
``HISTAUG_PORT_BASE`` when set, else derived from the job id (so two jobs sharing a node differ).

``MultiWorkerMirroredStrategy`` must be created before any other TensorFlow op runs in the process
(so call ``get_strategy`` first thing in ``main``).

Preemption: SLURM stops a job (requeue, preemption, ``scancel``, time limit) with SIGTERM to every
task and SIGKILL ``KillWait`` seconds later. A multi-worker TF process *ignores* SIGTERM (the
coordination service installs its own handler that only records the notice), so without a handler
it runs on until SIGKILL. ``StopSignal`` turns SIGTERM into "stop at the next step boundary, agreed
by all workers", so that a checkpoint can be saved before exiting.

Writing convention (TF's multi-worker guide): only the chief writes summaries, snapshots and stats;
checkpoints are saved by *every* worker (saving is a collective operation), the non-chief workers into
a private temporary directory that they delete afterwards — see ``worker_write_path`` and
``remove_worker_path``. Everybody restores from the chief's directory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket

from histaug_tf.common import UserError

STRATEGIES = ("auto", "default", "mirrored", "multiworker")

_DEFAULT_PORT_BASE = 12000  # + (job id % 1000) * 16 when HISTAUG_PORT_BASE is unset
_PORTS_PER_JOB = 16         # max tasks of one job on one node before ports of two jobs may clash


# ----------------------------------------------------------------------------------------------
# SLURM environment parsing (pure Python: unit-tested without SLURM)

def _split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside of brackets: ``'a[1-2,4],b'`` -> ``['a[1-2,4]', 'b']``."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {s!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in hostlist {s!r}")
    parts.append("".join(cur))
    return [p for p in (x.strip() for x in parts) if p]


def _expand_range_list(body: str, hostlist: str) -> list[str]:
    """``'01-03,07'`` -> ``['01', '02', '03', '07']`` keeping the zero padding of each range."""
    out = []
    for item in body.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"bad range {item!r} in hostlist {hostlist!r}")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in hostlist {hostlist!r}")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def _expand_one(pattern: str, hostlist: str) -> list[str]:
    """Expand one host pattern, possibly with several bracket groups (``r[1-2]n[01-02]``)."""
    m = re.search(r"\[([^\[\]]*)\]", pattern)
    if not m:
        if "[" in pattern or "]" in pattern:
            raise ValueError(f"bad hostlist {hostlist!r}")
        return [pattern]
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [head + v + rest
            for v in _expand_range_list(m.group(1), hostlist)
            for rest in _expand_one(tail, hostlist)]


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a SLURM hostlist expression, in order, duplicates kept as SLURM would list them.

    ``'node[01-03,07],gpu5'`` -> ``['node01', 'node02', 'node03', 'node07', 'gpu5']``.
    Raises ``ValueError`` on a malformed expression.
    """
    out = []
    for part in _split_top_level(hostlist):
        out.extend(_expand_one(part, hostlist))
    return out


def expand_tasks_per_node(spec: str) -> list[int]:
    """``SLURM_*_TASKS_PER_NODE`` syntax: ``'2(x3),1'`` -> ``[2, 2, 2, 1]``."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if not m:
            raise ValueError(f"bad tasks-per-node spec {spec!r}")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out


def _get(env, *names):
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            return v
    return None


def slurm_num_tasks(env=None) -> int:
    """Number of tasks of the current SLURM *step* (1 outside SLURM or in the batch script itself).

    Uses ``SLURM_STEP_NUM_TASKS`` (set by ``srun``). The batch script also carries ``SLURM_NTASKS``
    and ``SLURM_PROCID=0`` for the whole allocation, although only one process runs there, so
    ``SLURM_NTASKS`` is used only when there is a step id other than the batch step and no
    ``SLURM_STEP_NUM_TASKS``.
    """
    env = os.environ if env is None else env
    if "SLURM_PROCID" not in env:
        return 1
    n = _get(env, "SLURM_STEP_NUM_TASKS")
    if n is None:
        step = _get(env, "SLURM_STEP_ID", "SLURM_STEPID")
        if step is None or step in ("batch", "extern", "4294967294", "4294967291"):
            return 1
        n = _get(env, "SLURM_NTASKS")
    return int(n) if n else 1


def is_slurm_multitask(env=None) -> bool:
    """True when this process is one task of a SLURM job step with more than one task."""
    return slurm_num_tasks(env) > 1


def slurm_port_base(env=None) -> int:
    env = os.environ if env is None else env
    v = _get(env, "HISTAUG_PORT_BASE")
    if v is not None:
        try:
            base = int(v)
        except ValueError:
            raise UserError(f"HISTAUG_PORT_BASE={v!r}: not an integer port") from None
    else:
        job = _get(env, "SLURM_JOB_ID", "SLURM_JOBID")
        step = _get(env, "SLURM_STEP_ID", "SLURM_STEPID")
        jid = int(job) if job and job.isdigit() else 0
        sid = int(step) if step and step.isdigit() else 0
        base = _DEFAULT_PORT_BASE + ((jid * 7 + sid) % 1000) * _PORTS_PER_JOB
    if not 1024 <= base <= 65535 - _PORTS_PER_JOB:
        raise UserError(f"HISTAUG_PORT_BASE={base}: must be in 1024..{65535 - _PORTS_PER_JOB}")
    return base


def slurm_task_layout(env=None) -> list[tuple[str, int]]:
    """``[(node, local_index)]`` for every task of the step, indexed by ``SLURM_PROCID``.

    Block distribution (SLURM's default) fills the first node's tasks first; ``cyclic`` (from
    ``SLURM_DISTRIBUTION``) deals tasks round-robin over the nodes.
    """
    env = os.environ if env is None else env
    nodelist = _get(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    tpn = _get(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    if nodelist is None or tpn is None:
        raise UserError("SLURM step environment: SLURM_STEP_NODELIST / SLURM_STEP_TASKS_PER_NODE "
                        "missing; run the program with srun")
    hosts = expand_hostlist(nodelist)
    counts = expand_tasks_per_node(tpn)
    if len(counts) != len(hosts):
        raise UserError(f"SLURM step environment: {len(hosts)} nodes in {nodelist!r} but "
                        f"tasks-per-node {tpn!r} lists {len(counts)}")
    dist = (_get(env, "SLURM_DISTRIBUTION") or "block").split(":")[0].split(",")[0]
    layout: list[tuple[str, int]] = []
    if dist == "cyclic":
        used = [0] * len(hosts)
        while any(u < c for u, c in zip(used, counts)):
            for i, h in enumerate(hosts):
                if used[i] < counts[i]:
                    layout.append((h, used[i]))
                    used[i] += 1
    else:
        for h, c in zip(hosts, counts):
            layout.extend((h, k) for k in range(c))
    return layout


def tf_config_from_slurm(env=None, port_base: int | None = None) -> dict:
    """Build the ``TF_CONFIG`` dict (``{'cluster': {'worker': [...]}, 'task': {...}}``) of this task.

    Every task of the step is a ``worker``; worker 0 (``SLURM_PROCID=0``) is the chief.
    Raises ``UserError`` when the environment is inconsistent (e.g. the task count does not match
    the node layout, or this task's node/local id disagree with the computed layout).
    """
    env = os.environ if env is None else env
    ntasks = slurm_num_tasks(env)
    procid = int(_get(env, "SLURM_PROCID") or 0)
    layout = slurm_task_layout(env)
    if len(layout) != ntasks:
        raise UserError(f"SLURM step environment: {ntasks} tasks but the node layout "
                        f"({_get(env, 'SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE')}) "
                        f"has {len(layout)}")
    if not 0 <= procid < ntasks:
        raise UserError(f"SLURM step environment: SLURM_PROCID={procid} outside 0..{ntasks - 1}")
    base = slurm_port_base(env) if port_base is None else port_base
    my_node, my_local = layout[procid]
    node = _get(env, "SLURMD_NODENAME")
    local = _get(env, "SLURM_LOCALID")
    if (node is not None and node != my_node) or (local is not None and int(local) != my_local):
        raise UserError(
            f"SLURM step environment: task {procid} runs on {node} (local id {local}) but the "
            f"layout computed from SLURM_DISTRIBUTION={_get(env, 'SLURM_DISTRIBUTION')!r} puts it "
            f"on {my_node} (local id {my_local}); use --distribution=block or cyclic")
    workers = [f"{h}:{base + k}" for h, k in layout]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": procid}}


# ----------------------------------------------------------------------------------------------
# Strategy selection

def _num_gpus() -> int:
    import tensorflow as tf
    return len(tf.config.list_physical_devices("GPU"))


def resolve_name(name: str = "auto", env=None, num_gpus=None) -> str:
    """The concrete strategy name ``get_strategy(name)`` will build (no TensorFlow runtime started).

    ``num_gpus`` (a callable or int) is only consulted for ``auto`` outside multi-worker setups.
    """
    env = os.environ if env is None else env
    if name not in STRATEGIES:
        raise UserError(f"--strategy={name}: unknown, expected one of {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if _get(env, "TF_CONFIG") is not None or is_slurm_multitask(env):
        return "multiworker"
    n = num_gpus() if callable(num_gpus) else (_num_gpus() if num_gpus is None else num_gpus)
    return "mirrored" if n > 1 else "default"


def get_strategy(name: str = "auto", *, env=None, port_base: int | None = None):
    """Return the ``tf.distribute.Strategy`` for ``name`` (see the module docstring).

    For ``multiworker`` inside a multi-task SLURM step without ``TF_CONFIG``, ``TF_CONFIG`` is built
    from the step environment and exported to ``os.environ`` (``env`` may be passed for testing).
    """
    import tensorflow as tf

    env = os.environ if env is None else env
    concrete = resolve_name(name, env)
    if concrete == "default":
        return tf.distribute.get_strategy()
    if concrete == "mirrored":
        return tf.distribute.MirroredStrategy()
    # multiworker
    if _get(env, "TF_CONFIG") is None and is_slurm_multitask(env):
        cfg = tf_config_from_slurm(env, port_base)
        os.environ["TF_CONFIG"] = json.dumps(cfg)
    elif _get(env, "TF_CONFIG") is not None and env is not os.environ:
        os.environ["TF_CONFIG"] = env["TF_CONFIG"]
    if _get(os.environ, "TF_CONFIG") is not None:
        try:
            cfg = json.loads(os.environ["TF_CONFIG"])
        except ValueError as e:
            raise UserError(f"TF_CONFIG: not valid JSON ({e})") from None
        if not isinstance(cfg, dict) or "cluster" not in cfg:
            raise UserError("TF_CONFIG: no 'cluster' entry")
    comm = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=comm)


def _task(strategy):
    """(task_type, task_id, cluster_spec dict) for a multi-worker strategy, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None
    spec = resolver.cluster_spec().as_dict()
    if not spec:
        return None
    return resolver.task_type, resolver.task_id, spec


def worker_info(strategy) -> tuple[int, int]:
    """``(num_workers, worker_index)``: index 0 is the chief; used to shard input by file."""
    t = _task(strategy)
    if t is None:
        return 1, 0
    task_type, task_id, spec = t
    has_chief = "chief" in spec
    n = len(spec.get("worker", [])) + len(spec.get("chief", []))
    if task_type == "chief":
        return n, 0
    if task_type == "worker":
        return n, int(task_id) + (1 if has_chief else 0)
    raise UserError(f"TF_CONFIG: task type {task_type!r} cannot train (expected chief or worker)")


def is_chief(strategy) -> bool:
    """True for the one process that writes summaries, snapshots, stats (always True locally)."""
    return worker_info(strategy)[1] == 0


def num_replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def per_replica_batch(global_batch: int, strategy) -> int:
    """``global_batch // replicas``; ``UserError`` when it does not divide evenly."""
    n = num_replicas(strategy)
    global_batch = int(global_batch)
    if global_batch <= 0:
        raise UserError(f"--batch={global_batch}: must be positive")
    if global_batch % n:
        raise UserError(f"--batch={global_batch} is not divisible by {n} replicas "
                        f"({describe(strategy)}); use a multiple of {n}")
    return global_batch // n


def describe(strategy) -> str:
    """One line: strategy class, replicas, workers, this worker's index and devices."""
    kind = type(strategy).__name__
    kind = {"_DefaultDistributionStrategy": "default",
            "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}.get(kind, kind)
    n_workers, index = worker_info(strategy)
    try:
        devices = strategy.extended.worker_devices
    except (AttributeError, RuntimeError):  # the default strategy has none
        devices = None
    dev = ""
    if devices:
        dev = ", devices " + ",".join(d.split("device:")[-1] for d in devices)
    where = ""
    if n_workers > 1:
        t = _task(strategy)
        where = f" ({t[0]} {t[1]} on {socket.gethostname()})" if t else ""
    chief = ", chief" if index == 0 else ""
    return (f"{kind}: {num_replicas(strategy)} replicas, worker {index}/{n_workers}"
            f"{where}{chief}{dev}")


# ----------------------------------------------------------------------------------------------
# Writing convention for non-chief workers (checkpoints are saved by all workers)

def worker_write_path(path: str, strategy) -> str:
    """Where this worker writes ``path`` (a file or directory that every worker must save).

    The chief writes ``path`` itself. A non-chief worker ``i`` writes
    ``<dirname(path)>/.workertemp_<i>/<basename(path)>`` (created), which it deletes with
    ``remove_worker_path`` when done, e.g. a ``tf.train.CheckpointManager`` directory::

        ckpt_dir = worker_write_path(os.path.join(outdir, 'checkpoints'), strategy)
        manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=2)
        ckpt.restore(tf.train.latest_checkpoint(os.path.join(outdir, 'checkpoints')))  # everyone
        ...
        manager.save()                      # on every worker (collective)
        remove_worker_path(ckpt_dir, strategy)
    """
    n, index = worker_info(strategy)
    if index == 0:
        return path
    path = path.rstrip("/") or path
    tmp = os.path.join(os.path.dirname(path), f".workertemp_{index}")
    os.makedirs(tmp, exist_ok=True)
    return os.path.join(tmp, os.path.basename(path))


def remove_worker_path(path: str, strategy) -> None:
    """Delete a non-chief worker's private copy made under ``worker_write_path`` (chief: no-op)."""
    if is_chief(strategy):
        return
    tmp = os.path.dirname(path.rstrip("/"))
    if os.path.basename(tmp).startswith(".workertemp_"):
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Graceful stop on SIGTERM (preemption / requeue / scancel / time limit)

class StopSignal:
    """Record SIGTERM (and the other ``signals``) so a training loop can stop cleanly.

    Create it right *after* ``get_strategy`` (multi-worker strategies install a SIGTERM handler
    of their own, which this replaces) in the main thread. In the loop, every worker must call
    ``should_stop(strategy)`` at the same steps: with several workers it is a (tiny) collective
    that returns True on every worker as soon as any worker got the signal, so all of them leave
    the loop at the same step, save the checkpoint together and exit::

        stop = distribute.StopSignal()
        while step < total:
            train_step(...)
            if step % 10 == 0 and stop.should_stop(strategy):
                manager.save(); break
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signum = None
        for s in signals:
            signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        self.signum = signum

    @property
    def received(self) -> bool:
        """True when this process got a signal (no communication)."""
        return self.signum is not None

    def should_stop(self, strategy) -> bool:
        """True on all workers when any worker received a signal (a collective with >1 worker).

        A worker that stops because another one got the signal records SIGTERM as its own
        ``signum``, so every worker exits the same way (unfinished, non-zero status)."""
        if worker_info(strategy)[0] == 1:
            return self.received
        import tensorflow as tf
        local = 1.0 if self.received else 0.0
        total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                                strategy.run(lambda: tf.constant(local)), axis=None)
        if float(total) > 0:
            if self.signum is None:
                self.signum = signal.SIGTERM
            return True
        return False
