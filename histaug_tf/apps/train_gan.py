"""From train_gan's flags to a running ``Trainer``: strategy, the typed ``TrainingConfig``
(flags, manifest and preset checked against each other, once), data, networks, augment pipe.

``launch(**flags)`` is the one call behind ``python -m histaug_tf.train_gan``.
"""
from __future__ import annotations

import json
import os

from histaug_tf.common import UserError
from histaug_tf.gan.config import SECTION_OF, SECTIONS, TrainingConfig, jit_phase_set

AUG_MODES = ("ada", "noaug", "fixed")

# --flips: random transforms of the training images (make_dataset's flips/rot90). "x" is the
# reference's --mirror; "all" (the dihedral group: x/y flips and 90° rotations) suits histology,
# whose patches have no preferred orientation.
FLIP_MODES = {
    "none": dict(flips=False, rot90=False),
    "x": dict(flips="horizontal", rot90=False),
    "xy": dict(flips=True, rot90=False),
    "all": dict(flips=True, rot90=True),
}


def _pow2(n):
    return n >= 4 and (n & (n - 1)) == 0


def resolve_config(*, data, outdir, cfg="auto", resolution=None, resize="crop", mirror=False,
                    flips=None, batch_gpu=None, cond=False, class_filter=None, batch=None,
                    kimg=None, tick=4.0, snap=50, gamma=None, aug="ada", p=None, target=0.6,
                    augpipe="bgc", ada_kimg=500.0, strategy="auto", jit=False, jit_phases="auto",
                    mixed_precision=None, seed=0, metrics=(), metrics_kimg=None, resume=None,
                    freezed=0, deterministic=False,
                    shuffle_buffer=10000, checkpoint_ticks=1, noise_mode="random",
                    input_sharding="file", num_replicas=1, ema_kimg=None, lr=None,
                    style_mixing=None, pl_weight=None, grid=(8, 4), tensorboard=True,
                    inception_weights=None, vgg16_weights=None, verify=False):
    """Validate the flags against each other, the dataset's manifest and the preset; return the
    run's ``TrainingConfig`` (written to ``training_options.json``). Keywords are train_gan's flags;
    ``num_replicas`` is the strategy's replica count. Reads only the dataset's manifest (and with
    ``verify`` every shard, for its sha256).

    The resolution is decided here, once: ``--resolution`` or the dataset's (square, power of
    two), checked against the stored size and ``--resize``; the preset's networks are built for it
    and the input pipeline crops/resizes/pads to it (``data.resolution`` equals
    ``G_kwargs['img_resolution']`` and ``D_kwargs['img_resolution']``)."""
    from histaug_tf.data.manifest import load_manifest
    from histaug_tf.data.pipeline import dataset_info
    from histaug_tf.gan.presets import get_preset

    if not data:
        raise UserError("--data: required (a dataset directory from prepare_data or subset)")
    if not outdir:
        raise UserError("--outdir: required")
    try:
        jit_phase_set(jit_phases)
    except ValueError as e:
        raise UserError(f"--jit_phases={jit_phases}: {e}") from None
    # Every shard present with its recorded size (--verify: and its sha256).
    load_manifest(data, check="sha256" if verify else "size")
    info = dataset_info(data)
    h, w, ch = (int(v) for v in info["image_shape"])
    if resolution is None:
        if h != w or not _pow2(h):
            raise UserError(f"{data}: images are {h}x{w}, not a square power of two; pass "
                            f"--resolution (e.g. 64) and --resize=crop|resize|pad")
        resolution = h
    resolution = int(resolution)
    if not _pow2(resolution) or resolution < 8:
        raise UserError(f"--resolution={resolution}: must be a power of two >= 8")
    if resize not in ("crop", "resize", "pad"):
        raise UserError(f"--resize={resize}: expected crop, resize or pad")
    if flips is None:
        flips = "x" if mirror else "none"
    elif flips not in FLIP_MODES:
        raise UserError(f"--flips={flips}: expected one of {', '.join(FLIP_MODES)}")
    elif mirror and flips != "x":
        raise UserError(f"--mirror (= --flips=x) conflicts with --flips={flips}; pass one of them")
    if (resize == "crop" and resolution > min(h, w)) or (resize == "pad" and resolution < max(h, w)):
        raise UserError(f"{data}: cannot {resize} {h}x{w} images to --resolution={resolution}; "
                        f"use --resize={'pad' if resize == 'crop' else 'crop'} or --resize=resize")
    if aug not in AUG_MODES:
        raise UserError(f"--aug={aug}: expected one of {', '.join(AUG_MODES)}")
    if aug == "fixed" and p is None:
        raise UserError("--aug=fixed needs --p")
    if p is not None and not 0 <= float(p) <= 1:
        raise UserError(f"--p={p}: must be in [0, 1]")
    num_classes = len(info["label_names"])
    counts = info["class_counts"].get("train")
    if counts is None:
        raise UserError(f"{data}: no 'train' split")
    if len(counts) != num_classes:
        raise UserError(f"{os.path.join(data, 'manifest.json')}: {num_classes} label names but "
                        f"{len(counts)} train class counts")
    if cond and num_classes < 2:
        raise UserError(f"--cond: {data} has {num_classes} class(es) "
                        f"({', '.join(info['label_names']) or 'no labels'}); a conditional GAN "
                        "needs at least 2")
    if class_filter is not None:
        class_filter = int(class_filter)
        if not 0 <= class_filter < num_classes:
            raise UserError(f"--class_filter={class_filter}: the dataset has classes "
                            f"0..{num_classes - 1} ({', '.join(info['label_names'])})")
        if cond:
            raise UserError("--cond and --class_filter exclude each other (one class is "
                            "unconditional)")
        if counts[class_filter] == 0:
            raise UserError(f"{data}: class {class_filter} has no training examples")
    c_dim = num_classes if cond else 0
    preset = get_preset(cfg, resolution, gpus=max(int(num_replicas), 1), c_dim=c_dim,
                        img_channels=ch, mixed_precision=mixed_precision)
    if batch is not None:
        preset["batch"] = int(batch)
    _check_batch(preset, cfg, int(num_replicas))
    batch_gpu = _resolve_batch_gpu(preset, batch, batch_gpu, max(int(num_replicas), 1))
    if batch_gpu is not None:
        preset["batch_gpu"] = batch_gpu
    if gamma is not None:
        preset["gamma"] = float(gamma)
        preset["loss_kwargs"]["r1_gamma"] = float(gamma)
    if kimg is not None:
        preset["kimg"] = float(kimg)
    if ema_kimg is not None:
        preset["ema_kimg"] = float(ema_kimg)
    if lr is not None:
        preset["G_lr"] = preset["D_lr"] = float(lr)
    if style_mixing is not None:
        preset["loss_kwargs"]["style_mixing_prob"] = float(style_mixing)
    if pl_weight is not None:
        preset["loss_kwargs"]["pl_weight"] = float(pl_weight)
    ema_rampup = preset["ema_rampup"]
    if resume:
        if not os.path.exists(resume):
            raise UserError(f"--resume={resume}: no such snapshot")
        ada_kimg = 100.0   # reference: ADA reacts faster at the beginning of transfer learning
        ema_rampup = None  # reference: no EMA ramp-up when resuming from a snapshot
    if freezed and int(freezed) < 0:
        raise UserError(f"--freezed={freezed}: must be >= 0")
    if metrics:  # refuse metrics without the weights they need, before training starts
        from histaug_tf.metrics.compute import check_metric_options
        w = check_metric_options(metrics, inception_weights, vgg16_weights)
        inception_weights, vgg16_weights = w["inception_weights"], w["vgg16_weights"]
    lk = preset["loss_kwargs"]
    opt = preset["G_opt_kwargs"]
    assert preset["G_kwargs"]["img_resolution"] == preset["D_kwargs"]["img_resolution"] == resolution
    return TrainingConfig.from_flat(
        outdir=os.path.abspath(outdir), preset=preset,
        # data
        data=os.path.abspath(data), resolution=resolution, resize=resize, flips=flips,
        mirror=bool(mirror), class_filter=class_filter, shuffle_buffer=int(shuffle_buffer),
        input_sharding=input_sharding, label_names=info["label_names"], class_counts=counts,
        image_shape=[h, w, ch],
        # networks
        cfg=cfg, cond=bool(cond), c_dim=c_dim, G_kwargs=preset["G_kwargs"],
        D_kwargs=preset["D_kwargs"], mixed_precision=bool(preset.get("mixed_precision", False)),
        freezed=int(freezed or 0), noise_mode=noise_mode, resume=resume,
        # loss and optimizers
        gamma=float(preset["gamma"]), pl_weight=float(lk["pl_weight"]),
        pl_batch_shrink=int(lk["pl_batch_shrink"]), pl_decay=float(lk["pl_decay"]),
        style_mixing=float(lk["style_mixing_prob"]), G_reg_interval=preset["G_reg_interval"],
        D_reg_interval=preset["D_reg_interval"], G_lr=float(preset["G_lr"]),
        D_lr=float(preset["D_lr"]), betas=tuple(opt.get("betas", (0.0, 0.99))),
        eps=float(opt.get("eps", 1e-8)),
        # augmentation
        aug=aug, augpipe=augpipe, p=float(p) if p is not None else 0.0,
        target=float(target) if aug == "ada" else None, ada_kimg=float(ada_kimg),
        # schedule
        kimg=float(preset["kimg"]), tick=float(tick), snap=int(snap) if snap else 0,
        checkpoint_ticks=int(checkpoint_ticks), batch=int(preset["batch"]), batch_gpu=batch_gpu,
        ema_kimg=float(preset["ema_kimg"]), ema_rampup=ema_rampup, seed=int(seed),
        deterministic=bool(deterministic), grid=tuple(grid), tensorboard=bool(tensorboard),
        # distribution
        strategy=strategy, jit=bool(jit), jit_phases=str(jit_phases or "auto"),
        num_replicas=int(num_replicas),
        # metrics
        metrics=tuple(metrics or ()), metrics_kimg=metrics_kimg,
        inception_weights=inception_weights or None, vgg16_weights=vgg16_weights or None)


