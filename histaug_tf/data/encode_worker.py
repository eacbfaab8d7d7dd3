"""Encoding jobs run in worker processes (and inline with --workers=0).

Kept free of TensorFlow (only NumPy, Pillow and ``schema``) so that the spawned workers start fast
and stay small. A job is a plain tuple; ``process(job)`` returns a ``dict``:

    {"records": [(split, serialized_example, label, key, group), ...],
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
        recs.append((split, ser, int(lab), key, grp))
    return {"records": recs, "errors": [], "notes": {}}


SCALED_16BIT = "16bit_scaled_to_8bit"          # input_report counts (see to_rgb8)
ALPHA_COMPOSITED = "alpha_composited_on_white"


def to_rgb8(im, notes=None) -> np.ndarray:
    """uint8 HWC RGB array of a loaded Pillow image, without silent damage.

    16-bit samples are scaled to 8 bits (``round(v * 255 / 65535)``; Pillow's own conversion of a
    16-bit grey image clips every value above 255 to white). An alpha channel is composited on
    white, the slide background (``round(rgb * a + 255 * (1 - a))``, ``a = alpha / 255``), instead
    of being dropped. ``notes`` (a dict) counts the images so treated under ``SCALED_16BIT`` and
    ``ALPHA_COMPOSITED`` (only images with a pixel that is not fully opaque).
    """
    def note(k):
        if notes is not None:
            notes[k] = notes.get(k, 0) + 1

    rawmode = str(getattr(im.tile[0], "args", "") if getattr(im, "tile", None) else "")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{im.mode} image with values outside 0..65535 is not supported")
        g = np.round(a * (255.0 / 65535.0)).astype(np.uint8)
        note(SCALED_16BIT)
        return np.repeat(g[..., None], 3, axis=-1)
    if im.mode == "F":
        raise ValueError("floating-point image is not supported (expected 8- or 16-bit)")
    if ";16" in rawmode:  # 16-bit RGB(A)/LA PNG: Pillow keeps the high byte (a scaling, not a clip)
        note(SCALED_16BIT)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:] / 255.0
        if (alpha < 1).any():
            note(ALPHA_COMPOSITED)
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def load_image_file(path: str, notes=None):
    """uint8 HWC RGB array of an image file (see ``to_rgb8``), or raise ValueError with the problem."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb8(im, notes)
    except Exception as e:  # noqa: BLE001 - any decoder failure is "corrupt image"
        raise ValueError(f"corrupt or unreadable image ({type(e).__name__}: {e})") from None


def _files(job):
    _, encoding, shape, undersized, items = job
    h, w, c = shape
    recs, errors = [], []
    notes = {"undersized_padded": 0, "undersized_dropped": 0, SCALED_16BIT: 0, ALPHA_COMPOSITED: 0}
    for split, path, lab, key, grp in items:
        try:
            img = load_image_file(path, notes)
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
        recs.append((split, ser, int(lab), key, grp))
    return {"records": recs, "errors": errors, "notes": notes}


def _synthetic(job):
    from histaug_tf.data.synthetic_tissue import render_patch

    _, encoding, size, items = job
    recs = []
    for split, seed, lab, key, grp in items:
        img = render_patch(seed, lab, size)
        recs.append((split, schema.make_example(schema.encode_image(img, encoding), lab, key, grp,
                                                "real"), lab, key, grp))
    return {"records": recs, "errors": [], "notes": {}}


def ping():
    return True


def ignore_sigint():
    """Pool initializer: SIGINT is the main process's business (it stops and cleans up)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process(job):
    kind = job[0]
    if kind == "arrays":
        return _arrays(job)
    if kind == "files":
        return _files(job)
    if kind == "synthetic":
        return _synthetic(job)
    raise ValueError(f"unknown job kind {kind!r}")
