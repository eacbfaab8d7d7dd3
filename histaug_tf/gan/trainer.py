"""The StyleGAN2-ADA training step under tf.distribute (run directory and scale-out:
docs/architecture.md, docs/training.md); the loop around it is ``gan/loop.py``.

One ``Trainer``, built from a ``config.TrainingConfig``, owns G, D, G_ema, the two Adam optimizers,
the augment pipe and ADA (``gan/ada.py``), the input iterator and the checkpoints. Each step runs
the reference's phases in order (Gmain, Greg every ``G_reg_interval`` steps, Dmain, Dreg every
``D_reg_interval`` steps; with an interval of None, Gboth/Dboth every step), each a
``tf.function`` around ``strategy.run``; with ``jit`` a phase is XLA-compiled (with one replica
the whole phase after its random draws, Adam update included; ``jit_phases`` chooses the phases,
by default all but Greg on one CPU replica). A phase may run in rounds of
``batch_gpu`` samples per replica with summed gradients (``_build_functions``). Then G_ema is
updated, and every ``ada_interval`` steps the augment probability.

Distribution: ``batch`` is the global batch; every replica computes per-sample losses on its
slice, sums them and divides by the samples of one round on all replicas (Keras optimizers sum
gradients over replicas), so a run on N replicas with one round (the default ``batch_gpu``)
takes the same steps as one replica with the same global batch. Random
inputs (latents, labels, mixing, path-length noise) come from a stateless Philox RNG keyed by
(seed, step, phase) and are drawn for the global batch, each replica taking its slice; the
path-length mean and the ``w_avg`` update use global means. (With ``jit=True`` and several
replicas the path-length mean is per replica, as in the reference's per-GPU ``pl_mean``.)

Input: each worker has its own plain tf.data iterator over worker batches (sharded by file, or
the global batch sliced per worker with ``input_sharding='batch'``), checkpointed per worker; the
worker batch is split over the worker's local replicas.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import weakref

import keras
import numpy as np
import tensorflow as tf

from tensorflow.python.eager import context as _context

from histaug_tf import graph_cache
from histaug_tf.common import UserError, write_text_atomic
from histaug_tf.gan import loss as loss_lib
from histaug_tf.gan.ada import Ada
from histaug_tf.gan.config import jit_phase_set
from histaug_tf.gan.adam import FusedAdam
from histaug_tf.gan.layers import CheckpointedLists, noise_seed, tf_variable
from histaug_tf.gan.networks import copy_matching_variables, freeze_d_variables
from histaug_tf.gan.stats import TrainingStats, moments
from histaug_tf.ops.upfirdn2d import xla_function

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
_PHASE_ID = {name: i for i, name in enumerate(PHASES)}



class CheckpointDamaged(Exception):
    """A checkpoint file cannot be read back completely (one line, naming the file)."""


def _one_line(err):
    """The first line of an exception's message, without TF's op-wrapper noise."""
    msg = getattr(err, "message", None) or str(err) or type(err).__name__
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg.strip().splitlines()[0] if msg.strip()
                 else msg)
    return re.sub(r"\s*\[Op:\w+\]$", "", msg)


_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _object_graph(prefix):
    """The TrackableObjectGraph stored in checkpoint ``prefix`` (which objects, which variables)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(tf.train.load_checkpoint(prefix).get_tensor(_OBJECT_GRAPH_KEY))
    except Exception as e:  # noqa: BLE001 - missing or unparsable
        raise CheckpointDamaged(f"{prefix}.index: no object graph ({_one_line(e)})") from None
    if not graph.nodes:
        raise CheckpointDamaged(f"{prefix}.index: empty object graph")
    return graph


def _stored_variable_count(graph, top_name):
    """How many variables checkpoint object graph ``graph`` reaches from its top-level object
    ``top_name`` (0 when there is none)."""
    start = [c.node_id for c in graph.nodes[0].children if c.local_name == top_name]
    seen, todo, count = set(start), list(start), 0
    while todo:
        node = graph.nodes[todo.pop()]
        if any(a.name == "VARIABLE_VALUE" for a in node.attributes):
            count += 1
        for c in node.children:
            if c.node_id not in seen:
                seen.add(c.node_id)
                todo.append(c.node_id)
    return count


def checkpoint_step(prefix):
    """N of a checkpoint prefix ``.../ckpt-N``; -1 for other names."""
    m = re.fullmatch(r"ckpt-(\d+)", os.path.basename(prefix))
    return int(m.group(1)) if m else -1


def checkpoint_candidates(ckpt_dir):
    """Checkpoint prefixes in ``ckpt_dir``, highest step first: every ``ckpt-N.index`` on disk
    and every path the checkpoint state file lists (a listed one whose files are gone is reported
    as damaged by ``verify_checkpoint_files``)."""
    paths = {p[:-len(".index")] for p in glob.glob(os.path.join(ckpt_dir, "ckpt-*.index"))}
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
    except Exception:  # noqa: BLE001 - an unreadable state file: the files on disk decide
        state = None
    if state is not None:
        paths.update(os.path.join(ckpt_dir, os.path.basename(p))
                     for p in state.all_model_checkpoint_paths)
    return sorted((p for p in paths if checkpoint_step(p) >= 0), key=checkpoint_step,
                  reverse=True)


def verify_checkpoint_files(prefix, chunk=64):
    """Read every tensor of checkpoint ``prefix`` (its index and data files; the bundle reader
    checks each tensor's CRC32C). Returns ``{name: shape}``; raises ``CheckpointDamaged`` naming
    the file that cannot be read."""
    index = prefix + ".index"
    if not os.path.isfile(index):
        raise CheckpointDamaged(f"{index}: missing")
    try:
        reader = tf.train.load_checkpoint(prefix)
        dtypes = reader.get_variable_to_dtype_map()
        shapes = {n: tuple(s) for n, s in reader.get_variable_to_shape_map().items()}
    except Exception as e:  # noqa: BLE001 - any failure to parse the index means damaged
        raise CheckpointDamaged(f"{index}: cannot be read ({_one_line(e)})") from None
    names = sorted(dtypes)
    try:
        for i in range(0, len(names), chunk):
            part = names[i:i + chunk]
            tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=part, shape_and_slices=[""] * len(part),
                                 dtypes=[dtypes[n] for n in part])
    except Exception as e:  # noqa: BLE001 - truncated (OutOfRange), bit flips (DataLoss), ...
        data = sorted(glob.glob(glob.escape(prefix) + ".data-*")) or [prefix + ".data-*"]
        raise CheckpointDamaged(f"{', '.join(data)}: cannot be read ({_one_line(e)})") from None
    return shapes


def _apply(opt, grads, variables):
    """apply_gradients without the variables that get no gradient (e.g. the last bias in R1)."""
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    opt.apply_gradients(pairs)