def _check_batch(preset, cfg, num_replicas):
    """The global batch splits evenly over the replicas, and each replica's batch into
    minibatch-std groups (D's epilogue reshapes it to [group, batch/group, ...])."""
    batch = int(preset["batch"])
    n = max(int(num_replicas), 1)
    if batch <= 0:
        raise UserError(f"--batch={batch}: must be positive")
    if batch % n:
        raise UserError(f"--batch={batch} is not divisible by {n} replicas; use a multiple "
                        f"of {n}")
    rb = batch // n
    group = preset["D_kwargs"].get("epilogue_kwargs", {}).get("mbstd_group_size")
    if group and rb % min(int(group), rb):
        raise UserError(f"--batch={batch}: the per-replica batch {rb} is not a multiple of the "
                        f"minibatch-std group size {group} of --cfg={cfg}; use a multiple of "
                        f"{int(group) * n}")
    lk = preset["loss_kwargs"]
    if lk["pl_weight"] and rb // int(lk["pl_batch_shrink"]) < 1:
        raise UserError(f"--batch={batch}: the per-replica batch {rb} is too small for the path "
                        f"length regularisation (pl_batch_shrink={lk['pl_batch_shrink']})")


# Options that fix the networks' shapes and the data a run trains on: a rerun in the same
# --outdir must keep them (anything else, e.g. --kimg, may change).
RUN_IDENTITY = ("cfg", "resolution", "cond", "c_dim", "label_names", "image_channels",
                "class_filter")


