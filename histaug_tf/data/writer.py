"""Sharded TFRecord writer: shards under temporary names, renamed when complete, manifest last.

    with DatasetWriter(out_dir, "pcam", (96, 96, 3), encoding="png") as w:
        w.add("train", image_uint8_hwc, label, key="pcam/train/000000", group="train")
    # on clean exit: shards renamed to <split>-00000-of-000NN.tfrecord, then manifest.json written.
    # on an exception: temporary shards deleted, no manifest (the directory is not a dataset).

A process killed at any moment never leaves a manifest: the manifest is written (temp → rename) only
after every shard is complete, and ``overwrite=True`` deletes an old manifest before anything else.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil

import numpy as np

from histaug_tf import __version__
from histaug_tf.common import UserError, file_sha256
from histaug_tf.data import schema
from histaug_tf.data.manifest import MANIFEST_NAME

DEFAULT_SHARD_SIZE = 4096
TMP_PREFIX = ".tmp-"


_SHARD_RE = re.compile(r".+-\d{5}-of-\d{5}\.tfrecord")


def _is_ours(name: str) -> bool:
    """A name this writer creates: the manifest, a shard (``<split>-00000-of-00004.tfrecord``) or a
    temporary file. Any other ``*.tfrecord`` is someone else's."""
    return name == MANIFEST_NAME or bool(_SHARD_RE.fullmatch(name)) or name.startswith(TMP_PREFIX)


