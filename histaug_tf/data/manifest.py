"""``manifest.json``: what makes a directory of TFRecord shards a dataset (docs/architecture.md, "Dataset directory").

A directory without ``manifest.json`` is not a dataset (a conversion that was interrupted). The
writer (``writer.py``) writes it last, after every shard is complete and renamed.

Layout (``format_version`` 1)::

    {
      "format_version": 1,
      "name": "pcam",
      "image_shape": [96, 96, 3],
      "encoding": "png",                       # or "raw"
      "label_names": ["normal", "tumour"],
      "label_map": {"normal": 0, "tumour": 1},
      "splits": {
        "train": {"num_examples": 262144, "class_counts": [131072, 131072],
                  "shards": [{"file": "train-00000-of-00064.tfrecord", "num_examples": 4096,
                              "num_bytes": 81234567, "sha256": "..."}, ...]},
        ...
      },
      "provenance": {...},     # source paths, flags, parent dataset (subsets), GAN snapshot, ...
      "input_report": {...}    # reader notes: undersized / skipped / ignored files, ...
    }

Shard ``file`` names are relative to the dataset directory; a subset's ``valid``/``test`` splits
reference the parent's shards (``../pcam/valid-00000-of-00008.tfrecord``) instead of copying them,
and say so with ``"referenced": true``.
"""
from __future__ import annotations

import json
import os

from histaug_tf.common import UserError, file_sha256

MANIFEST_NAME = "manifest.json"
SUPPORTED_VERSIONS = (1,)
_REQUIRED = ("format_version", "name", "image_shape", "encoding", "label_names", "splits")


def manifest_path(data_dir: str) -> str:
    return os.path.join(data_dir, MANIFEST_NAME)


def shard_path(data_dir: str, shard: dict) -> str:
    """Absolute, normalised path of a shard entry (``file`` is relative to the dataset dir)."""
    return os.path.normpath(os.path.join(os.path.abspath(data_dir), shard["file"]))


def load_manifest(data_dir: str, check: str = "size") -> dict:
    """Read and validate ``data_dir/manifest.json``.

    ``check``: ``"exists"`` (every shard file exists), ``"size"`` (and has the recorded byte size;
    the default — cheap, and catches truncated or replaced shards), ``"sha256"`` (and its checksum),
    ``"count"`` (and holds the recorded number of records; reads every shard with TensorFlow).
    Raises ``UserError`` naming the file and the problem. The returned dict has an extra key
    ``data_dir`` (absolute path), which is not part of the file.
    """
    if check not in ("exists", "size", "sha256", "count"):
        raise ValueError(f"check={check!r}")
    path = manifest_path(data_dir)
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: dataset directory does not exist")
    if not os.path.exists(path):
        raise UserError(f"{path}: missing — {data_dir} is not a complete dataset "
                        "(conversion not run, or interrupted; rerun it with --overwrite)")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise UserError(f"{path}: not a manifest (top level is not an object)")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise UserError(f"{path}: missing keys {missing}")
    if m["format_version"] not in SUPPORTED_VERSIONS:
        raise UserError(f"{path}: format_version {m['format_version']} not supported "
                        f"(this version reads {list(SUPPORTED_VERSIONS)})")
    for split, info in m["splits"].items():
        total = 0
        for sh in info.get("shards", []):
            p = shard_path(data_dir, sh)
            if not os.path.isfile(p):
                raise UserError(f"{p}: shard of split '{split}' listed in {path} is missing")
            if check in ("size", "sha256", "count") and "num_bytes" in sh:
                size = os.path.getsize(p)
                if size != sh["num_bytes"]:
                    raise UserError(f"{p}: has {size} bytes, manifest {path} says {sh['num_bytes']}")
            if check == "sha256" and file_sha256(p) != sh["sha256"]:
                raise UserError(f"{p}: sha256 differs from manifest {path}")
            if check == "count":
                n = count_records(p)
                if n != sh["num_examples"]:
                    raise UserError(f"{p}: holds {n} records, manifest {path} says {sh['num_examples']}")
            total += sh["num_examples"]
        if total != info["num_examples"]:
            raise UserError(f"{path}: split '{split}' shards hold {total} examples, "
                            f"num_examples says {info['num_examples']}")
    check_groups(m, path)
    m["data_dir"] = os.path.abspath(data_dir)
    return m


def check_groups(m: dict, where: str) -> None:
    """No group (patient, slide, run ...) in two splits of a manifest that lists its groups."""
    groups = m.get("groups")
    if not isinstance(groups, dict):
        return
    seen: dict = {}
    for split in sorted(groups):
        for g in groups[split]:
            if g in seen and seen[g] != split:
                raise UserError(f"{where}: group {g!r} is in splits {seen[g]!r} and {split!r} "
                                f"(patches of one {m.get('grouping', 'group')} must stay in one "
                                "split)")
            seen[g] = split


def count_records(path: str) -> int:
    """Number of records in one TFRecord file (reads it)."""
    import tensorflow as tf

    try:
        return int(tf.data.TFRecordDataset(path).reduce(0, lambda n, _: n + 1))
    except tf.errors.DataLossError as e:
        raise UserError(f"{path}: corrupt TFRecord file ({e.message.splitlines()[0]})") from None