def _identity(options):
    """RUN_IDENTITY of a ``training_options.json``: the sectioned config (fields of this version
    only; one of the wrong type: ValueError), or the flat options dict that versions before the
    typed config wrote."""
    if not all(isinstance(options.get(sec), dict) for sec in SECTIONS):  # flat: the keys it has
        out = {k: options[k] for k in RUN_IDENTITY if k in options}
        if isinstance(options.get("image_shape"), list) and options["image_shape"]:
            out["image_channels"] = options["image_shape"][-1]
        return out
    known = {sec: {k: v for k, v in options[sec].items() if SECTION_OF.get(k) == sec}
             for sec in SECTIONS}
    c = TrainingConfig.from_dict(dict(options, **known))
    return {"cfg": c.networks.cfg, "resolution": c.data.resolution, "cond": c.networks.cond,
            "c_dim": c.networks.c_dim, "label_names": list(c.data.label_names),
            "image_channels": (list(c.data.image_shape) or [None])[-1],
            "class_filter": c.data.class_filter}


def check_rerun(config):
    """When ``config.outdir`` already holds a run, its ``training_options.json`` (read back) must
    agree with ``config`` on ``RUN_IDENTITY``; otherwise UserError naming the file and the
    differences (nothing in the run directory is touched)."""
    path = os.path.join(config.outdir, "training_options.json")
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read ({e}); use a new --outdir") from None
    try:
        was = _identity(old)
    except ValueError as e:
        raise UserError(f"{path}: cannot be read ({e}); use a new --outdir") from None
    now = _identity(config.to_dict())
    flag = {"c_dim": "class count", "label_names": "dataset label names",
            "image_channels": "dataset image channels"}
    diff = [f"{flag.get(k, '--' + k)}: run {json.dumps(was[k])}, now {json.dumps(now[k])}"
            for k in RUN_IDENTITY if k in was and was[k] != now[k]]
    if diff:
        raise UserError(f"{path}: this run was made with other options ({'; '.join(diff)}); "
                        "rerun with the run's options, or use a new --outdir")


