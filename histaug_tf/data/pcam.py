"""PatchCamelyon reader: the six ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` files.

Either ``.h5`` or ``.h5.gz`` (as distributed). A ``.h5.gz`` is stream-decompressed to a temporary
file (in ``tmp_dir``) just before its split is converted and deleted right after; a truncated or
corrupt gzip stream is reported as such. ``x`` is read in chunks of rows, never whole (train_x is
7.2 GB). Example key ``pcam/<split>/<row:06d>``, group = split name.
"""
from __future__ import annotations

import gzip
import os
import shutil
import zlib

import numpy as np
from absl import logging

from histaug_tf.common import UserError

SPLITS = ("train", "valid", "test")
IMAGE_SHAPE = (96, 96, 3)
LABEL_NAMES = ("normal", "tumour")


def split_file(src: str, split: str, xy: str) -> str:
    """Path of the .h5 (preferred) or .h5.gz file of a split, or UserError when neither exists."""
    base = os.path.join(src, f"camelyonpatch_level_2_split_{split}_{xy}.h5")
    for p in (base, base + ".gz"):
        if os.path.isfile(p):
            return p
    raise UserError(f"{base}: missing split file (neither .h5 nor .h5.gz exists)")


def gunzip_to(path: str, dst: str, bufsize: int = 1 << 22) -> None:
    """Stream-decompress ``path`` to ``dst``; UserError naming ``path`` on truncation/corruption."""
    try:
        with gzip.open(path, "rb") as fi, open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo, bufsize)
    except EOFError as e:
        raise UserError(f"{path}: truncated gzip file ({e})") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: corrupt gzip file ({e})") from None


class _Opened:
    """An .h5 file (decompressed first when gzipped) and its single dataset, closed on exit."""

    def __init__(self, path, key, tmp_dir):
        self.path, self.key, self.tmp_dir = path, key, tmp_dir
        self.local = None
        self.f = None

    def __enter__(self):
        import h5py

        local = self.path
        if self.path.endswith(".gz"):
            os.makedirs(self.tmp_dir, exist_ok=True)
            local = os.path.join(self.tmp_dir, os.path.basename(self.path)[:-3])
            self.local = local
            logging.info("decompressing %s to %s", self.path, local)
            gunzip_to(self.path, local)
        try:
            self.f = h5py.File(local, "r")
        except OSError as e:
            self.__exit__(None, None, None)
            raise UserError(f"{self.path}: not a readable HDF5 file ({e})") from None
        keys = sorted(self.f.keys())
        if keys != [self.key]:
            self.__exit__(None, None, None)
            raise UserError(f"{self.path}: unexpected HDF5 keys {keys} (expected only '{self.key}')")
        return self.f[self.key]

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()
            self.f = None
        if self.local and os.path.exists(self.local):
            os.remove(self.local)
        return False


class PcamSource:
    name = "pcam"
    image_shape = IMAGE_SHAPE
    label_names = LABEL_NAMES
    check_keys = False  # keys are unique by construction (split, row): no set of all keys

    def __init__(self, src: str, tmp_dir: str, splits=SPLITS, chunk: int = 256):
        if not os.path.isdir(src):
            raise UserError(f"{src}: --src directory does not exist")
        self.src = src
        self.tmp_dir = tmp_dir
        self.splits = tuple(splits)
        self.chunk = int(chunk)
        # Every split file must exist before anything is written.
        self.files = {s: (split_file(src, s, "x"), split_file(src, s, "y")) for s in self.splits}
        self.report = {}
        self.provenance = {
            "source": "pcam",
            "src": os.path.abspath(src),
            "files": {s: [os.path.basename(p) for p in xy] for s, xy in self.files.items()},
            "file_sizes": {os.path.basename(p): os.path.getsize(p)
                           for xy in self.files.values() for p in xy},
        }
        self.total = None  # known per split once opened

    def jobs(self, encoding, progress_total=None):
        for split in self.splits:
            xp, yp = self.files[split]
            with _Opened(yp, "y", self.tmp_dir) as y:
                if y.ndim < 1 or any(d != 1 for d in y.shape[1:]):
                    raise UserError(f"{yp}: key 'y' has shape {y.shape}, expected (N, 1, 1, 1)")
                if not np.issubdtype(y.dtype, np.integer):
                    raise UserError(f"{yp}: key 'y' has dtype {y.dtype}, expected integers")
                labels = np.asarray(y[...]).reshape(-1).astype(np.int64)  # N small ints: fine
            bad = np.flatnonzero((labels != 0) & (labels != 1))
            if bad.size:
                raise UserError(f"{yp}: label {labels[bad[0]]} at row {bad[0]} (expected 0 or 1)")
            with _Opened(xp, "x", self.tmp_dir) as x:
                if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
                    raise UserError(f"{xp}: key 'x' has shape {x.shape}, expected (N, 96, 96, 3)")
                if x.dtype != np.uint8:
                    raise UserError(f"{xp}: key 'x' has dtype {x.dtype}, expected uint8")
                n = x.shape[0]
                if n != len(labels):
                    raise UserError(f"{xp}: {n} images but {os.path.basename(yp)} has "
                                    f"{len(labels)} labels")
                if progress_total is not None:
                    progress_total(split, n)
                for start in range(0, n, self.chunk):
                    stop = min(n, start + self.chunk)
                    try:
                        imgs = x[start:stop]
                    except (OSError, ValueError) as e:
                        raise UserError(f"{xp}: cannot read rows {start}:{stop} ({e})") from None
                    keys = [f"pcam/{split}/{i:06d}" for i in range(start, stop)]
                    yield ("arrays", split, "real", encoding, imgs, labels[start:stop], keys,
                           [split] * (stop - start))
