"""``manifest.json``: what makes a directory of TFRecord shards a dataset (DESIGN.md §3).

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
    m["data_dir"] = os.path.abspath(data_dir)
    return m


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