def _resolve_batch_gpu(preset, batch, batch_gpu, replicas):
    """Samples per replica and round. Default as the reference's train.py: the preset's
    ``batch_gpu`` (batch / the preset's GPU count: e.g. paper256 on one GPU runs 8 rounds of 8),
    or the per-replica batch when --batch is given; at most the per-replica batch."""
    B = int(preset["batch"])
    if B < 1 or B % replicas:
        return None  # launch() reports the batch/replica mismatch
    per_replica = B // replicas
    if batch_gpu is None:
        bg = per_replica if batch is not None else min(int(preset["batch_gpu"]), per_replica)
        bg = bg if per_replica % bg == 0 else per_replica
    else:
        bg = int(batch_gpu)
        if bg < 1 or per_replica % bg:
            raise UserError(f"--batch_gpu={batch_gpu}: must divide the per-replica batch "
                            f"{per_replica} (--batch={B} over {replicas} replica(s))")
    mbstd = preset.get("mbstd_group")
    if mbstd and bg % min(int(mbstd), bg):
        raise UserError(f"--batch_gpu={bg} (samples per replica and round): not a multiple of "
                        f"the minibatch-std group size {mbstd} of --cfg={preset['cfg']}")
    return bg


def make_input_fn(data_config):
    """``input_fn(num_workers, worker_index, worker_batch, seed)`` for the Trainer: the training
    split of a ``DataConfig`` at its resolution in [-1, 1], with its random transforms
    (``flips``)."""
    from histaug_tf.data.pipeline import make_dataset
    dc = data_config

    def input_fn(nw, wi, worker_batch, seed):
        common = dict(resolution=dc.resolution, resize_mode=dc.resize,
                      pixel_range=(-1, 1), shuffle_buffer=dc.shuffle_buffer, repeat=True,
                      drop_remainder=True, seed=seed, class_filter=dc.class_filter,
                      **FLIP_MODES[dc.flips])
        if dc.input_sharding == "batch" or nw == 1:
            ds = make_dataset(dc.data, "train", batch_size=worker_batch * nw, **common)
            if nw > 1:
                ds = ds.map(lambda x, y: (x[wi * worker_batch:(wi + 1) * worker_batch],
                                          y[wi * worker_batch:(wi + 1) * worker_batch]))
            return ds
        return make_dataset(dc.data, "train", batch_size=worker_batch, num_workers=nw,
                            worker_index=wi, **common)
    return input_fn


def networks_builder(networks_config, seed=None):
    """``fn() -> (G, D, G_ema)``: the networks of a ``NetworksConfig`` (or a preset dict with
    ``G_kwargs``/``D_kwargs``), G_ema starting as a copy of G. With ``seed`` their initial
    weights are a function of it, as in the reference (which seeds torch with the run's seed):
    Keras draws each initializer's seed from Python's ``random``, seeded here for the build and
    restored after it."""
    import random

    from histaug_tf.gan import networks

    nc = networks_config
    G_kwargs = nc["G_kwargs"] if isinstance(nc, dict) else nc.G_kwargs
    D_kwargs = nc["D_kwargs"] if isinstance(nc, dict) else nc.D_kwargs

    def build():
        state = random.getstate()
        if seed is not None:
            random.seed(int(seed))
        try:
            G = networks.Generator(**G_kwargs)
            D = networks.Discriminator(**D_kwargs)
            G_ema = networks.Generator(**G_kwargs)
        finally:
            random.setstate(state)
        networks.copy_matching_variables(G, G_ema)
        return G, D, G_ema

    return build