def _manifest_is_ours(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "format_version" in m and "splits" in m


def prepare_output_dir(out_dir: str, overwrite: bool) -> bool:
    """Make ``out_dir`` ready for a new dataset. Returns True when this call created it.

    An existing non-empty directory is refused without ``overwrite``. With ``overwrite`` the old
    manifest is removed FIRST (so the directory stops being a dataset at once), then the shards and
    temporary files; a directory holding other files is refused rather than emptied.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: output exists and is not a directory")
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
        return True
    names = os.listdir(out_dir)
    if not names:
        return False
    if not overwrite:
        state = "a dataset" if MANIFEST_NAME in names else "an incomplete dataset (no manifest.json)"
        raise UserError(f"{out_dir}: output directory exists and holds {state}; "
                        "pass --overwrite to replace it")
    foreign = sorted(n for n in names if not _is_ours(n))
    if MANIFEST_NAME in names and not _manifest_is_ours(os.path.join(out_dir, MANIFEST_NAME)):
        foreign.insert(0, MANIFEST_NAME + " (not a histaug_tf manifest)")
    if foreign:
        raise UserError(f"{out_dir}: --overwrite refused: the directory holds files that are not "
                        f"part of a dataset ({', '.join(foreign[:5])})")
    if MANIFEST_NAME in names:
        os.remove(os.path.join(out_dir, MANIFEST_NAME))
    for n in names:
        p = os.path.join(out_dir, n)
        if n == MANIFEST_NAME:
            continue
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    return False


class _SplitState:
    def __init__(self):
        self.done = []          # [(tmp_path, num_examples, class_counts, sha256, num_bytes)]
        self.writer = None      # tf.io.TFRecordWriter of the open shard
        self.tmp_path = None
        self.count = 0
        self.class_counts = None


class DatasetWriter:
    """Write a dataset of sharded TFRecords plus ``manifest.json`` (see the module docstring).

    Args:
      out_dir: the dataset directory (created; refused when it exists and is non-empty unless
        ``overwrite``).
      name: dataset name recorded in the manifest.
      image_shape: (H, W, C) of every image.
      encoding: ``png`` or ``raw``.
      label_names: names of the labels 0..K-1.
      shard_size: examples per shard.
      provenance: JSON-able dict (source paths, flags, parent, snapshot ...).

    ``add(split, image, label, key, group, source)`` encodes and writes one example;
    ``add_encoded`` takes already-encoded image bytes, ``add_serialized`` a serialized example.
    ``input_report`` (a dict) and ``extra`` (a dict of top-level manifest keys) may be filled before
    the context exits. Keys must be unique across the whole dataset; ``check_keys=False`` skips the
    check (and its set of all keys) when the caller guarantees uniqueness (PCAM rows, generator seeds).
    """

    def __init__(self, out_dir, name, image_shape, encoding="png", label_names=("normal", "tumour"),
                 shard_size=DEFAULT_SHARD_SIZE, overwrite=False, provenance=None, check_keys=True):
        if encoding not in schema.ENCODINGS:
            raise UserError(f"--encoding={encoding}: expected one of {schema.ENCODINGS}")
        if int(shard_size) < 1:
            raise UserError(f"--shard_size={shard_size}: must be >= 1")
        self.out_dir = os.path.abspath(out_dir)
        self.name = name
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
        self.encoding = encoding
        self.label_names = [str(n) for n in label_names]
        self.shard_size = int(shard_size)
        self.overwrite = overwrite
        self.provenance = dict(provenance or {})
        self.input_report = {}
        self.extra = {}
        self.referenced_splits = {}
        self._groups: dict[str, set] = {}      # split -> groups written (manifest "groups")
        self._splits: dict[str, _SplitState] = {}
        self._keys = set() if check_keys else None
        self._created = False
        self._open = False
        self._tmp_files = []
        self._final_files = []

    # -- context -----------------------------------------------------------------------------
    def __enter__(self):
        self._created = prepare_output_dir(self.out_dir, self.overwrite)
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # -- adding ------------------------------------------------------------------------------
    def add(self, split, image, label, key, group, source="real"):
        img = np.asarray(image)
        if img.dtype != np.uint8 or img.shape != self.image_shape:
            raise ValueError(f"{key}: image {img.dtype} {img.shape}, dataset expects uint8 "
                             f"{self.image_shape}")
        self.add_encoded(split, schema.encode_image(img, self.encoding), label, key, group, source)

    def add_encoded(self, split, image_bytes, label, key, group, source="real"):
        self.add_serialized(split, schema.make_example(image_bytes, label, key, group, source),
                            label, key, group)

    def add_serialized(self, split, serialized: bytes, label: int, key=None, group=None):
        """Write an already-serialized example (its ``label``, ``key`` and ``group`` given for the
        books: the manifest lists each split's groups, so that a reader can check that no group
        straddles two splits)."""
        if not self._open:
            raise RuntimeError("DatasetWriter used outside its `with` block")
        label = int(label)
        if not 0 <= label < len(self.label_names):
            raise ValueError(f"{key}: label {label} outside 0..{len(self.label_names) - 1}")
        if key is not None and self._keys is not None:
            if key in self._keys:
                raise UserError(f"{key}: duplicate example key")
            self._keys.add(key)
        st = self._splits.get(split)
        if st is None:
            if split in self.referenced_splits:
                raise ValueError(f"split {split!r} is referenced, cannot also be written")
            st = self._splits[split] = _SplitState()
        if st.writer is None:
            self._open_shard(split, st)
        st.writer.write(serialized)
        if group is not None:
            self._groups.setdefault(split, set()).add(group.decode() if isinstance(group, bytes)
                                                      else str(group))
        st.count += 1
        st.class_counts[label] += 1
        if st.count >= self.shard_size:
            self._close_shard(st)

    def reference_split(self, split, split_info: dict, parent_dir: str, groups=None):
        """Record a split whose shards live in another dataset (``parent_dir``), without copying
        (``groups``: the parent's list of that split's groups, if it has one)."""
        if split in self._splits:
            raise ValueError(f"split {split!r} already written")
        if groups is not None:
            self._groups[split] = set(groups)
        shards = []
        for sh in split_info["shards"]:
            abs_p = os.path.normpath(os.path.join(os.path.abspath(parent_dir), sh["file"]))
            shards.append(dict(sh, file=os.path.relpath(abs_p, self.out_dir)))
        self.referenced_splits[split] = dict(split_info, shards=shards, referenced=True)

    def num_examples(self, split=None) -> int:
        sts = [self._splits[split]] if split is not None else self._splits.values()
        return sum(d[1] for st in sts for d in st.done) + sum(st.count for st in sts)

    # -- shards ------------------------------------------------------------------------------
    def _open_shard(self, split, st):
        import tensorflow as tf

        idx = len(st.done)
        st.tmp_path = os.path.join(self.out_dir, f"{TMP_PREFIX}{split}-{idx:05d}.tfrecord")
        self._tmp_files.append(st.tmp_path)
        st.writer = tf.io.TFRecordWriter(st.tmp_path)
        st.count = 0
        st.class_counts = [0] * len(self.label_names)

    def _close_shard(self, st):
        if st.writer is None:
            return
        st.writer.close()
        # hash now, while the shard is in the page cache
        st.done.append((st.tmp_path, st.count, st.class_counts, file_sha256(st.tmp_path),
                        os.path.getsize(st.tmp_path)))
        st.writer, st.tmp_path, st.count = None, None, 0

    def close(self):
        """Finish: close the open shards, rename them, write the manifest last."""
        if not self._open:
            return
        try:
            splits = {}
            for split, st in self._splits.items():
                self._close_shard(st)
                n = len(st.done)
                shards, counts, total = [], [0] * len(self.label_names), 0
                for i, (tmp, cnt, cc, sha, size) in enumerate(st.done):
                    final = f"{split}-{i:05d}-of-{n:05d}.tfrecord"
                    fp = os.path.join(self.out_dir, final)
                    os.replace(tmp, fp)
                    self._tmp_files.remove(tmp)
                    self._final_files.append(fp)
                    shards.append({"file": final, "num_examples": cnt, "num_bytes": size,
                                   "sha256": sha})
                    counts = [a + b for a, b in zip(counts, cc)]
                    total += cnt
                splits[split] = {"num_examples": total, "class_counts": counts, "shards": shards}
            splits.update(self.referenced_splits)
            manifest = {
                "format_version": schema.FORMAT_VERSION,
                "name": self.name,
                "image_shape": list(self.image_shape),
                "encoding": self.encoding,
                "label_names": self.label_names,
                "label_map": {n: i for i, n in enumerate(self.label_names)},
                "splits": splits,
                "provenance": dict(self.provenance, histaug_tf_version=__version__,
                                   created=datetime.datetime.now(datetime.timezone.utc)
                                   .isoformat(timespec="seconds")),
                "input_report": self.input_report,
            }
            if self._groups:
                manifest["groups"] = {sp: sorted(g) for sp, g in self._groups.items()}
            manifest.update(self.extra)
            tmp = os.path.join(self.out_dir, TMP_PREFIX + MANIFEST_NAME)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, sort_keys=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self.out_dir, MANIFEST_NAME))
            self.manifest = manifest
        except BaseException:
            self.abort()
            raise
        self._open = False

    def abort(self):
        """Drop everything written so far; never leaves a manifest."""
        for st in self._splits.values():
            if st.writer is not None:
                try:
                    st.writer.close()
                except Exception:  # noqa: BLE001 - best effort while failing
                    pass
                st.writer = None
        for p in self._tmp_files + [os.path.join(self.out_dir, TMP_PREFIX + MANIFEST_NAME)]:
            try:
                os.remove(p)
            except OSError:
                pass
        self._tmp_files = []
        for p in self._final_files:  # shards renamed by a close() that then failed
            try:
                os.remove(p)
            except OSError:
                pass
        self._final_files = []
        if self._created:
            try:
                os.rmdir(self.out_dir)
            except OSError:
                pass
        self._open = False
