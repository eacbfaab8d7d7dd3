"""Apply a trained classifier to new patches: the library behind ``python -m histaug_tf.predict``.

The model is a ``train_classifier`` run's ``model.keras`` (``models.export_model``: uint8 RGB
images at the training data's stored size in, P(positive) out, its input mapping inside), or any
such ``.keras`` file. Input is a dataset split (``data``, ``split``) — an external test set
prepared with ``prepare_data`` — or a folder of image files (``images``). Writes ``out`` (CSV, one
row per patch: ``key, group, p_positive[, label, label_name]``) and beside it ``<out>.json``: the
counts, every skipped file with its reason (unreadable, grayscale, wrong size) and, when the
labels are known, the same metrics as ``train_classifier``'s ``metrics.json`` (AUC with its
intervals, per-class metrics at 0.5, calibration). Bad input files are counted, never a traceback.
"""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from histaug_tf.common import UserError, write_json_atomic, write_text_atomic

GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def resolve_model(path: str) -> str:
    """The ``.keras`` file of a run directory (its ``model.keras``) or the file itself."""
    p = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise UserError(f"{p}: no classifier model (train_classifier writes model.keras; runs "
                        "made before it have only best.weights.h5: train again)")
    return p


def _run_label_names(model_path: str):
    opts = os.path.join(os.path.dirname(model_path), "options.json")
    try:
        with open(opts, encoding="utf-8") as f:
            train = json.load(f).get("train_data")
        with open(os.path.join(train, "manifest.json"), encoding="utf-8") as f:
            return list(json.load(f)["label_names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _image_files(root: str):
    from histaug_tf.data.folder import EXTENSIONS
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        out += [os.path.join(d, f) for f in sorted(files)
                if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return out


def _load_images(root: str, shape):
    """(images uint8 [N, H, W, C], relative paths, skipped [{file, problem}])."""
    from PIL import Image
    from histaug_tf.data.encode_worker import load_image_file
    if not os.path.isdir(root):
        raise UserError(f"{root}: --images directory does not exist")
    imgs, names, skipped = [], [], []
    for p in _image_files(root):
        rel = os.path.relpath(p, root)
        try:
            with Image.open(p) as im:
                mode = im.mode
            if mode in GRAYSCALE_MODES:
                skipped.append({"file": rel, "problem": f"grayscale image (mode {mode}); the "
                                                        "model takes RGB"})
                continue
            img = load_image_file(p)
        except Exception as e:  # noqa: BLE001 — any unreadable file is counted, not raised
            skipped.append({"file": rel, "problem": f"unreadable ({type(e).__name__}: "
                                                    f"{str(e).splitlines()[0][:120]})"})
            continue
        if img.shape != tuple(shape):
            skipped.append({"file": rel, "problem": f"image is {img.shape[1]}x{img.shape[0]}x"
                                                    f"{img.shape[2]}, the model takes "
                                                    f"{shape[1]}x{shape[0]}x{shape[2]}"})
            continue
        imgs.append(img)
        names.append(rel)
    if not imgs:
        raise UserError(f"{root}: no usable image ({len(skipped)} skipped, e.g. "
                        f"{skipped[0]['file']}: {skipped[0]['problem']})" if skipped
                        else f"{root}: no image files")
    return np.stack(imgs), names, skipped


def predict(model: str, out: str, *, data: str | None = None, split: str = "test",
            images: str | None = None, batch_size: int = 64, n_boot: int = 1000,
            seed: int = 0) -> dict:
    """Predict, write ``out`` and ``<out>.json``; return the report dict."""
    import keras
    from histaug_tf.classifier import evaluate as ev

    if (data is None) == (images is None):
        raise UserError("give exactly one of --data (a dataset directory) and --images (a folder)")
    if not out:
        raise UserError("--out is required")
    path = resolve_model(model)
    try:
        net = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: cannot load the model ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None
    shape = tuple(int(v) for v in net.input_shape[1:])
    label_names = _run_label_names(path)
    skipped = []
    labels = groups = None
    if data is not None:
        from histaug_tf.data.manifest import load_manifest
        from histaug_tf.data.pipeline import make_dataset
        man = load_manifest(data)
        if tuple(man["image_shape"]) != shape:
            raise UserError(f"{data}: images are {man['image_shape']}, the model {path} takes "
                            f"{list(shape)}")
        if split not in man["splits"]:
            raise UserError(f"{data}: has no split {split!r} (splits: "
                            f"{', '.join(sorted(man['splits']))})")
        if label_names and list(man["label_names"]) != label_names:
            raise UserError(f"{data}/manifest.json: label names {man['label_names']} differ from "
                            f"the model's training labels {label_names}")
        label_names = list(man["label_names"])
        ks, gs, ys, ps = [], [], [], []
        for ex in make_dataset(data, split, pixel_range=None, batch_size=batch_size,
                               with_meta=True):
            ps.append(np.asarray(net(ex["image"], training=False), np.float64)[:, 0])
            ks += [k.decode() for k in ex["key"].numpy()]
            gs += [g.decode() for g in ex["group"].numpy()]
            ys.append(ex["label"].numpy())
        probs, labels, groups = np.concatenate(ps), np.concatenate(ys).astype(np.int64), np.array(gs)
        names = ks
    else:
        x, names, skipped = _load_images(images, shape)
        probs = np.concatenate([np.asarray(net(x[i:i + batch_size], training=False),
                                           np.float64)[:, 0] for i in range(0, len(x), batch_size)])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["key", "group", "p_positive"] + (["label", "label_name"] if labels is not None else [])
    w.writerow(head)
    for i, name in enumerate(names):
        row = [name, groups[i] if groups is not None else "", repr(float(probs[i]))]
        if labels is not None:
            row += [int(labels[i]), label_names[int(labels[i])] if label_names else ""]
        w.writerow(row)
    write_text_atomic(out, buf.getvalue())
    report = {"model": os.path.abspath(path), "input": os.path.abspath(data or images),
              "split": split if data else None, "predicted": len(names),
              "skipped": {"count": len(skipped), "files": skipped},
              "positive_class": label_names[-1] if label_names else None}
    if labels is not None and 0 < labels.sum() < labels.size:
        m = ev.evaluate_scores(labels, probs, n_boot=n_boot, seed=seed,
                               label_names=tuple(label_names), groups=groups)
        m["calibration"] = ev.calibration(labels, probs)
        report["metrics"] = m
    write_json_atomic(os.path.splitext(out)[0] + ".json", report)
    return report
