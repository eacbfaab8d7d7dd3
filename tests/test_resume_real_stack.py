"""Bit-exact resume after SIGKILL on the real stack: ``python -m histaug_tf.train_gan
--deterministic`` (tiny preset, 16 px, ``--aug=ada --augpipe=bgc`` from ``--p=0.2`` with
``--ada_kimg=1`` so that p moves by 0.032 every 4 steps), TFRecord input written by our own
DatasetWriter. A run is SIGKILLed twice at moments drawn by ``random.Random(SEED)`` (a step and a
delay into it; both inside a tick, so finished steps since the last checkpoint are lost and must be
redone) and rerun with the same command until it finishes. Its final checkpoint must equal that of
an uninterrupted run of the same command tensor for tensor, bit for bit: G, D, G_ema (and w_avg),
both Adam optimizers (iterations, moments), augment p, the augment pipe's RNG state, the ADA
accumulators, pl_mean, step/nimg/tick; and every worker's tf.data iterator state (restored into
train_gan's input pipeline, the next batches are the same).

The reference is an uninterrupted run of the same command (two such runs end bit-identical: they
are the independent ground truth, not an earlier output of the code under test). The run is
started through tests/_resume_probe.py, which is train_gan unchanged plus a per-step log line, so
the test can kill a chosen step.

* ``test_sigkill_resume_is_bit_exact_on_real_train_gan``: one process (single worker).
* ``test_sigkill_resume_is_bit_exact_two_workers``: two local MultiWorker workers (launcher:
  tests/_helpers.py) with the production file-sharded input; both are killed at the same moment
  (a node or job loss) and both relaunched.
* ``test_sigterm_resume_is_bit_exact_on_real_train_gan``: one process stopped by SIGTERM (SLURM's
  preemption), which writes a checkpoint between two ticks, and rerun.

The kill plan and what happened are printed (``pytest -s``) and are part of every failure message.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _helpers import ROOT, start_workers

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "_resume_probe.py")
SEED = 20261130
TIMEOUT = 1800  # per process: a 2-core machine shared with other jobs can be very slow
COMMON = ["--cfg=tiny", "--batch=8", "--tick=0.032", "--snap=0", "--aug=ada", "--augpipe=bgc",
          "--p=0.2", "--ada_kimg=1", "--shuffle_buffer=16", "--notensorboard", "--deterministic",
          "--seed=3"]
# batch 8, first tick = 1 step, then 4 steps a tick: checkpoints after steps 1, 5, 9, ...

pytestmark = pytest.mark.slow


def _write_dataset(path, n=32, size=16):
    """32 distinct 16x16 patches, 2 classes, 4 shards of 8 (our own DatasetWriter)."""
    from histaug_tf.data.synthetic_tissue import render_patch
    from histaug_tf.data.writer import DatasetWriter
    with DatasetWriter(path, "toy", (size, size, 3), shard_size=8) as w:
        for i in range(n):
            w.add("train", render_patch(i, i % 2, size=size), i % 2, f"t/{i}", f"g{i}")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_dataset(str(tmp_path_factory.mktemp("resume") / "toy"))


# ------------------------------------------------------------------------------- processes

class Run:
    """One training run (its --outdir) launched as ``workers`` processes, again and again."""

    def __init__(self, data, outdir, kimg, workers):
        self.outdir, self.workers = outdir, workers
        self.args = [f"--data={data}", f"--outdir={outdir}", f"--kimg={kimg}", *COMMON]
        if workers > 1:
            self.args.append("--strategy=multiworker")
        self.launches = 0
        self.progress = None

    def start(self):
        self.launches += 1
        self.progress = os.path.join(os.path.dirname(self.outdir),
                                     f"{os.path.basename(self.outdir)}-progress-{self.launches}")
        logs = [open(f"{self.progress}.out{i}", "w") for i in range(self.workers)]
        env = {"HISTAUG_PROGRESS_LOG": self.progress}
        if self.workers == 1:
            e = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
                     CUDA_VISIBLE_DEVICES="", **env)
            self.procs = [subprocess.Popen([sys.executable, PROBE, *self.args], env=e,
                                           stdout=logs[0], stderr=subprocess.STDOUT)]
        else:  # each worker's output into its own file
            self.procs = start_workers(PROBE, self.args, n=self.workers, env=env, outputs=logs)
        for f in logs:
            f.close()
        self.t0 = time.time()
        return self

    def output(self, i=0):
        try:
            return open(f"{self.progress}.out{i}").read()[-3000:]
        except OSError:
            return ""

    def steps_started(self, i=0):
        try:
            lines = open(f"{self.progress}.{i}").read().split("\n")
        except OSError:
            return []
        return [int(x.split()[1]) for x in lines if x.startswith("start ")]

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait(timeout=60)

    def wait(self):
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, TIMEOUT - (time.time() - self.t0)))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.outdir}: not finished in {TIMEOUT} s:\n{self.output()}")
        rcs = [p.returncode for p in self.procs]
        assert rcs == [0] * self.workers, f"{self.outdir}: exit {rcs}:\n" + "\n---\n".join(
            self.output(i) for i in range(self.workers))
        return time.time() - self.t0

    def kill_at(self, step, delay, log):
        """Wait until every worker has started step ``step``, then ``delay`` s more; SIGKILL all
        workers. Logs the moment and the checkpoints left on disk."""
        while not all(step in self.steps_started(i) for i in range(self.workers)):
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    self.kill()
                    raise AssertionError(f"{self.outdir}: worker {i} ended (rc={p.returncode}) "
                                         f"before step {step}:\n{self.output(i)}")
            if time.time() - self.t0 > TIMEOUT:
                self.kill()
                raise AssertionError(f"{self.outdir}: step {step} not reached in {TIMEOUT} s")
            time.sleep(0.02)
        time.sleep(delay)
        self.kill()
        rcs = [p.returncode for p in self.procs]
        assert rcs == [-signal.SIGKILL] * self.workers, (rcs, self.output())
        started = self.steps_started(0)
        ckpts = _ckpt_steps(self.outdir)
        log.append(f"launch {self.launches}: SIGKILL {delay:.3f} s after step {step} started "
                   f"(this launch ran steps {started[0]}..{started[-1]}, "
                   f"{time.time() - self.t0:.1f} s); checkpoints on disk: {ckpts}")
        return ckpts


    def term_at(self, step, log):
        """SIGTERM the (single) worker once step ``step`` has started; it must stop with 143
        after writing a checkpoint at the next step that is a multiple of 4 (the trainer asks
        its stop signal every 4 steps). Returns the checkpoints left on disk."""
        while step not in self.steps_started():
            if self.procs[0].poll() is not None or time.time() - self.t0 > TIMEOUT:
                self.kill()
                raise AssertionError(f"{self.outdir}: step {step} not reached:\n{self.output()}")
            time.sleep(0.02)
        self.procs[0].send_signal(signal.SIGTERM)
        rc = self.procs[0].wait(timeout=TIMEOUT)
        assert rc == 128 + signal.SIGTERM, (rc, self.output())
        ckpts = _ckpt_steps(self.outdir)
        log.append(f"launch {self.launches}: SIGTERM when step {step} started; exit {rc}; "
                   f"checkpoints on disk: {ckpts}")
        return ckpts


def _ckpt_steps(out):
    d = os.path.join(out, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(int(f[5:-6]) for f in os.listdir(d)
                  if f.startswith("ckpt-") and f.endswith(".index"))


# ------------------------------------------------------------------------------- comparison

def _tensors(prefix):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {name: np.asarray(reader.get_tensor(name)) for name, _ in tf.train.list_variables(prefix)
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _differing(a, b):
    """Names of the tensors whose dtype, shape or bytes differ (or that exist in one only)."""
    out = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.dtype == object or y.dtype == object:
            same = x.tolist() == y.tolist()
        else:
            same = x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        if not same:
            out.append(k)
    return out


def _value(t, name):
    return t[f"{name}/.ATTRIBUTES/VARIABLE_VALUE"]


def _check_same(ref, killed, final_step, workers, log, ignore=()):
    ck = lambda run, s=final_step: os.path.join(run, "checkpoints", f"ckpt-{s}")  # noqa: E731
    a, b = _tensors(ck(ref)), _tensors(ck(killed))
    story = "\n".join(log)
    # the reference ran what the test claims: ADA moved p, the pipe drew random numbers, the
    # ADA accumulators hold the signs of the steps since the last adjustment
    assert int(_value(a, "step")) == final_step, story
    p = float(_value(a, "ada/p"))
    ticks = [json.loads(x) for x in open(os.path.join(ref, "stats.jsonl"))]
    assert len({t["Progress/augment"] for t in ticks}) > 1, (ticks, story)
    assert float(_value(a, "ada/sign_count")) > 0, story
    rng = [k for k in a if k.startswith("augment_rng/")]
    assert rng, ("no augment RNG state in the checkpoint", sorted(a)[:30])
    for need in ("G_ema/", "G_opt/", "D_opt/", "w_avg/", "pl_mean/", "ada/sign_sum/", "nimg/", "tick/"):
        assert any(n.startswith(need) for n in a), (need, sorted(a)[:30])
    diff = [k for k in _differing(a, b) if k not in ignore]
    assert not diff, (f"{len(diff)} of {len(a)} checkpoint tensors differ between the resumed "
                      f"and the uninterrupted run: {diff}\n{story}")
    same_bytes = 0
    for i in range(workers):
        # The iterator state holds what the prefetch buffer had read ahead when it was saved,
        # which depends on timing: equal states are those from which the input continues alike.
        f = os.path.join("checkpoints", f"input-worker{i:03d}", f"ckpt-{final_step}")
        fa, fb = (open(os.path.join(r, f) + ".data-00000-of-00001", "rb").read()
                  for r in (ref, killed))
        same_bytes += fa == fb
        xa, xb = (_next_batches(r, i, workers, final_step) for r in (ref, killed))
        for k, (u, v) in enumerate(zip(xa, xb)):
            assert u.tobytes() == v.tobytes(), (f"worker {i}: batch {k} after the input state "
                                                f"{f} differs\n{story}")
    log.append(f"final checkpoint ckpt-{final_step}: all {len(a)} tensors identical, and the "
               f"next batches of {workers} input iterator(s) ({same_bytes} state file(s) "
               f"identical byte for byte; p {p:.3f}, "
               f"ada_num {float(_value(a, 'ada/sign_count')):g})")


def _next_batches(run, worker, workers, step, n=6):
    """The next ``n`` (images, labels) batches of ``worker``'s input restored from its state at
    ``step``: train_gan's own input pipeline, built from the run's training_options.json."""
    import tensorflow as tf
    from histaug_tf.apps.train_gan import make_input_fn
    from histaug_tf.gan.config import TrainingConfig
    cfg = TrainingConfig.from_dict(json.load(open(os.path.join(run, "training_options.json"))))
    sch = cfg.schedule
    it = iter(make_input_fn(cfg.data)(workers, worker, sch.batch // workers, sch.seed))
    path = os.path.join(run, "checkpoints", f"input-worker{worker:03d}", f"ckpt-{step}")
    tf.train.Checkpoint(iterator=it).read(path).assert_consumed()
    out = []
    for _ in range(n):
        x, y = next(it)
        out += [np.asarray(x), np.asarray(y)]
    return out


def _sigkill_resume(data, tmp_path, *, workers, kimg, final_step, plan_fn):
    rnd = random.Random(SEED + workers)
    kills = plan_fn(rnd)
    log = [f"seed {SEED + workers}; {workers} worker(s); kill plan (launch: step, delay): "
           + ", ".join(f"{i + 1}: {s}, {d:.3f} s" for i, (s, d) in enumerate(kills))]
    ref = Run(data, str(tmp_path / "ref"), kimg, workers).start()  # alongside the killed run
    killed = Run(data, str(tmp_path / "killed"), kimg, workers)
    try:
        for step, delay in kills:
            ckpts = killed.start().kill_at(step, delay, log)
            # inside a tick: the steps done after the newest checkpoint died with the process
            assert ckpts and max(ckpts) < step and final_step not in ckpts, "\n".join(log)
        t = killed.start().wait()
        log.append(f"launch {killed.launches}: resumed and finished in {t:.1f} s")
        log.append(f"uninterrupted reference finished in {ref.wait():.1f} s")
    finally:
        ref.kill()
        if killed.launches:
            killed.kill()
    print("\n" + "\n".join(log))
    _check_same(ref.outdir, killed.outdir, final_step, workers, log)
    print(log[-1])


def test_sigkill_resume_is_bit_exact_on_real_train_gan(data, tmp_path):
    # kimg 0.072 = 9 steps: checkpoints after steps 1, 5, 9; ADA moves p after steps 4 and 8;
    # G's lazy regularisation runs at steps 0, 4, 8. Kill 1 inside tick 1 (steps 1-4), kill 2
    # inside tick 2 (steps 5-8) of the resumed process; neither on a tick's last step, so that
    # a checkpoint is never written before the kill lands.
    _sigkill_resume(data, tmp_path, workers=1, kimg=0.072, final_step=9,
                    plan_fn=lambda r: [(r.randint(2, 3), r.uniform(0, 0.05)),
                                       (r.randint(6, 7), r.uniform(0, 0.05))])


def test_sigkill_resume_is_bit_exact_two_workers(data, tmp_path):
    # kimg 0.04 = 5 steps: checkpoints after steps 1 and 5; ADA moves p after step 4. Both kills
    # inside tick 1 (steps 1-4, not its last): the second one in the process resumed from the first.
    _sigkill_resume(data, tmp_path, workers=2, kimg=0.04, final_step=5,
                    plan_fn=lambda r: [(r.randint(2, 3), r.uniform(0, 0.05)),
                                       (r.randint(2, 3), r.uniform(0, 0.05))])


def test_sigterm_resume_is_bit_exact_on_real_train_gan(data, tmp_path):
    # kimg 0.072 = 9 steps, tick checkpoints after steps 1, 5, 9. A SIGTERM inside tick 1 stops
    # the run with an extra checkpoint after step 4, where the uninterrupted run writes none;
    # the rerun continues from there. Every random stream (latents, per-layer noise, the augment
    # pipe) must continue from that off-tick checkpoint exactly as in the uninterrupted run.
    rnd = random.Random(SEED + 15)
    step = rnd.randint(1, 3)
    log = [f"seed {SEED + 15}; SIGTERM when step {step} starts"]
    ref = Run(data, str(tmp_path / "ref"), 0.072, 1).start()
    stopped = Run(data, str(tmp_path / "stopped"), 0.072, 1)
    try:
        ckpts = stopped.start().term_at(step, log)
        assert 4 in ckpts and 5 not in ckpts, "\n".join(log)
        t = stopped.start().wait()
        log.append(f"launch {stopped.launches}: resumed and finished in {t:.1f} s")
        log.append(f"uninterrupted reference finished in {ref.wait():.1f} s")
    finally:
        ref.kill()
        stopped.kill()
    print("\n" + "\n".join(log))
    # save_counter counts the checkpoints written: the stopped run wrote one more
    _check_same(ref.outdir, stopped.outdir, 9, 1, log,
                ignore=("save_counter/.ATTRIBUTES/VARIABLE_VALUE",))
    print(log[-1])