def launch(**flags):
    """Run (or resume) one training run; returns the Trainer after it finishes."""
    import tensorflow as tf

    from histaug_tf import distribute

    if flags.get("deterministic"):
        tf.config.experimental.enable_op_determinism()
    strategy = distribute.get_strategy(flags.get("strategy", "auto"))
    # After get_strategy: multi-worker strategies install a SIGTERM handler of their own.
    try:
        stop_signal = distribute.StopSignal()
    except ValueError:  # not the main thread (e.g. launched from a worker thread): no handler
        stop_signal = None
    num_workers, worker_index = distribute.worker_info(strategy)
    chief = distribute.is_chief(strategy)
    config = resolve_config(num_replicas=strategy.num_replicas_in_sync, **flags)
    distribute.per_replica_batch(config.schedule.batch, strategy)  # clear error if not divisible
    check_rerun(config)
    if config.schedule.deterministic:
        import keras
        keras.utils.set_random_seed(config.schedule.seed)

    try:
        return _train(strategy, config, stop_signal, num_workers, worker_index, chief)
    except tf.errors.DataLossError as e:  # a damaged input shard (checksums are checked on read)
        from histaug_tf.data.manifest import explain_read_error
        raise explain_read_error([config.data.data], e) from None


def _train(strategy, config, stop_signal, num_workers, worker_index, chief):
    from histaug_tf import distribute
    from histaug_tf.gan import augment
    from histaug_tf.gan import snapshot as snapshot_lib
    from histaug_tf.gan.trainer import Trainer

    aug = config.augment
    make_pipe = None
    if aug.aug != "noaug":
        make_pipe = lambda: augment.make_augment_pipe(  # noqa: E731
            aug.augpipe, seed=config.schedule.seed + 1000 * worker_index)
    trainer = Trainer(
        config, strategy=strategy,
        build_networks=networks_builder(config.networks, config.schedule.seed),
        input_fn=make_input_fn(config.data), make_augment_pipe=make_pipe,
        snapshot_fn=lambda path, G_ema, G, D, md: snapshot_lib.save_snapshot(
            path, G_ema, G=G, D=D, metadata=md),
        load_snapshot_fn=snapshot_lib.load_snapshot,
        metrics_fn=_metrics_hook(config) if config.metrics.metrics else None,
        stop_signal=stop_signal, num_workers=num_workers, worker_index=worker_index,
        is_chief=chief)
    if chief:
        sch = config.schedule
        print(f"{distribute.describe(strategy)}; {config.networks.cfg} at "
              f"{config.data.resolution}px, batch {sch.batch} (rounds of {trainer.batch_gpu} per "
              f"replica), flips {config.data.flips}, augment {aug.aug}", flush=True)
    trainer.run()
    if trainer.stopped_by_signal is not None:
        # Not finished: a non-zero status tells schedulers (and the study) to run it again.
        raise SystemExit(128 + int(trainer.stopped_by_signal))
    return trainer


def _metrics_hook(config):
    """``fn(G_ema, snapshot_path, kimg) -> {name: value}`` computing ``config.metrics`` with
    ``histaug_tf.metrics.training_metrics``."""
    from histaug_tf.apps.generate import Synthesizer
    from histaug_tf.metrics import training_metrics as fn

    mc, dc = config.metrics, config.data
    state = {"last": None}

    def hook(G_ema, snapshot_path, kimg):
        # At network snapshots; with --metrics_kimg only when another metrics_kimg has passed.
        every = float(mc.metrics_kimg or 0)
        if every > 0:
            bucket = int(kimg // every)
            if (state["last"] is not None and bucket == state["last"]
                    and kimg < config.schedule.kimg):
                return {}
            state["last"] = bucket
        del snapshot_path  # the hook's signature is the trainer's; the metrics need G only
        # NVlabs' metrics during training: random per-layer noise, no truncation.
        gen = Synthesizer(G=G_ema, noise_mode="random", batch_size=64)
        return fn(metrics=list(mc.metrics), generator=gen, data_dir=dc.data,
                  resolution=dc.resolution, resize_mode=dc.resize, class_filter=dc.class_filter,
                  inception_weights=mc.inception_weights, vgg16_weights=mc.vgg16_weights,
                  kimg=kimg)
    return hook