@contextlib.contextmanager
def _grappler_off():
    """TensorFlow's graph optimiser (Grappler) off for the functions this thread calls inside
    (the call options carry the session configuration; a call traced inside keeps them in the
    caller's graph). For the phases that are XLA programs: Grappler would only rewrite the caller
    around the XLA call and the program's TensorFlow body, which XLA compiles from the function
    definition anyway; it took up to ~1.5 s of each such phase's first call (docs/speed.md,
    "Warm-up: no graph optimiser around the XLA programs")."""
    ctx = _context.context()
    saved = ctx.function_call_options
    config = tf.compat.v1.ConfigProto()
    config.ParseFromString(saved.config_proto_serialized)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    ctx.function_call_options = _context.FunctionCallOptions(
        executor_type=saved.executor_type, config_proto=config)
    try:
        yield
    finally:
        ctx.function_call_options = saved


class _WithoutGrappler:
    """``fn`` (a phase function) called, traced (``prepare``, ``get_concrete_function``) and
    otherwise used as itself, inside ``_grappler_off()``."""

    _TRACERS = ("prepare", "get_concrete_function")

    def __init__(self, fn):
        self._fn = fn

    def __getattr__(self, attr):
        if attr.startswith("__") or attr == "_fn":
            raise AttributeError(attr)
        value = getattr(self._fn, attr)
        if attr not in self._TRACERS:
            return value

        def traced(*args, **kwargs):
            with _grappler_off():
                return value(*args, **kwargs)
        return traced

    def __call__(self, *args):
        with _grappler_off():
            return self._fn(*args)


def _nan_to_num(g, consts=None):
    """Reference ``nan_to_num(grad, nan=0, posinf=1e5, neginf=-1e5)``.

    Written with comparisons only (NaN is the one value unequal to itself): TensorFlow lowers
    ``IsNan``, ``IsInf`` and ``Sign`` to XLA through a per-op MLIR pipeline that costs ~3 ms per
    op instance when a program is compiled or loaded from the cache (one per gradient tensor: 175
    in the four phase programs of the demo configuration), comparisons and selects ~0.3 ms
    (docs/speed.md, "Warm-up: fewer ops that TensorFlow lowers one at a time"). ``consts``:
    the scalars of ``_nan_to_num_consts`` for ``g``'s dtype, shared by the gradients of a step."""
    if g is None:
        return None
    zero, pos_inf, neg_inf, pos_big, neg_big = consts or _nan_to_num_consts(g.dtype)
    g = tf.where(tf.not_equal(g, g), zero, g)
    g = tf.where(tf.equal(g, pos_inf), pos_big, g)
    return tf.where(tf.equal(g, neg_inf), neg_big, g)


def _nan_to_num_consts(dtype):
    """0, +inf, -inf, 1e5, -1e5 in ``dtype`` (scalars: ``tf.where`` broadcasts them)."""
    return tuple(tf.constant(v, dtype) for v in (0.0, float("inf"), float("-inf"), 1e5, -1e5))


def _nan_to_num_all(grads):
    """``_nan_to_num`` of each gradient (None stays None), with one set of scalars per dtype."""
    consts = {}
    out = []
    for g in grads:
        if g is not None and g.dtype not in consts:
            consts[g.dtype] = _nan_to_num_consts(g.dtype)
        out.append(None if g is None else _nan_to_num(g, consts[g.dtype]))
    return out


