"""Encoding jobs run in worker processes (and inline with --workers=0).

Kept free of TensorFlow (only NumPy, Pillow and ``schema``) so that the spawned workers start fast
and stay small. A job is a plain tuple; ``process(job)`` returns a ``dict``:

    {"records": [(split, serialized_example, label, key), ...],
     "errors":  [(path, problem), ...],          # bad inputs (the caller fails or skips them)
     "notes":   {"undersized_padded": n, "undersized_dropped": n}}

Job kinds:
  ("arrays", split, source, encoding, images[N,H,W,C] uint8, labels[N], keys[N], groups[N])
  ("files", encoding, shape(H,W,C), undersized, [(split, path, label, key, group), ...])
  ("synthetic", encoding, size, [(split, seed, label, key, group), ...])
"""
from __future__ import annotations

import numpy as np

from histaug_tf.data import schema

PAD_VALUE = 255  # IDC edge patches lie at the slide border: the missing part is white background


def _arrays(job):
    _, split, source, encoding, images, labels, keys, groups = job
    recs = []
    for img, lab, key, grp in zip(images, labels, keys, groups):
        ser = schema.make_example(schema.encode_image(img, encoding), int(lab), key, grp, source)
        recs.append((split, ser, int(lab), key))
    return {"records": recs, "errors": [], "notes": {}}


def load_image_file(path: str):
    """uint8 HWC RGB array of an image file, or raise ValueError with the problem."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - any decoder failure is "corrupt image"
        raise ValueError(f"corrupt or unreadable image ({type(e).__name__}: {e})") from None


def _files(job):
    _, encoding, shape, undersized, items = job
    h, w, c = shape
    recs, errors = [], []
    notes = {"undersized_padded": 0, "undersized_dropped": 0}
    for split, path, lab, key, grp in items:
        try:
            img = load_image_file(path)
        except ValueError as e:
            errors.append((path, str(e)))
            continue
        ih, iw = img.shape[:2]
        if ih > h or iw > w:
            errors.append((path, f"image is {iw}x{ih}, expected {w}x{h}"))
            continue
        if ih < h or iw < w:
            if undersized == "drop":
                notes["undersized_dropped"] += 1
                continue
            if undersized == "pad":
                padded = np.full((h, w, c), PAD_VALUE, np.uint8)
                padded[:ih, :iw] = img
                img = padded
                notes["undersized_padded"] += 1
            else:
                errors.append((path, f"image is {iw}x{ih}, expected {w}x{h}"))
                continue
        ser = schema.make_example(schema.encode_image(img, encoding), int(lab), key, grp, "real")
        recs.append((split, ser, int(lab), key))
    return {"records": recs, "errors": errors, "notes": notes}


def _synthetic(job):
    from histaug_tf.data.synthetic_tissue import render_patch

    _, encoding, size, items = job
    recs = []
    for split, seed, lab, key, grp in items:
        img = render_patch(seed, lab, size)
        recs.append((split, schema.make_example(schema.encode_image(img, encoding), lab, key, grp,
                                                "real"), lab, key))
    return {"records": recs, "errors": [], "notes": {}}


def ping():
    return True


def process(job):
    kind = job[0]
    if kind == "arrays":
        return _arrays(job)
    if kind == "files":
        return _files(job)
    if kind == "synthetic":
        return _synthetic(job)
    raise ValueError(f"unknown job kind {kind!r}")
