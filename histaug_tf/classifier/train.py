"""Train a binary patch classifier on real (optionally + synthetic) TFRecords and evaluate it.

``train_classifier(out_dir, train_data, ...)`` is the whole stage; ``python -m
histaug_tf.train_classifier`` is its thin entry. The run directory holds:

* ``options.json`` — the resolved options (written first),
* ``tb/`` — TensorBoard: loss and validation AUC per epoch; the test PR curve and ROC image at the end,
* ``history.json`` — one record per epoch (loss, val_auc, seconds),
* ``best.weights.h5`` — the weights with the best validation AUC so far (early stopping keeps it),
* ``predictions.npz`` — test labels, probabilities of class 1 and keys (for DeLong between runs),
* ``roc.png`` — the test ROC curve,
* ``metrics.json`` — written LAST (atomically): its presence marks a finished run.

Training data: the ``train`` split of ``train_data``; with ``synthetic_data``, its ``train`` split is
mixed in through the pipeline's ``mix`` at ``synthetic_ratio`` (long-run fraction of synthetic
examples), or ``synthetic_count`` synthetic examples are added to the real ones
(ratio = count / (count + real)). An epoch is one pass over the real training examples (plus the
synthetic ones mixed in between). Class imbalance: ``balance='class_weight'`` weights each example by
1 / (K · p(class)) with p the class shares of the (mixed) training stream; ``'sampling'`` draws the
classes with equal probability; ``'none'``. Early stopping watches the validation AUC (exact,
computed on the whole validation split each epoch) and the best weights are restored at the end.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np
from absl import logging

from histaug_tf.classifier import evaluate as ev
from histaug_tf.classifier.stain import colour_augment, parse_augment
from histaug_tf.common import atomic_path, save_npz_atomic, write_json_atomic
from histaug_tf.common import UserError

BALANCE = ("class_weight", "sampling", "none")


# ----------------------------------------------------------------------------- data helpers

def _class_counts(manifest: dict, split: str, data_dir: str, num_classes: int) -> np.ndarray:
    splits = manifest.get("splits", {})
    if split not in splits:
        raise UserError(f"{data_dir}: has no split {split!r} (splits: {', '.join(sorted(splits))})")
    cc = splits[split].get("class_counts")
    names = list(manifest.get("label_names", []))
    out = np.zeros(num_classes, np.int64)
    if isinstance(cc, dict):
        for k, v in cc.items():
            idx = names.index(k) if k in names else int(k)
            out[idx] = int(v)
    elif cc is not None:
        out[:len(cc)] = [int(v) for v in cc]
    else:
        raise UserError(f"{data_dir}/manifest.json: split {split!r} has no class_counts")
    return out


def _image_shape(manifest: dict, resolution: int | None):
    h, w, c = (int(v) for v in manifest["image_shape"])
    if resolution:
        h = w = int(resolution)
    return h, w, c


def _check_mapping(manifest: dict, data_dir: str, resolution, resize_mode: str) -> None:
    """The pipeline's check that ``resize_mode`` can map the stored size to ``resolution``, done
    up front (before the run directory is written) instead of when the dataset is opened."""
    from histaug_tf.data.pipeline import _check_resolution
    h, w = (int(v) for v in manifest["image_shape"][:2])
    _check_resolution(resize_mode, (h, w), (int(resolution),) * 2 if resolution else (h, w),
                      data_dir)


def _unpack(elem):
    """(images, labels, keys-or-None, groups-or-None) from a pipeline element (tuple, or dict
    with_meta)."""
    if isinstance(elem, dict):
        return elem["image"], elem["label"], elem.get("key"), elem.get("group")
    return elem[0], elem[1], None, None


def _train_stream(data_dir, split, *, counts, balance, resolution, resize_mode, augment, seed,
                  num_workers, worker_index, shuffle_buffer, with_meta=False):
    """An infinite, shuffled, unbatched stream of (image, label) from one dataset."""
    import tensorflow as tf
    from histaug_tf.data.pipeline import make_dataset

    common = dict(resolution=resolution, resize_mode=resize_mode, pixel_range=(-1, 1),
                  flips=augment.flips, rot90=augment.flips, shuffle_buffer=shuffle_buffer,
                  repeat=True, seed=seed,
                  num_workers=num_workers, worker_index=worker_index, with_meta=with_meta)
    if balance != "sampling":
        return make_dataset(data_dir, split, **common)
    present = [c for c in range(len(counts)) if counts[c] > 0]
    streams = [make_dataset(data_dir, split, class_filter=c, **common) for c in present]
    return tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(present)] * len(present),
                                                seed=seed)


def training_stream(train_data, train_split, *, real_counts, synthetic_data, synthetic_split,
                    syn_counts, ratio, synthetic_count, seed, balance, resolution, resize_mode,
                    augment, num_workers, worker_index, shuffle_buffer, with_meta=False):
    """The unbatched training stream ``train_classifier`` fits on (it batches it afterwards).

    Real examples of ``train_data``, with ``synthetic_data`` mixed in at ``ratio`` (exactly p of
    every q consecutive elements, ``pipeline.mix``); this worker's file shard of both. With
    ``with_meta`` the same stream yields the pipeline's dicts (key, source, ...) instead of
    (image, label): the seam tests use to measure what is really mixed in. ``augment`` (an
    ``stain.AugmentSpec``): its ``flips`` are applied here, per stream; its colour part is applied
    to whole batches afterwards (``colour_batches``), to real and synthetic images alike.
    """
    import tensorflow as tf
    from histaug_tf.data.pipeline import make_dataset, mix

    augment = parse_augment(augment)
    stream_kw = dict(balance=balance, resolution=resolution, resize_mode=resize_mode,
                     augment=augment, num_workers=num_workers, worker_index=worker_index,
                     shuffle_buffer=shuffle_buffer, with_meta=with_meta)
    ds = _train_stream(train_data, train_split, counts=real_counts, seed=seed, **stream_kw)
    if synthetic_data and ratio > 0:
        if synthetic_count is None:
            sds = _train_stream(synthetic_data, synthetic_split, counts=syn_counts, seed=seed + 1,
                                **stream_kw)
        else:
            # A fixed set of `synthetic_count` examples: the first ones in file order, reshuffled.
            sds = make_dataset(synthetic_data, synthetic_split, resolution=resolution,
                               resize_mode=resize_mode, pixel_range=(-1, 1), flips=False,
                               rot90=False, shuffle_buffer=0, repeat=False,
                               num_workers=num_workers, worker_index=worker_index,
                               with_meta=with_meta)
            # --synthetic_count is global: each worker takes its share of its own file shard
            # (the first workers one more when it does not divide), so N workers together use
            # synthetic_count distinct examples, as one worker does.
            mine = synthetic_count // num_workers + int(worker_index < synthetic_count % num_workers)
            sds = sds.take(mine).repeat()
            if shuffle_buffer:
                sds = sds.shuffle(max(1, min(shuffle_buffer, mine)), seed=seed + 2)
            if augment.flips:
                aug = _augment_fn(seed + 3)
                if with_meta:
                    sds = sds.map(lambda d: dict(d, image=aug(d["image"], d["label"])[0]),
                                  num_parallel_calls=tf.data.AUTOTUNE)
                else:
                    sds = sds.map(aug, num_parallel_calls=tf.data.AUTOTUNE)
        ds = mix(ds, sds, ratio, seed=seed + 4)
    return ds


def colour_batches(ds, augment, seed: int):
    """Apply the colour part of ``augment`` to a batched (x, y, ...) stream: batch i gets the
    stateless parameters of seed pair (seed, i), so a run is reproducible."""
    import tensorflow as tf
    augment = parse_augment(augment)
    if not augment.colour:
        return ds

    def f(i, elem):
        x = colour_augment(elem[0], tf.stack([tf.constant(seed, tf.int64), i]), augment)
        return (x, *elem[1:])
    return tf.data.Dataset.zip((tf.data.Dataset.counter(), ds)).map(
        f, num_parallel_calls=tf.data.AUTOTUNE)


def _eval_dataset(data_dir, split, *, resolution, resize_mode, batch_size):
    from histaug_tf.data.pipeline import make_dataset
    return make_dataset(data_dir, split, resolution=resolution, resize_mode=resize_mode,
                        pixel_range=(-1, 1), shuffle_buffer=0, repeat=False, batch_size=batch_size,
                        with_meta=True)


def predict_probs(model, dataset, with_groups: bool = False):
    """Run ``model`` (logits) over a finite dataset; return (labels, probabilities, keys) and,
    ``with_groups``, the groups (slide/patient) as a fourth array."""
    import tensorflow as tf

    step = getattr(model, "_histaug_predict_step", None)
    if step is None:
        @tf.function(reduce_retracing=True)
        def step(x):
            return tf.sigmoid(tf.cast(model(x, training=False), tf.float32))[:, 0]
        model._histaug_predict_step = step

    ys, ps, ks, gs = [], [], [], []
    for elem in dataset:
        x, y, k, g = _unpack(elem)
        ps.append(step(x).numpy())
        ys.append(np.asarray(y).reshape(-1))
        if k is not None:
            ks.append(np.asarray(k).reshape(-1))
        if g is not None:
            gs.append(np.asarray(g).reshape(-1))
    if not ys:
        raise UserError("evaluation split is empty")
    if ks:
        keys = np.asarray([bytes(k) for k in np.concatenate(ks)], dtype="S")
    else:
        keys = np.arange(sum(len(y) for y in ys)).astype("S")
    out = np.concatenate(ys).astype(np.int64), np.concatenate(ps).astype(np.float64), keys
    if with_groups:
        groups = (np.asarray([bytes(g) for g in np.concatenate(gs)], dtype="S") if gs
                  else np.zeros(len(keys), "S1"))
        return (*out, groups)
    return out


# ----------------------------------------------------------------------------- strategy

def _get_strategy(name: str):
    from histaug_tf.distribute import get_strategy
    return get_strategy(name)


def _is_chief(strategy) -> bool:
    from histaug_tf.distribute import is_chief
    return is_chief(strategy)


def _worker_info(strategy):
    from histaug_tf.distribute import worker_info
    return worker_info(strategy)


# ----------------------------------------------------------------------------- main function

def training_plan(real_counts, syn_counts, ratio: float, batch_size: int, balance: str,
                  min_steps_per_epoch: int = 1):
    """Class weights and steps per epoch of a (mixed) training stream.

    The stream's class shares are p = (1 - ratio) · p_real + ratio · p_synthetic; with
    ``balance='class_weight'`` class c gets weight 1 / (K · p_c) (so every class contributes equally
    to the loss in expectation), otherwise 1. One epoch covers the real examples once:
    ceil(n_real / (1 - ratio) / batch) steps.
    """
    real_counts = np.asarray(real_counts, np.float64)
    syn_counts = np.asarray(syn_counts, np.float64)
    k = real_counts.size
    p_real = real_counts / real_counts.sum()
    p_syn = syn_counts / syn_counts.sum() if syn_counts.sum() else np.zeros(k)
    p_mix = (1 - ratio) * p_real + ratio * p_syn
    if balance == "class_weight":
        class_w = np.where(p_mix > 0, 1.0 / (k * np.maximum(p_mix, 1e-12)), 0.0)
    else:
        class_w = np.ones(k)
    steps = max(int(min_steps_per_epoch), math.ceil(real_counts.sum() / (1 - ratio) / batch_size))
    return class_w, steps


def _atomic_save_weights(model, path):
    with atomic_path(path, ".weights.h5") as tmp:
        os.unlink(tmp)  # Keras creates the file itself
        model.save_weights(tmp)


def train_classifier(out_dir: str, train_data: str, *, synthetic_data: str | None = None,
                     synthetic_ratio: float | None = None, synthetic_count: int | None = None,
                     val_data: str | None = None, test_data: str | None = None,
                     train_split: str = "train", synthetic_split: str = "train",
                     val_split: str = "valid", test_split: str = "test",
                     arch: str = "small_cnn", weights: str = "none", resolution: int | None = None,
                     resize_mode: str = "crop", batch_size: int = 64, epochs: int = 30,
                     min_steps_per_epoch: int = 1, learning_rate: float = 1e-3,
                     weight_decay: float = 1e-4, dropout: float = 0.2, patience: int = 5,
                     balance: str = "class_weight", augment="flips", seed: int = 0,
                     strategy: str = "auto", mixed_precision: bool = False,
                     jit_compile: str = "auto", n_boot: int = 1000, threshold: float = 0.5,
                     shuffle_buffer: int = 2048, overwrite: bool = False,
                     verify: bool = False, verbose: bool = True,
                     fixed_specificity: float = 0.9) -> dict:
    """Train, keep the best-validation-AUC weights, evaluate on the test split. Returns metrics.

    Every input (manifests, splits, label names against the training set's, image shapes) is
    checked before anything is written to ``out_dir``; ``verify`` also checks every shard's sha256
    against its manifest. A damaged shard met while reading is named in the ``UserError``.
    """
    try:
        return _train_classifier(
            out_dir, train_data, synthetic_data=synthetic_data, synthetic_ratio=synthetic_ratio,
            synthetic_count=synthetic_count, val_data=val_data, test_data=test_data,
            train_split=train_split, synthetic_split=synthetic_split, val_split=val_split,
            test_split=test_split, arch=arch, weights=weights, resolution=resolution,
            resize_mode=resize_mode, batch_size=batch_size, epochs=epochs,
            min_steps_per_epoch=min_steps_per_epoch, learning_rate=learning_rate,
            weight_decay=weight_decay, dropout=dropout, patience=patience, balance=balance,
            augment=augment, seed=seed, strategy=strategy, mixed_precision=mixed_precision,
            jit_compile=jit_compile, n_boot=n_boot, threshold=threshold,
            shuffle_buffer=shuffle_buffer, overwrite=overwrite, verify=verify, verbose=verbose,
            fixed_specificity=fixed_specificity)
    except Exception as e:  # noqa: BLE001 - only read errors are translated, the rest re-raised
        from histaug_tf.data.manifest import explain_read_error, is_read_error
        if is_read_error(e):
            raise explain_read_error([train_data, synthetic_data, val_data, test_data], e) from None
        raise


def _train_classifier(out_dir, train_data, *, synthetic_data, synthetic_ratio, synthetic_count,
                      val_data, test_data, train_split, synthetic_split, val_split, test_split,
                      arch, weights, resolution, resize_mode, batch_size, epochs,
                      min_steps_per_epoch, learning_rate, weight_decay, dropout, patience,
                      balance, augment, seed, strategy, mixed_precision, jit_compile, n_boot,
                      threshold, shuffle_buffer, overwrite, verify, verbose,
                      fixed_specificity) -> dict:
    import keras
    import tensorflow as tf

    from histaug_tf.classifier.models import build_model
    from histaug_tf.data.manifest import check_same_label_names, load_manifest

    t_start = time.time()
    augment = parse_augment(augment)
    if balance not in BALANCE:
        raise UserError(f"--balance={balance}: expected one of {', '.join(BALANCE)}")
    if synthetic_ratio is not None and synthetic_count is not None:
        raise UserError("give --synthetic_ratio or --synthetic_count, not both")
    if (synthetic_ratio is not None or synthetic_count is not None) and not synthetic_data:
        raise UserError("--synthetic_ratio/--synthetic_count need --synthetic_data")
    if synthetic_ratio is not None and not 0.0 <= synthetic_ratio < 1.0:
        raise UserError(f"--synthetic_ratio={synthetic_ratio}: must be in [0, 1)")
    if synthetic_count is not None and synthetic_count < 0:
        raise UserError(f"--synthetic_count={synthetic_count}: must be >= 0")
    val_data = val_data or train_data
    test_data = test_data or train_data
    metrics_path = os.path.join(out_dir, "metrics.json")
    if os.path.exists(metrics_path) and not overwrite:
        raise UserError(f"{metrics_path}: run already finished (use --overwrite to redo it)")

    # ---- every input is checked before anything is written to out_dir
    check = "sha256" if verify else "size"
    man = load_manifest(train_data, check=check)
    label_names = tuple(man.get("label_names", ("normal", "tumour")))
    k = len(label_names)
    if k != 2:
        raise UserError(f"{train_data}: binary classifier needs 2 classes, manifest has {k}")
    real_counts = _class_counts(man, train_split, train_data, k)
    n_real = int(real_counts.sum())
    if n_real == 0:
        raise UserError(f"{train_data}: split {train_split!r} is empty")
    image_shape = _image_shape(man, resolution)
    if augment.colour and image_shape[2] != 3:
        raise UserError(f"{train_data}: --augment={augment} needs RGB images, the dataset has "
                        f"{image_shape[2]} channel(s)")
    _check_mapping(man, train_data, resolution, resize_mode)
    for d, sp in ((val_data, val_split), (test_data, test_split)):
        m2 = load_manifest(d, check=check)
        check_same_label_names(man, m2)
        _class_counts(m2, sp, d, k)
        _check_mapping(m2, d, resolution, resize_mode)
        if _image_shape(m2, resolution) != image_shape:
            raise UserError(f"{d}: image shape {m2['image_shape']} differs from {train_data}'s "
                            f"{man['image_shape']}; pass --resolution")

    ratio = 0.0
    syn_counts = np.zeros(k, np.int64)
    if synthetic_data:
        sman = load_manifest(synthetic_data, check=check)
        check_same_label_names(man, sman)
        _check_mapping(sman, synthetic_data, resolution, resize_mode)
        syn_counts = _class_counts(sman, synthetic_split, synthetic_data, k)
        if _image_shape(sman, resolution) != image_shape:
            raise UserError(f"{synthetic_data}: image shape {sman['image_shape']} differs from "
                            f"{train_data}'s {man['image_shape']}; pass --resolution")
        n_syn = int(syn_counts.sum())
        if synthetic_count is not None:
            if synthetic_count > n_syn:
                raise UserError(f"{synthetic_data}: --synthetic_count={synthetic_count} but split "
                                f"{synthetic_split!r} has only {n_syn} examples")
            ratio = synthetic_count / (synthetic_count + n_real)
        else:
            ratio = 0.5 if synthetic_ratio is None else float(synthetic_ratio)

    class_w, steps_per_epoch = training_plan(real_counts, syn_counts, ratio, batch_size, balance,
                                             min_steps_per_epoch)
    opts = dict(out_dir=out_dir, train_data=train_data, synthetic_data=synthetic_data,
                synthetic_ratio=synthetic_ratio, synthetic_count=synthetic_count,
                effective_synthetic_ratio=ratio, val_data=val_data, test_data=test_data,
                train_split=train_split, synthetic_split=synthetic_split, val_split=val_split,
                test_split=test_split, arch=arch, weights=weights, resolution=resolution,
                image_shape=list(image_shape), resize_mode=resize_mode, batch_size=batch_size,
                epochs=epochs, steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                weight_decay=weight_decay, dropout=dropout, patience=patience, balance=balance,
                class_weights=class_w.tolist(), augment=str(augment), seed=seed, strategy=strategy,
                mixed_precision=mixed_precision, jit_compile=jit_compile, n_boot=n_boot,
                threshold=threshold, fixed_specificity=fixed_specificity,
                real_train_class_counts=real_counts.tolist(),
                synthetic_class_counts=syn_counts.tolist())

    strat = _get_strategy(strategy)
    chief = _is_chief(strat)
    num_workers, worker_index = _worker_info(strat)
    if chief:
        if os.path.isdir(out_dir) and overwrite:
            shutil.rmtree(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        write_json_atomic(os.path.join(out_dir, "options.json"), opts)
    keras.utils.set_random_seed(seed)
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    # ---- training stream
    ds = training_stream(train_data, train_split, real_counts=real_counts,
                         synthetic_data=synthetic_data, synthetic_split=synthetic_split,
                         syn_counts=syn_counts, ratio=ratio, synthetic_count=synthetic_count,
                         seed=seed, balance=balance, resolution=resolution,
                         resize_mode=resize_mode, augment=augment, num_workers=num_workers,
                         worker_index=worker_index, shuffle_buffer=shuffle_buffer)
    cw = tf.constant(class_w, tf.float32)

    def to_xyw(x, y):
        y = tf.cast(y, tf.int32)
        return x, tf.cast(y, tf.float32)[:, None], tf.gather(cw, y)

    ds = colour_batches(ds.batch(batch_size, drop_remainder=True), augment,
                        seed=seed * 1000 + 5 + worker_index)
    ds = ds.map(to_xyw, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    val_ds = _eval_dataset(val_data, val_split, resolution=resolution, resize_mode=resize_mode,
                           batch_size=max(batch_size, 64))

    with strat.scope():
        model = build_model(arch, image_shape, weights=weights, dropout=dropout)
        opt = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
        jc = {"auto": "auto", "true": True, "false": False}[str(jit_compile).lower()]
        model.compile(optimizer=opt, loss=keras.losses.BinaryCrossentropy(from_logits=True),
                      weighted_metrics=[keras.metrics.BinaryAccuracy(name="acc", threshold=0.0)],
                      jit_compile=jc)

    best_path = os.path.join(out_dir, "best.weights.h5")
    history: list[dict] = []
    state = {"best": -1.0, "best_epoch": -1, "weights": None, "t": time.time()}

    class ValAUC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            yv, pv, _ = predict_probs(self.model, val_ds)
            auc = ev.roc_auc(yv, pv) if 0 < yv.sum() < len(yv) else float("nan")
            logs["val_auc"] = auc
            improved = auc > state["best"] + 1e-6
            if improved:
                state.update(best=auc, best_epoch=epoch, weights=self.model.get_weights(),
                             val_predictions=(yv, pv))
                if chief:
                    _atomic_save_weights(self.model, best_path)
            now = time.time()
            rec = {"epoch": epoch + 1, "seconds": round(now - state["t"], 2),
                   **{kk: float(v) for kk, v in logs.items()}}
            state["t"] = now
            history.append(rec)
            if verbose:
                logging.info("epoch %d/%d  loss %.4f  val_auc %.4f  best %.4f @%d  (%.1fs)",
                             epoch + 1, epochs, logs.get("loss", float("nan")), auc, state["best"],
                             state["best_epoch"] + 1, rec["seconds"])
            if epoch - state["best_epoch"] >= patience:
                self.model.stop_training = True

    callbacks = [ValAUC()]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(out_dir, "tb"),
                                                     write_graph=False, profile_batch=0))
    model.fit(ds, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=0,
              shuffle=False)
    if state["weights"] is not None:
        model.set_weights(state["weights"])
    train_seconds = time.time() - t_start

    # ---- test
    test_ds = _eval_dataset(test_data, test_split, resolution=resolution, resize_mode=resize_mode,
                            batch_size=max(batch_size, 64))
    yt, pt, kt, gt = predict_probs(model, test_ds, with_groups=True)
    metrics = ev.evaluate_scores(yt, pt, threshold=threshold, n_boot=n_boot, seed=seed,
                                 label_names=label_names, groups=gt)
    if state.get("val_predictions") is not None:
        # The same hard-decision metrics at the threshold that maximises the tumour F1 on the
        # validation data (predictions of the kept epoch): 0.5 is arbitrary for a classifier
        # trained on another class mix (e.g. with synthetic data).
        val_thr = ev.f1_threshold(*state["val_predictions"])
        metrics["at_val_threshold"] = dict(
            ev.classification_metrics(yt, pt, threshold=val_thr, label_names=label_names),
            criterion="max tumour F1 on the validation split")
        spec_thr = ev.threshold_for_specificity(*state["val_predictions"], fixed_specificity)
        metrics["operating_points"] = {
            "val_max_f1": ev.operating_point(yt, pt, val_thr),
            "val_youden": ev.operating_point(yt, pt, ev.youden_threshold(*state["val_predictions"])),
            "val_specificity": dict(ev.operating_point(yt, pt, spec_thr),
                                    target_specificity_on_validation=fixed_specificity)}
    metrics["calibration"] = ev.calibration(yt, pt)
    metrics.update(best_val_auc=state["best"], best_epoch=state["best_epoch"] + 1,
                   epochs_run=len(history), steps_per_epoch=steps_per_epoch,
                   train_seconds=round(train_seconds, 1), effective_synthetic_ratio=ratio,
                   num_real_train=n_real, arch=arch, seed=seed)
    if chief:
        write_json_atomic(os.path.join(out_dir, "history.json"), history)
        save_npz_atomic(os.path.join(out_dir, "predictions.npz"), labels=yt, probs=pt, keys=kt,
                        groups=gt)
        ev.plot_roc(os.path.join(out_dir, "roc.png"), [(arch, yt, pt)], title=os.path.basename(
            os.path.normpath(out_dir)))
        ev.plot_reliability(os.path.join(out_dir, "reliability.png"), [(arch, yt, pt)],
                            title=os.path.basename(os.path.normpath(out_dir)))
        _save_inference_model(model, os.path.join(out_dir, "model.keras"), man["image_shape"],
                              resize_mode)
        _write_test_summaries(os.path.join(out_dir, "tb", "test"), yt, pt, metrics,
                              step=len(history))
        write_json_atomic(metrics_path, metrics)
    if verbose:
        logging.info("test AUC %.4f [%.4f, %.4f]  acc %.4f  bal_acc %.4f  (%s)", metrics["auc"],
                     *metrics["auc_ci"], metrics["accuracy"], metrics["balanced_accuracy"], out_dir)
    if mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
    return metrics


def _save_inference_model(model, path, stored_shape, resize_mode) -> None:
    """``model.keras``: the kept classifier with its input mapping, P(positive) out
    (``models.export_model``), written atomically."""
    from histaug_tf.classifier.models import export_model
    with atomic_path(path, ".keras") as tmp:
        os.unlink(tmp)
        export_model(model, stored_shape, resize_mode).save(tmp)


def _augment_fn(seed):
    import tensorflow as tf

    def f(x, y):
        x = tf.image.random_flip_left_right(x, seed=seed)
        x = tf.image.random_flip_up_down(x, seed=seed + 1)
        k = tf.random.uniform([], 0, 4, dtype=tf.int32, seed=seed + 2)
        return tf.image.rot90(x, k), y
    return f


def load_trained(run_dir: str):
    """(model, options) of a finished ``train_classifier`` run: the architecture of its
    ``options.json`` with the kept ``best.weights.h5`` (inputs: images in [-1, 1] at
    ``options['image_shape']``; output: one logit per image). UserError for anything else."""
    from histaug_tf.classifier.models import build_model
    opts_path = os.path.join(run_dir, "options.json")
    weights = os.path.join(run_dir, "best.weights.h5")
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: classifier run directory not found")
    if read_metrics(run_dir) is None:
        raise UserError(f"{run_dir}: not a finished train_classifier run (no metrics.json)")
    try:
        with open(opts_path, encoding="utf-8") as f:
            opts = json.load(f)
        arch, shape = opts["arch"], tuple(int(v) for v in opts["image_shape"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{opts_path}: unreadable classifier options ({e})") from None
    if not os.path.isfile(weights):
        raise UserError(f"{weights}: not found")
    model = build_model(arch, shape, weights=weights, dropout=float(opts.get("dropout", 0.2)))
    return model, opts


def load_groups(run_dir: str):
    """The test patches' groups of a finished run (in ``load_predictions``' order), or None."""
    with np.load(os.path.join(run_dir, "predictions.npz"), allow_pickle=False) as z:
        return z["groups"] if "groups" in z.files else None


def load_predictions(run_dir: str):
    """(labels, probs, keys) of a finished run's test predictions."""
    with np.load(os.path.join(run_dir, "predictions.npz"), allow_pickle=False) as z:
        return z["labels"], z["probs"], z["keys"]


def _write_test_summaries(log_dir, y, p, metrics, step):
    """Test PR curve (TensorBoard pr_curves plugin) and scalar AUC/accuracy."""
    import tensorflow as tf
    from tensorboard.plugins.pr_curve import summary as pr_summary

    w = tf.summary.create_file_writer(log_dir)
    with w.as_default():
        pb = pr_summary.pb("test_pr_curve", labels=np.asarray(y).astype(bool),
                           predictions=np.clip(np.asarray(p, np.float32), 0, 1), num_thresholds=101)
        tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=step)
        tf.summary.scalar("test_auc", metrics["auc"], step=step)
        tf.summary.scalar("test_accuracy", metrics["accuracy"], step=step)
        tf.summary.scalar("test_balanced_accuracy", metrics["balanced_accuracy"], step=step)
    w.flush()
    w.close()


def read_metrics(run_dir: str) -> dict | None:
    """The metrics.json of a finished run, or None if the run has not finished."""
    p = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)