class Trainer:
    """StyleGAN2-ADA trainer. See the module docstring.

    Args:
      config: a ``config.TrainingConfig`` (every setting; ``config.outdir`` is the run directory,
        its files: docs/architecture.md, "GAN run directory").
      strategy: a tf.distribute.Strategy (``tf.distribute.get_strategy()`` for the default).
      build_networks: ``fn() -> (G, D, G_ema)``, called inside ``strategy.scope()``; the models
        must be built (variables created) and G_ema a structural copy of G.
      input_fn: ``fn(num_workers, worker_index, worker_batch, seed) -> tf.data.Dataset`` yielding
        ``(images [worker_batch,H,W,C] float in [-1,1], labels int [worker_batch])`` forever.
      make_augment_pipe: ``fn() -> pipe`` (with a ``p`` variable) or None; called in scope.
      snapshot_fn: ``fn(path, G_ema, G, D, metadata)`` (snapshot.save_snapshot).
      load_snapshot_fn: ``fn(path) -> dict`` (snapshot.load_snapshot), for
        ``config.networks.resume``.
      metrics_fn: ``fn(G_ema, snapshot_path, kimg) -> dict`` or None; called at snapshots.
      stop_signal: a ``distribute.StopSignal`` or None. When it fires (SIGTERM), all workers save
        a checkpoint at the same step and ``run`` returns with ``stopped_by_signal`` set.
      num_workers, worker_index, is_chief: from distribute.worker_info / is_chief.
      log: print function for the progress lines (chief only).
    """

    def __init__(self, config, *, strategy, build_networks, input_fn, make_augment_pipe=None,
                 snapshot_fn=None, load_snapshot_fn=None, metrics_fn=None, stop_signal=None,
                 num_workers=1, worker_index=0, is_chief=True, log=print, max_checkpoints=2,
                 stop_check_steps=4):
        self.config = config
        net, lc, aug, sch = config.networks, config.loss, config.augment, config.schedule
        self.strategy = strategy
        self.stop_signal = stop_signal
        self.stop_check_steps = max(1, int(stop_check_steps))
        self.run_dir = config.outdir
        self.batch = int(sch.batch)
        self.num_replicas = int(strategy.num_replicas_in_sync)
        if self.batch % self.num_replicas:
            raise UserError(f"--batch={self.batch} is not divisible by the {self.num_replicas} "
                            "replicas")
        self.replica_batch = self.batch // self.num_replicas
        self.num_workers = int(num_workers)
        self.worker_index = int(worker_index)
        if self.num_replicas % self.num_workers:
            raise UserError(f"{self.num_replicas} replicas over {self.num_workers} workers")
        self.local_replicas = self.num_replicas // self.num_workers
        self.worker_batch = self.replica_batch * self.local_replicas
        self.is_chief = bool(is_chief)
        self.c_dim = int(net.c_dim)
        self.G_reg_interval = lc.G_reg_interval or None
        self.D_reg_interval = lc.D_reg_interval or None
        self.pl_batch_shrink = int(lc.pl_batch_shrink)
        self.pl_weight = float(lc.pl_weight)
        self.r1_gamma = float(lc.gamma)
        self.ema_kimg = float(sch.ema_kimg)
        self.ema_rampup = sch.ema_rampup
        self.jit = bool(config.distribution.jit)
        self.snapshot_fn = snapshot_fn
        self.load_snapshot_fn = load_snapshot_fn
        self.metrics_fn = metrics_fn
        self.input_fn = input_fn
        self.log = log if self.is_chief else (lambda *a, **k: None)
        self.deterministic = bool(sch.deterministic)
        self.max_checkpoints = int(max_checkpoints)
        self.stopped_by_signal = None

        batch_gpu = sch.batch_gpu
        self.batch_gpu = self.replica_batch if batch_gpu is None else int(batch_gpu)
        if self.batch_gpu < 1 or self.replica_batch % self.batch_gpu:
            raise UserError(f"--batch_gpu={batch_gpu}: must divide the per-replica batch "
                            f"{self.replica_batch} (--batch={self.batch} over "
                            f"{self.num_replicas} replica(s))")
        self.rounds = self.replica_batch // self.batch_gpu
        if self.pl_weight != 0 and self.batch_gpu // self.pl_batch_shrink < 1:
            raise UserError(f"--batch_gpu={self.batch_gpu} (samples per replica and round) is "
                            f"too small for the path length batch (pl_batch_shrink="
                            f"{self.pl_batch_shrink})")

        with strategy.scope():
            self.G, self.D, self.G_ema = build_networks()
            self.augment_pipe = make_augment_pipe() if make_augment_pipe is not None else None
            if self.augment_pipe is not None:
                self.augment_pipe.p.assign(float(aug.p))
            G_lr_eff, G_betas = loss_lib.lazy_regularization(lc.G_lr, lc.betas, self.G_reg_interval)
            D_lr_eff, D_betas = loss_lib.lazy_regularization(lc.D_lr, lc.betas, self.D_reg_interval)
            self.G_opt = FusedAdam(G_lr_eff, beta_1=G_betas[0], beta_2=G_betas[1],
                                   epsilon=lc.eps, name="G_opt")
            self.D_opt = FusedAdam(D_lr_eff, beta_1=D_betas[0], beta_2=D_betas[1],
                                   epsilon=lc.eps, name="D_opt")
            self.G_vars = list(self.G.trainable_variables)
            frozen = set(id(v) for v in freeze_d_variables(self.D, net.freezed))
            self.D_vars = [v for v in self.D.trainable_variables if id(v) not in frozen]
            self.G_opt.build(self.G_vars)
            self.D_opt.build(self.D_vars)
            self._G_tf = [tf_variable(v) for v in self.G_vars]
            self._D_tf = [tf_variable(v) for v in self.D_vars]
            self.pl_mean = tf.Variable(0.0, trainable=False, name="pl_mean")
        # Host-side counters and accumulators (cross-replica only; identical on every worker).
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.nimg_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="nimg")
        self.tick_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="tick")
        self.seed_var = tf.Variable(int(sch.seed), dtype=tf.int64, trainable=False, name="seed")
        # The run's seed and the label distribution of the fakes (the classes' shares of the
        # data; uniform without counts) reach the step graphs as variables, not constants: the
        # GANs of one study (other seeds, other subsets) share traced graphs and XLA programs
        # (graph_cache; XLA's persistent cache).
        counts = np.asarray(config.data.class_counts, np.float64)
        probs = (counts / counts.sum() if self.c_dim and counts.size == self.c_dim
                 and counts.sum() > 0 else np.full([self.c_dim], 1.0 / max(self.c_dim, 1)))
        self.class_logits_var = tf.Variable(np.log(probs + 1e-30).astype(np.float32)[None],
                                            trainable=False, name="class_logits")
        # ADA: p (the pipe's variable) and the signs of D(real) since the last adjustment.
        self.ada = Ada(self.augment_pipe.p if self.augment_pipe is not None else None,
                       batch_size=self.batch, target=aug.target, interval=aug.ada_interval,
                       kimg=aug.ada_kimg)
        self.stats = TrainingStats(loss_lib.StyleGAN2Loss.STAT_NAMES)

        self.loss = loss_lib.StyleGAN2Loss(
            self.G, self.D, augment_pipe=self.augment_pipe, r1_gamma=lc.gamma,
            style_mixing_prob=lc.style_mixing, pl_weight=lc.pl_weight,
            pl_batch_shrink=lc.pl_batch_shrink, pl_decay=lc.pl_decay, noise_mode=net.noise_mode)
        self.z_dim = int(self.G.z_dim)
        self._w_avg = getattr(getattr(self.G, "mapping", None), "w_avg", None)
        self._w_avg_beta = float(getattr(self.G.mapping, "w_avg_beta", 0.995))

        self._pending_batch = None  # (real, real_c) pulled ahead by run(), used by the next step
        self._setup_checkpoint(net.resume)
        self._rebuild_functions()

    @property
    def fused_phases(self):
        """The phases that are one XLA program each, Adam update included (one replica)."""
        return self.jit_phases if self.num_replicas == 1 else ()

    @property
    def seed(self):
        """The run's seed: the checkpoint's when resuming (every random stream is keyed by it)."""
        return int(self.seed_var.numpy())

    @property
    def _reseed_at_checkpoints(self):
        """Deterministic mode with random draws whose state no checkpoint holds: an augment pipe
        on TensorFlow's global RNG (no ``seed``). The per-layer noise is stateless
        (``layers.noise_seed``, keyed by seed, step, phase, replica and round) and a seeded pipe's
        generator is checkpointed, so otherwise a resumed run continues exactly without help."""
        return self.deterministic and self.augment_pipe is not None and \
            getattr(self.augment_pipe, "rng", None) is None

    def _rebuild_functions(self):
        """(Re)create the step functions. When ``_reseed_at_checkpoints`` this happens at every
        checkpoint with the TF global seed set from (seed, step): the stateful random ops then
        restart their streams at each checkpoint, so a run resumed from a checkpoint continues
        exactly as the uninterrupted one."""
        if self._reseed_at_checkpoints:
            tf.random.set_seed((self.seed * 1000003 + int(self.step_var.numpy())) % (2**31 - 1))
        self._build_functions()

    # -----------------------------------------------------------------------------------------
    # Random inputs.

    def _seed(self, step, phase, k):
        """Stateless seed for (run seed, step, phase, stream k)."""
        step = tf.cast(step, tf.int64)
        return tf.stack([tf.convert_to_tensor(self.seed_var),
                         step * 64 + _PHASE_ID[phase] * 8 + k])

    def _gen_inputs(self, step, phase, n):
        """Latents, labels, mixing latents and cutoff for ``n`` (global) samples."""
        z = tf.random.stateless_normal([n, self.z_dim], self._seed(step, phase, 0), alg="philox")
        mix_z = tf.random.stateless_normal([n, self.z_dim], self._seed(step, phase, 1),
                                           alg="philox")
        cutoff = self._cutoff(step, phase, 0)
        if self.c_dim > 0:
            logits = tf.convert_to_tensor(self.class_logits_var)
            idx = tf.random.stateless_categorical(logits, n, self._seed(step, phase, 3),
                                                  dtype=tf.int32)[0]
            c = tf.one_hot(idx, self.c_dim, dtype=tf.float32)
        else:
            c = tf.zeros([n, 0], tf.float32)
        if self.loss.style_mixing_prob <= 0:
            mix_z = None
        return z, c, mix_z, cutoff

    def _cutoff(self, step, phase, k=0):
        """The style-mixing cutoff of round ``k`` of ``phase`` (shared by the replicas; round 0
        is the one of ``_gen_inputs``)."""
        seed = self._seed(step, phase, 2)
        if k:
            seed = tf.random.experimental.stateless_fold_in(self._seed(step, phase, 5), k)
        return self.loss.mixing_cutoff(seed)

    def _local(self, x, per_replica):
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        return x[rid * per_replica:(rid + 1) * per_replica]

    # -----------------------------------------------------------------------------------------
    # Phases.

    def _build_functions(self):
        """The phase functions (reference ``training_loop``/``loss.accumulate_gradients``).

        Every phase runs ``self.rounds`` rounds of ``batch_gpu`` samples on each replica (the
        reference's gradient accumulation). A round is a forward/backward pass of its own: its own
        minibatch-std groups, style-mixing cutoff, ``pl_mean`` update and ``w_avg`` update. Its
        gradient is that of the round's mean loss times the phase gain, averaged over replicas
        (reference: ``loss.mean().mul(gain).backward()`` per round, DDP's mean over GPUs); the
        gradients of the rounds are summed, passed through ``nan_to_num`` and applied in one
        optimizer step. Rounds 1..R-1 run in a ``tf.while_loop`` (one traced round, iterations in
        sequence), so only one round's activations are alive at a time and the graph does not
        grow with R; only the non-XLA multi-replica path-length phases, whose global pl mean is a
        collective that cannot run inside a loop, unroll the rounds (each waiting for the last).

        Sample layout: a phase's latents are drawn for the global batch (stateless RNG) in the
        order [replica][round][sample]; the real batch is sliced the same way. With one round
        (the default) the phases are those of a plain global-batch step.
        """
        strategy = self.strategy
        B, N, R, g = self.batch, self.num_replicas, self.rounds, self.batch_gpu
        gpl = g // self.pl_batch_shrink  # path-length samples per round (reference: per call)
        multi = N > 1
        # The phases XLA compiles (config.jit_phase_set: with --jit, by default all but the
        # path-length phase on one CPU replica). One replica: everything of such a phase after
        # its random draws is ONE XLA program (losses, gradients, nan_to_num, the Adam update,
        # statistics, w_avg, pl_mean), and so is the G EMA update; with several replicas only the
        # per-replica loss/gradient part is compiled. The stateless draws stay outside XLA:
        # XLA's stateless normal is a different transform of the same Philox bits, so inside it
        # the latents would change.
        on_cpu = not tf.config.list_logical_devices("GPU")
        jitted = jit_phase_set(self.config.distribution.jit_phases, jit=self.jit,
                               one_cpu_replica=on_cpu and not multi)
        self.jit_phases = tuple(sorted(jitted))
        inv = 1.0 / (g * N)               # mean over one round on all replicas
        inv_pl = 1.0 / max(gpl * N, 1)
        res = int(self.G.img_resolution)
        ch = int(self.G.img_channels)

        def after(prev, xs):
            """``xs`` made to wait for ``prev`` (the previous round's results), so that rounds
            run one after another whatever the executor's parallelism."""
            deps = [t for t in tf.nest.flatten(prev) if t is not None]
            if not deps:
                return xs
            with tf.control_dependencies(deps):
                return [None if x is None else tf.identity(x) for x in xs]

        def add_grads(acc, grads):
            if acc is None:
                return list(grads)
            return [a if d is None else d if a is None else a + d for a, d in zip(acc, grads)]

        def add_stats(acc, stats):
            return dict(stats) if acc is None else {k: acc[k] + v for k, v in stats.items()}

        def replica_inputs(step, phase, n):
            """This replica's R*n latents, labels, mixing latents, and the R (replica-shared)
            cutoffs of ``phase``, stacked [R]."""
            z, c, mix_z, _ = self._gen_inputs(step, phase, B)
            per = R * n
            z, c = self._local(z[:N * per], per), self._local(c[:N * per], per)
            mix_z = None if mix_z is None else self._local(mix_z[:N * per], per)
            cutoffs = tf.stack([self._cutoff(step, phase, k) for k in range(R)])
            return z, c, mix_z, cutoffs

        def noise_seeds(step, phase):
            """[R, 2]: the per-layer noise seed of each of this replica's rounds of ``phase``
            (``layers.noise_seed``; stream 6 of the phase's seed)."""
            rid = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
            base = self._seed(step, phase, 6)
            return tf.stack([tf.random.experimental.stateless_fold_in(base, rid * R + k,
                                                                      alg="philox")
                             for k in range(R)])

        def pl_noise(step):
            noise = tf.random.stateless_normal([B // self.pl_batch_shrink, res, res, ch],
                                               self._seed(step, "Greg", 4), alg="philox")
            return self._local(noise[:N * R * gpl], R * gpl)

        # --- G phases: Gmain (main), Greg (pl, gain = interval), Gboth (both, gain 1) -----------
        def make_g_compute(main, pl, gain_pl, jit):
            allreduce = multi and not jit  # under XLA: per-replica pl_mean (reference: per GPU)

            def compute(main_in, pl_in, pl_mean, seed):
                ctx = tf.distribute.get_replica_context()
                stats, wsums, new_mean = {}, [], pl_mean
                with tf.GradientTape(watch_accessed_variables=False) as tape, noise_seed(seed):
                    tape.watch(self._G_tf)
                    total = 0.0
                    if main:
                        loss, st, w0 = self.loss.G_main(*main_in)
                        total += tf.reduce_sum(loss) * inv
                        stats.update(st)
                        wsums.append(tf.reduce_sum(w0, axis=0))
                    if pl:
                        z, c, mix_z, cutoff, noise = pl_in
                        mean_fn = ((lambda x: ctx.all_reduce("SUM", tf.reduce_sum(x)) * inv_pl)
                                   if allreduce else None)
                        loss, new_mean, st, w0 = self.loss.G_pl(z, c, noise, pl_mean, mix_z,
                                                                cutoff, mean_fn=mean_fn)
                        total += tf.reduce_sum(loss) * (gain_pl * inv_pl)
                        stats.update(st)
                        wsums.append(tf.reduce_sum(w0, axis=0))
                grads = tape.gradient(total, self._G_tf)
                return grads, {k: moments(v) for k, v in stats.items()}, tf.stack(wsums), new_mean
            return xla_function(compute) if jit and multi else compute

        def run_rounds(round_in, compute, pl_mean, loop):
            """Rounds 0..R-1 of ``compute(round_in(k), pl_mean) -> (grads, stats, wsum,
            new_pl_mean)``, returning the summed gradients (None stays None), summed stats, the
            rounds' wsums stacked [R, ...] (or None) and the last pl_mean. Round 0 is traced as
            is; with ``loop`` rounds 1..R-1 run in a ``tf.while_loop`` (one traced body, the
            iterations in sequence, so neither the graph nor the live activations grow with R);
            without, they are unrolled, each waiting for the previous round's gradients."""
            grads, stats, wsum, pl_mean = compute(round_in(0), pl_mean)
            wsums = [wsum]
            if R > 1 and loop:
                idx = [i for i, x in enumerate(grads) if x is not None]
                ta = tf.zeros([])  # placeholder loop variable when there is no wsum
                if wsum is not None:
                    ta = tf.TensorArray(wsum.dtype, size=R, element_shape=wsum.shape)
                    ta = ta.write(0, wsum)

                def body(k, acc, st, ta, pm):
                    gr, s_, w, pm = compute(round_in(k), pm)
                    acc = [a_ + gr[i] for a_, i in zip(acc, idx)]
                    st = {n: st[n] + s_[n] for n in st}
                    return k + 1, acc, st, (ta.write(k, w) if w is not None else ta), pm

                _, acc, stats, ta, pl_mean = tf.while_loop(
                    lambda k, *_: k < R, body,
                    (tf.constant(1), [grads[i] for i in idx], stats, ta, pl_mean),
                    parallel_iterations=1)
                grads = list(grads)
                for a_, i in zip(acc, idx):
                    grads[i] = a_
                return grads, stats, (ta.stack() if wsum is not None else None), pl_mean
            for k in range(1, R):
                grads_k, st, wsum, pl_mean = compute(after(grads, round_in(k)), pl_mean)
                grads, stats = add_grads(grads, grads_k), add_stats(stats, st)
                wsums.append(wsum)
            return grads, stats, (None if wsum is None else tf.stack(wsums)), pl_mean

        def stacked(x, n):
            """The replica's [R*n, ...] slice as [R, n, ...] (None stays None)."""
            return None if x is None else tf.reshape(x, [R, n] + x.shape.as_list()[1:])

        def picker(xs):
            """round_in(k): round k of each [R, ...] input (k a Python int or a tensor)."""
            return lambda k: [None if x is None else tf.gather(x, k) for x in xs]

        def g_inputs(step, main, pl):
            xs = [None] * 10
            xs[9] = noise_seeds(step, "Gmain" if main else "Greg")
            if main:
                z, c, mix_z, cuts = replica_inputs(step, "Gmain", g)
                xs[:4] = [stacked(z, g), stacked(c, g), stacked(mix_z, g), cuts]
            if pl:
                z, c, mix_z, cuts = replica_inputs(step, "Greg", gpl)
                if main:  # Gboth: the path length runs on the first latents of the round
                    z, c = xs[0][:, :gpl], xs[1][:, :gpl]
                else:
                    z, c = stacked(z, gpl), stacked(c, gpl)
                noise = stacked(pl_noise(step), gpl)
                xs[4:9] = [z, c, stacked(mix_z, gpl), cuts, noise]
            return xs

        def g_update(xs, main, pl, compute, jit):
            pick = picker(xs)

            def compute_round(ins, pl_mean):
                main_in = tuple(ins[:4]) if main else None
                pl_in = tuple(ins[4:9]) if pl else None
                grads, st, ws, new_mean = compute(main_in, pl_in, pl_mean, ins[9])
                return grads, st, ws, new_mean

            # collectives (the non-XLA multi-replica pl mean) cannot run inside a while loop
            loop = not (pl and multi and not jit)
            grads, stats, wsums, pl_mean = run_rounds(pick, compute_round,
                                                      self.pl_mean.read_value(), loop)
            if pl and jit and multi:
                pl_mean = tf.distribute.get_replica_context().all_reduce("MEAN", pl_mean)
            _apply(self.G_opt, _nan_to_num_all(grads), self.G_vars)
            return stats, tf.reshape(wsums, [-1, wsums.shape[-1]]), pl_mean

        def g_replica(step, main, pl, compute, jit):
            return g_update(g_inputs(step, main, pl), main, pl, compute, jit)

        # --- D phases: Dmain (main), Dreg (R1, gain = interval), Dboth (both, gain 1) -----------
        def make_d_compute(main, r1, gain, jit):
            def compute(real, real_c, gen_in, seed):
                with tf.GradientTape(watch_accessed_variables=False) as tape, noise_seed(seed):
                    tape.watch(self._D_tf)
                    wsum = None
                    if main and r1:
                        loss, stats, w0 = self.loss.D_both(real, real_c, *gen_in)
                    elif main:
                        loss, stats, w0 = self.loss.D_main(real, real_c, *gen_in)
                    else:
                        loss, stats = self.loss.D_r1(real, real_c)
                        w0 = None
                    total = tf.reduce_sum(loss) * (gain * inv)
                if w0 is not None:
                    wsum = tf.reduce_sum(w0, axis=0)[None]
                grads = tape.gradient(total, self._D_tf)
                return grads, {k: moments(v) for k, v in stats.items()}, wsum
            return xla_function(compute) if jit and multi else compute

        def d_inputs(real, real_c, step, main):
            xs = [stacked(real, g), stacked(real_c, g), None, None, None, None, None]
            if main:
                z, c, mix_z, cuts = replica_inputs(step, "Dmain", g)
                xs[2:] = [stacked(z, g), stacked(c, g), stacked(mix_z, g), cuts,
                          noise_seeds(step, "Dmain")]
            return xs

        def d_update(xs, main, compute):
            pick = picker(xs)

            def compute_round(ins, pl_mean):
                grads, st, ws = compute(ins[0], ins[1], tuple(ins[2:6]) if main else None,
                                        ins[6])
                return grads, st, ws, pl_mean

            grads, stats, wsums, _ = run_rounds(pick, compute_round, tf.constant(0.0), True)
            _apply(self.D_opt, _nan_to_num_all(grads), self.D_vars)
            return stats, (None if wsums is None else tf.reshape(wsums, [-1, wsums.shape[-1]]))

        def d_replica(real, real_c, step, main, compute):
            return d_update(d_inputs(real, real_c, step, main), main, compute)

        # --- cross-replica wrappers ---------------------------------------------------------
        def reduce_sum(x):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)

        def accumulate(stats):
            for name, v in stats.items():
                v = tf.cast(reduce_sum(v), tf.float64)
                self.stats.add(name, v)
                if name == "Loss/signs/real":  # Dmain, Dreg and Dboth: ADA's r_t
                    self.ada.accumulate(v[0], v[2])

        def update_w_avg(wsums, counts):
            """One ``w_avg`` lerp per mapping call, in order: row i of ``wsums`` (summed over
            replicas) / ``counts[i]`` samples."""
            if self._w_avg is None or wsums is None:
                return
            sums = tf.cast(reduce_sum(wsums), tf.float32)
            w = tf.convert_to_tensor(tf_variable(self._w_avg))
            for i, n in enumerate(counts):
                mean = sums[i] / n
                w = mean + (w - mean) * self._w_avg_beta
            self._w_avg.assign(w)

        def g_step_fn(name, main, pl, gain_pl):
            jit, fused = name in jitted, name in self.fused_phases
            compute = make_g_compute(main, pl, gain_pl, jit)
            counts = (([N * g] if main else []) + ([N * gpl] if pl else [])) * R

            if fused:
                @xla_function
                def update(xs):
                    stats, wsums, new_mean = g_update(xs, main, pl, compute, jit)
                    accumulate(stats)
                    update_w_avg(wsums, counts)
                    if pl:
                        self.pl_mean.assign(new_mean)

                @tf.function(autograph=False)
                def fused_step(step):
                    update(g_inputs(step, main, pl))
                fused_step.xla_update = update  # (the benchmark's FLOP count)
                return fused_step

            @tf.function(autograph=False)
            def step_fn(step):
                stats, wsums, new_mean = strategy.run(
                    lambda s: g_replica(s, main, pl, compute, jit), args=(step,))
                accumulate(stats)
                update_w_avg(wsums, counts)
                if pl:
                    self.pl_mean.assign(strategy.experimental_local_results(new_mean)[0])
            return step_fn

        def d_step_fn(name, main, r1, gain):
            jit, fused = name in jitted, name in self.fused_phases
            compute = make_d_compute(main, r1, gain, jit)
            counts = [N * g] * R if main else []

            if fused:
                @xla_function
                def update(xs):
                    stats, wsums = d_update(xs, main, compute)
                    accumulate(stats)
                    update_w_avg(wsums, counts)

                @tf.function(autograph=False)
                def fused_step(real, real_c, step):
                    update(d_inputs(real, real_c, step, main))
                fused_step.xla_update = update
                return fused_step

            @tf.function(autograph=False)
            def step_fn(real, real_c, step):
                stats, wsums = strategy.run(
                    lambda x, xc, s: d_replica(x, xc, s, main, compute),
                    args=(real, real_c, step))
                accumulate(stats)
                update_w_avg(wsums, counts)
            return step_fn

        @tf.function(jit_compile=True if self.jit and not multi else None, autograph=False)
        def ema_step(beta):
            loss_lib.update_ema(self.G, self.G_ema, beta)

        self._phase_fns = {
            "Gmain": g_step_fn("Gmain", True, False, 0.0),
            "Greg": g_step_fn("Greg", False, True, float(self.G_reg_interval or 1)),
            "Gboth": g_step_fn("Gboth", True, True, 1.0),
            "Dmain": d_step_fn("Dmain", True, False, 1.0),
            "Dreg": d_step_fn("Dreg", False, True, float(self.D_reg_interval or 1)),
            "Dboth": d_step_fn("Dboth", True, True, 1.0),
        }
        self._ema_step = ema_step
        self._cache_graphs()
        # The XLA programs run without Grappler (the phases TensorFlow runs keep it).
        for name in self.fused_phases:
            self._phase_fns[name] = _WithoutGrappler(self._phase_fns[name])
        if self.jit and not multi:
            self._ema_step = _WithoutGrappler(self._ema_step)

    # Trainer attributes that do not reach a traced graph (paths, loop state, callbacks).
    _NOT_IN_GRAPHS = ("run_dir", "ckpt_dir", "input_ckpt_dir", "resumed_from", "_tmp_ckpt_dir",
                      "_ckpt_shapes", "_pending_batch", "stopped_by_signal", "stop_signal",
                      "stop_check_steps", "max_checkpoints")

    def _cache_graphs(self):
        """Wrap the phase functions and the EMA update in ``graph_cache.CachedFunction``: a later
        process with the same key loads their traced graphs instead of tracing them. Only with
        one replica (a distributed graph holds collective keys and devices of its own process)
        and not when the functions are traced again at each checkpoint with a global seed of that
        step (``_reseed_at_checkpoints``)."""
        if (self.num_replicas > 1 or self.num_workers > 1 or self._reseed_at_checkpoints
                or tf.config.functions_run_eagerly() or graph_cache.graph_cache_dir() is None):
            return
        # The networks' configuration is part of the key: networks whose class does not define
        # its own get_config (e.g. the tests' stand-ins) are not cached.
        for m in (self.G, self.D, self.G_ema):
            if type(m).get_config in (keras.Model.get_config, keras.layers.Layer.get_config):
                return
        variables = self._graph_variables()
        cfg = self.config.to_dict()
        cfg.pop("outdir", None)
        cfg.pop("metrics", None)
        for k in ("data", "class_counts", "label_names"):
            cfg["data"].pop(k, None)
        cfg["networks"].pop("resume", None)
        for k in ("kimg", "tick", "snap", "checkpoint_ticks", "grid", "tensorboard", "seed"):
            cfg["schedule"].pop(k, None)
        cfg.get("preset", {}).pop("kimg", None)  # the record of --kimg (resuming to train longer)
        key = {
            "config": cfg,
            "trainer": graph_cache.scalars(self, exclude=self._NOT_IN_GRAPHS),
            "loss": graph_cache.scalars(self.loss),
            "augment": (None if self.augment_pipe is None
                        else [type(self.augment_pipe).__name__,
                              graph_cache.scalars(self.augment_pipe)]),
            "ada": graph_cache.scalars(self.ada),
            "networks": [[type(m).__name__, m.get_config()] for m in (self.G, self.D, self.G_ema)],
            "optimizers": [self.G_opt.get_config(), self.D_opt.get_config()],
            "variables": [[p, v.dtype.name, v.shape.as_list(), bool(v.trainable)]
                          for p, v in variables],
        }
        paths = {id(v): p for p, v in variables}
        key["G_vars"] = [paths.get(id(v)) for v in self._G_tf]
        key["D_vars"] = [paths.get(id(v)) for v in self._D_tf]
        wrap = lambda name, fn: graph_cache.CachedFunction(  # noqa: E731
            fn, name, key, self._graph_variables, log=self.log)
        self._phase_fns = {n: wrap(n, f) for n, f in self._phase_fns.items()}
        self._ema_step = wrap("EMA", self._ema_step)

    def _graph_variables(self):
        """Every variable a step function may capture, as ``[(path, tf.Variable)]``: those of
        the checkpoint (by their object-graph path), the statistics accumulators and the label
        logits."""
        from tensorflow.python.checkpoint import graph_view

        root = tf.train.Checkpoint(ckpt=self.ckpt, class_logits=self.class_logits_var,
                                   stats=[self.stats._acc[k] for k in sorted(self.stats._acc)])
        objs, paths = graph_view.ObjectGraphView(root).breadth_first_traversal()
        out, seen = [], set()
        for o in objs:
            v = tf_variable(o)
            if isinstance(v, tf.Variable) and id(v) not in seen:
                seen.add(id(v))
                out.append(("/".join(r.name for r in paths[o]), v))
        return out

    # -----------------------------------------------------------------------------------------
    # Input.

    def _make_iterator(self, seed_offset=0):
        ds = self.input_fn(self.num_workers, self.worker_index, self.worker_batch,
                           self.seed + seed_offset)
        return iter(ds)

    def _next_batch(self):
        real, label = next(self.iterator)
        real = tf.cast(real, tf.float32)
        if self.c_dim > 0:
            real_c = tf.one_hot(tf.cast(label, tf.int32), self.c_dim, dtype=tf.float32)
        else:
            real_c = tf.zeros([tf.shape(real)[0], 0], tf.float32)
        if self.num_replicas == 1:
            return real, real_c
        b, wi, nl = self.replica_batch, self.worker_index, self.local_replicas

        def part(x):
            def value_fn(ctx):
                i = ctx.replica_id_in_sync_group - wi * nl
                return x[i * b:(i + 1) * b]
            return self.strategy.experimental_distribute_values_from_function(value_fn)
        return part(real), part(real_c)

    # -----------------------------------------------------------------------------------------
    # Checkpoints.

    def _setup_checkpoint(self, resume_snapshot):
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        objs = dict(G=self.G, D=self.D, G_ema=self.G_ema, G_opt=self.G_opt, D_opt=self.D_opt,
                    pl_mean=self.pl_mean, step=self.step_var, nimg=self.nimg_var,
                    tick=self.tick_var, seed=self.seed_var, ada=self.ada)
        if self.augment_pipe is not None:
            rng = getattr(self.augment_pipe, "rng", None)  # optional: AugmentPipe(seed=...).rng
            if rng is not None:
                objs["augment_rng"] = rng
        if self._w_avg is not None:
            objs["w_avg"] = self._w_avg
        self._ckpt_objects = tuple(sorted(objs))
        self._ckpt_shapes = None  # {name: shape} of the last checkpoint verified in this process
        self.ckpt = tf.train.Checkpoint(**objs)
        # Its save counter now, not at the first save or restore: a fresh and a resumed process
        # then hold the same variables (they are part of the graph cache's key).
        _ = self.ckpt.save_counter
        # Checkpoints written before ADA was one object keep its state at the top level
        # (ada_sum, ada_num, augment_p); they are read into ``self.ada`` (converted on resume;
        # the next checkpoint is written in the current layout).
        legacy = {k: v for k, v in objs.items() if k != "ada"}
        legacy.update(ada_sum=self.ada.sign_sum, ada_num=self.ada.sign_count)
        if self.augment_pipe is not None:
            legacy["augment_p"] = self.ada.p
        self._legacy_objects = tuple(sorted(legacy))
        self._legacy_ckpt = tf.train.Checkpoint(**legacy)
        self.input_ckpt_dir = os.path.join(self.ckpt_dir, f"input-worker{self.worker_index:03d}")
        self.resumed_from = None
        # Before the manager reads the checkpoint state: a damaged newest checkpoint is moved
        # aside and the state rewritten to the readable ones.
        latest = self._restore_latest()
        if self.is_chief:
            write_dir = self.ckpt_dir
            self._tmp_ckpt_dir = None
        else:
            # A non-chief worker's checkpoints are written (collectives need every worker to
            # write) into a private temporary directory, removed when the trainer goes or the
            # process exits (not after SIGKILL; it is then empty but for the last checkpoint).
            self._tmp_ckpt_dir = tempfile.mkdtemp(prefix=f"ckpt-worker{self.worker_index}-")
            weakref.finalize(self, shutil.rmtree, self._tmp_ckpt_dir, True)
            write_dir = self._tmp_ckpt_dir
        self.ckpt_manager = tf.train.CheckpointManager(self.ckpt, write_dir, max_to_keep=self.max_checkpoints,
                                                       step_counter=self.step_var)
        if latest:
            self.resumed_from = latest
            self.log(f"Resuming from {latest} (kimg {self.nimg_var.numpy() / 1000:.1f}, "
                     f"step {int(self.step_var.numpy())})")
            flag_seed = int(self.config.schedule.seed)
            if self.seed != flag_seed:  # seed_var, restored: part of the run's state
                self.log(f"warning: {latest}: the run was started with --seed={self.seed}; it "
                         f"goes on with that seed, not {flag_seed}")
        else:
            self.iterator = self._make_iterator()
            if resume_snapshot:
                self._load_from_snapshot(resume_snapshot)
        self.input_ckpt = tf.train.Checkpoint(iterator=self.iterator)

    def _verify_model_checkpoint(self, prefix, step):
        """Read checkpoint ``prefix`` back completely; check that it holds every object of this
        trainer (and, once one was verified in this process, exactly the same variables) at
        ``step``. Returns ``(shapes, legacy)``; raises ``CheckpointDamaged`` naming the file."""
        shapes = verify_checkpoint_files(prefix)
        graph = _object_graph(prefix)
        top = {c.local_name for c in graph.nodes[0].children}
        legacy = self.is_legacy_layout(top)
        objects = self._legacy_objects if legacy else self._ckpt_objects
        missing = sorted(set(objects) - top)
        if missing:
            raise CheckpointDamaged(f"{prefix}.index: holds no {', '.join(missing)}")
        # exactly the variables its object graph lists (each variable once, under its first path)
        keys = {a.checkpoint_key for n in graph.nodes for a in n.attributes}
        keys.add(_OBJECT_GRAPH_KEY)
        if keys != set(shapes):
            diff = sorted(keys ^ set(shapes))
            raise CheckpointDamaged(f"{prefix}.index: variable list differs from its object graph "
                                    f"({', '.join(diff[:3])})")
        if self._ckpt_shapes is not None and shapes != self._ckpt_shapes:
            diff = sorted(set(shapes) ^ set(self._ckpt_shapes)) or sorted(
                n for n in shapes if shapes[n] != self._ckpt_shapes[n])
            raise CheckpointDamaged(f"{prefix}.index: variable list differs from the previous "
                                    f"checkpoint's ({', '.join(diff[:3])})")
        stored = int(tf.train.load_variable(prefix, "step/.ATTRIBUTES/VARIABLE_VALUE"))
        if stored != step:
            raise CheckpointDamaged(f"{prefix}.index: holds step {stored}, expected {step}")
        return shapes, legacy, self._without_network_lists(graph)

    def _without_network_lists(self, graph):
        """A checkpoint written before the networks' layer lists were checkpoint children
        (``layers.CheckpointedLists``): it reaches fewer of G_ema's variables than G_ema has."""
        return _stored_variable_count(graph, "G_ema") < len(self.G_ema.variables)

    @staticmethod
    def is_legacy_layout(top_level_names):
        """A checkpoint of the layout before ``gan/ada.py`` (ADA's sums at the top level)."""
        return "ada" not in top_level_names and {"ada_sum", "ada_num"} <= set(top_level_names)

    def _restore_latest(self):
        """Restore the newest checkpoint that can be read completely (model and input iterator
        state of ONE step), or return None when there is none. A damaged newer one is reported
        in one line and (chief) moved aside as ``damaged-ckpt-N.*``; when checkpoints exist but
        none can be read, UserError."""
        candidates = checkpoint_candidates(self.ckpt_dir)
        damaged = []
        for prefix in candidates:
            step = checkpoint_step(prefix)
            it_path = os.path.join(self.input_ckpt_dir, f"ckpt-{step}")
            has_it = os.path.exists(it_path + ".index")
            try:
                shapes, legacy, no_lists = self._verify_model_checkpoint(prefix, step)
                if has_it:
                    verify_checkpoint_files(it_path)
            except CheckpointDamaged as e:
                damaged.append((prefix, str(e)))
                self.log(f"warning: damaged checkpoint: {e}; falling back to the previous one")
                continue
            # Verified: every object is restored from this one checkpoint, or the run stops.
            try:
                # (an older checkpoint is matched against the object graph it was written from)
                with CheckpointedLists.lists_in_checkpoints(not no_lists):
                    (self._legacy_ckpt if legacy else self.ckpt).restore(
                        prefix).assert_existing_objects_matched()
                self.iterator = self._make_iterator()
                if has_it:
                    tf.train.Checkpoint(iterator=self.iterator).read(it_path).assert_consumed()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise UserError(f"{prefix}: does not match this run's networks or input "
                                f"pipeline ({_one_line(e)}); were the options changed? "
                                "Use a new --outdir") from None
            if not has_it:
                self.log(f"warning: no input iterator state for step {step}; "
                         "restarting the input pipeline with a new shuffle seed")
                self.iterator = self._make_iterator(seed_offset=step)
            if no_lists:
                # G_ema's weights were not stored: its average restarts from G's weights (better
                # than from the initialisation the networks were built with)
                copy_matching_variables(self.G, self.G_ema)
                self.log(f"warning: {prefix}: written before checkpoints held the networks' "
                         "layer lists: G_ema's weights and the constant noise buffers were not "
                         "stored; G_ema restarts from G's weights, the buffers are new. The next "
                         "checkpoint holds them all")
            if legacy:
                self.log(f"{prefix}: written before ADA was one checkpoint object; its ADA state "
                         "(p and the sign sums) is read and the next checkpoint uses the "
                         "current layout")
            if not (legacy or no_lists):  # (the next checkpoint's variables differ from these)
                self._ckpt_shapes = shapes
            if damaged and self.is_chief:
                self._set_aside(damaged, prefix)
            return prefix
        if damaged:
            raise UserError(f"{self.ckpt_dir}: no readable checkpoint; "
                            + "; ".join(msg for _, msg in damaged)
                            + " (remove the directory to start over)")
        return None

    def _set_aside(self, damaged, good):
        """Rename the damaged checkpoints' files (model and input state) to ``damaged-ckpt-N.*``
        and point the checkpoint state at ``good`` and the readable ones before it."""
        for prefix, _ in damaged:
            step = checkpoint_step(prefix)
            for d in (self.ckpt_dir, self.input_ckpt_dir):
                for f in glob.glob(os.path.join(d, f"ckpt-{step}.*")):
                    os.replace(f, os.path.join(d, "damaged-" + os.path.basename(f)))
        kept = [p for p in checkpoint_candidates(self.ckpt_dir)
                if checkpoint_step(p) <= checkpoint_step(good)][:self.max_checkpoints][::-1]
        # The CheckpointManager's state file (text CheckpointState); with timestamps, so that
        # the manager deletes these as usual once newer ones are saved.
        lines = [f"model_checkpoint_path: {json.dumps(os.path.basename(good))}"]
        lines += [f"all_model_checkpoint_paths: {json.dumps(os.path.basename(p))}" for p in kept]
        lines += [f"all_model_checkpoint_timestamps: {os.path.getmtime(p + '.index')!r}"
                  for p in kept]
        lines.append("last_preserved_timestamp: 0.0")
        write_text_atomic(os.path.join(self.ckpt_dir, "checkpoint"), "\n".join(lines) + "\n")

    def _load_from_snapshot(self, path):
        if self.load_snapshot_fn is None:
            raise UserError(f"{path}: no snapshot loader configured")
        snap = self.load_snapshot_fn(path)
        for name, dst in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            src = snap.get(name)
            if src is None:
                if name == "G" and snap.get("G_ema") is not None:
                    src = snap["G_ema"]
                else:
                    continue
            copy_matching_variables(src, dst)
        self.log(f"Initialised G, D, G_ema from snapshot {path}")

    def save_checkpoint(self):
        step = int(self.step_var.numpy())
        # The iterator state first: a model checkpoint never exists without its input state.
        os.makedirs(self.input_ckpt_dir, exist_ok=True)
        it_path = self.input_ckpt.write(os.path.join(self.input_ckpt_dir, f"ckpt-{step}"))
        path = self.ckpt_manager.save(checkpoint_number=step)
        # Read both back: a damaged checkpoint can then only come from a crash mid-write (and
        # the next run falls back to the previous one).
        try:
            verify_checkpoint_files(it_path)
            self._ckpt_shapes = self._verify_model_checkpoint(path, step)[0]
        except CheckpointDamaged as e:
            raise UserError(f"checkpoint written at step {step} does not read back: {e}; "
                            "stopped (check the disk); the previous checkpoint is kept") from None
        # Keep the iterator states of the kept model checkpoints only.
        keep = {os.path.basename(p) for p in self.ckpt_manager.checkpoints}
        for f in glob.glob(os.path.join(self.input_ckpt_dir, "ckpt-*")):
            if os.path.basename(f).split(".")[0] not in keep:
                try:
                    os.remove(f)
                except OSError:
                    pass
        if self._tmp_ckpt_dir is not None:
            shutil.rmtree(self._tmp_ckpt_dir, ignore_errors=True)
            os.makedirs(self._tmp_ckpt_dir, exist_ok=True)
        if self._reseed_at_checkpoints:
            self._rebuild_functions()

    # -----------------------------------------------------------------------------------------
    # One step.

    def phases_at(self, step):
        """The phases of step ``step``, in order (reference ``training_loop``): with lazy
        regularisation Gmain, Greg when ``step % G_reg_interval == 0``, Dmain, Dreg when
        ``step % D_reg_interval == 0``; with an interval of None the main loss and the
        regulariser run fused every step (Gboth/Dboth, gain 1, lr/betas not rescaled). A zero
        ``pl_weight``/``r1_gamma`` leaves the main loss only."""
        out = []
        for net, interval, reg_on in (("G", self.G_reg_interval, self.pl_weight != 0),
                                      ("D", self.D_reg_interval, self.r1_gamma != 0)):
            if interval is None:
                out.append(net + ("both" if reg_on else "main"))
            else:
                out.append(net + "main")
                if reg_on and step % interval == 0:
                    out.append(net + "reg")
        return out

    def train_step(self):
        """One batch: the phases, G_ema, counters and the ADA adjustment."""
        step = int(self.step_var.numpy())
        nimg = int(self.nimg_var.numpy())
        if self._pending_batch is not None:  # pulled by run() before it wrote anything
            (real, real_c), self._pending_batch = self._pending_batch, None
        else:
            real, real_c = self._next_batch()
        step_t = tf.constant(step, tf.int64)
        for phase in self.phases_at(step):
            if phase.startswith("G"):
                self._phase_fns[phase](step_t)
            else:
                self._phase_fns[phase](real, real_c, step_t)
        beta = loss_lib.ema_beta(self.batch, nimg, self.ema_kimg, self.ema_rampup)
        self._ema_step(tf.constant(beta, tf.float32))
        self.nimg_var.assign(nimg + self.batch)
        self.step_var.assign(step + 1)
        if self.ada.due(step + 1):
            self.ada.adjust()

    # -----------------------------------------------------------------------------------------
    # The loop (gan/loop.py).

    def prefetch_batch(self):
        """Pull the next input batch now (the loop does this before it writes anything)."""
        if self._pending_batch is None:
            self._pending_batch = self._next_batch()

    def run(self):
        """Train to ``config.schedule.kimg`` with the default tick hooks (``loop.TrainingLoop``)."""
        from histaug_tf.gan import loop as loop_lib

        sch = self.config.schedule
        options = self.config.to_dict()
        hooks = loop_lib.default_hooks(
            snapshot_ticks=sch.snap or None, grid_size=sch.grid, snapshot_fn=self.snapshot_fn,
            metrics_fn=self.metrics_fn, tensorboard=sch.tensorboard)
        loop = loop_lib.TrainingLoop(
            self, total_kimg=sch.kimg, kimg_per_tick=sch.tick,
            checkpoint_ticks=sch.checkpoint_ticks, hooks=hooks, options=options,
            stop_signal=self.stop_signal, stop_check_steps=self.stop_check_steps, log=self.log)
        loop.run()
        self.stopped_by_signal = loop.stopped_by_signal
        return self