def split_info(manifest: dict, split: str) -> dict:
    if split not in manifest["splits"]:
        raise UserError(f"{manifest_path(manifest.get('data_dir', '?'))}: no split '{split}' "
                        f"(has {sorted(manifest['splits'])})")
    return manifest["splits"][split]


def split_shard_paths(manifest: dict, split: str) -> list[str]:
    info = split_info(manifest, split)
    return [shard_path(manifest["data_dir"], sh) for sh in info["shards"]]


# --------------------------------------------------------------------------------------------
# Comparing datasets, verifying shards, explaining read errors.
# --------------------------------------------------------------------------------------------

def _where(m: dict | None, fallback: str) -> str:
    if m is not None and m.get("data_dir"):
        return manifest_path(m["data_dir"])
    return fallback


def check_same_labels(ref_names, other_names, ref_where: str, other_where: str) -> None:
    """Refuse two label lists that differ (order, names or class count), in one line naming both.

    The one comparison of labels every consumer of several datasets uses (classifier training
    beside synthetic / validation / test sets, the study, generate against its GAN's labels,
    calc_metrics real against generated). ``*_where`` name the files the lists come from.
    """
    a = [str(n) for n in ref_names]
    b = [str(n) for n in other_names]
    if a == b:
        return
    if len(a) != len(b):
        why = f"{len(b)} classes {b}, but {ref_where} has {len(a)} classes {a}"
    elif sorted(a) == sorted(b):
        why = f"label order {b} differs from {ref_where}'s {a} (the same label index means another class)"
    else:
        why = f"label names {b} differ from {ref_where}'s {a}"
    raise UserError(f"{other_where}: {why}")


def check_same_label_names(ref: dict, other: dict) -> None:
    """``check_same_labels`` of two loaded manifests (``load_manifest`` results)."""
    check_same_labels(ref["label_names"], other["label_names"], _where(ref, "reference dataset"),
                      _where(other, "dataset"))


def verify_shards(data_dir: str) -> int:
    """Check every shard's size and sha256 against ``data_dir``'s manifest (``UserError`` naming the
    first damaged shard). Returns the number of shards checked."""
    m = load_manifest(data_dir, check="sha256")
    return sum(len(info.get("shards", [])) for info in m["splits"].values())


def is_read_error(err: BaseException) -> bool:
    """True for TensorFlow's errors on a damaged TFRecord (bad CRC, truncated record)."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, tf.errors.DataLossError)


def _first_line(err: BaseException) -> str:
    msg = getattr(err, "message", None) or str(err)
    import re

    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    # Keras wraps it ("Graph execution error:" ... the op's message further down): prefer the
    # line that speaks of the record
    hits = [ln for ln in lines if re.search(r"record|corrupt|truncat", ln, re.I)]
    line = hits[0] if hits else lines[0] if lines else ""
    line = re.sub(r"\{\{.*?\}\}\s*", "", line)          # {{function_node ...}}
    line = re.sub(r"\s*\[Op:.*$", "", line).strip()       # [Op:IteratorGetNext] name:
    return line or type(err).__name__


def _offset(err: BaseException):
    import re

    m = re.search(r"(?:record|offset)\D{0,12}(\d+)", _first_line(err))
    return int(m.group(1)) if m else None


def explain_read_error(data_dirs, err: BaseException) -> UserError:
    """A one-line ``UserError`` for a failed read of the datasets ``data_dirs``, naming the shard.

    TensorFlow's ``DataLossError`` ("corrupted record at 1234") does not say which file. Every shard
    of the datasets is checked against its manifest (size, then sha256); the first that differs is
    the damaged one. When all match (damaged before the manifest was written, or a file system
    error), each shard is read on its own to find the one that fails. The record offset is kept
    when TensorFlow gives one.
    """
    dirs = [d for d in dict.fromkeys(os.fspath(d) for d in data_dirs if d)]
    detail = _first_line(err)
    off = _offset(err)
    at = f" (record at byte offset {off})" if off is not None else ""
    seen = set()
    shards = []
    for d in dirs:
        try:
            m = load_manifest(d, check="exists")
        except UserError as e:
            return e
        for split, info in m["splits"].items():
            for sh in info.get("shards", []):
                p = shard_path(d, sh)
                if p not in seen:
                    seen.add(p)
                    shards.append((d, split, sh, p))
    for d, split, sh, p in shards:
        if "num_bytes" in sh and os.path.getsize(p) != sh["num_bytes"]:
            return UserError(f"{p}: damaged shard of split '{split}' of {d}: has "
                             f"{os.path.getsize(p)} bytes, its manifest says {sh['num_bytes']}"
                             f"{at} — {detail}")
        if "sha256" in sh and file_sha256(p) != sh["sha256"]:
            return UserError(f"{p}: damaged shard of split '{split}' of {d}: sha256 differs from "
                             f"its manifest{at} — {detail}; restore or regenerate the dataset")
    for d, split, sh, p in shards:
        try:
            count_records(p)
        except UserError as e:
            return UserError(f"{e} (shard of split '{split}' of {d})")
    return UserError(f"reading {', '.join(dirs)}: {detail} (every shard matches its manifest; "
                     "a file system error?)")
