"""Folder reader for users' own data: ``<src>/<class_name>/*.{png,jpg,jpeg,tif,tiff}``.

Class names are sorted to give labels 0..K-1 (or taken in the order of ``label_names``); the map
is written to the manifest (``label_names``, ``label_map``). If ``<src>`` holds ``train/``,
``valid/`` and/or ``test/`` each with class folders, those splits are used as they are; otherwise
images are split at random, stratified by class (``--split``, ``--split_seed``). All images must
have the size of the first one (``--undersized=pad`` pads smaller ones with white). Example key
``folder/<path below src without extension>`` (e.g. ``folder/tumour/a12``), group = split name.
"""
from __future__ import annotations

import os

import numpy as np

from histaug_tf.common import UserError
from histaug_tf.data.idc import SPLIT_NAMES

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _class_files(d, src, ignored):
    out = {}
    for cname in sorted(os.listdir(d)):
        cp = os.path.join(d, cname)
        if not os.path.isdir(cp) or cname.startswith("."):
            ignored.append(os.path.relpath(cp, src))
            continue
        lst = []
        for root, dirs, fns in os.walk(cp):
            dirs.sort()
            for fn in sorted(fns):
                p = os.path.join(root, fn)
                if fn.lower().endswith(EXTENSIONS) and not fn.startswith("."):
                    lst.append(p)
                else:
                    ignored.append(os.path.relpath(p, src))
        out[cname] = lst
    return out


class FolderSource:
    name = "folder"

    def __init__(self, src, fractions=(0.7, 0.15, 0.15), split_seed=0, label_names=None,
                 undersized="error", chunk=256, name=None):
        from histaug_tf.data.encode_worker import load_image_file

        if not os.path.isdir(src):
            raise UserError(f"{src}: --src directory does not exist")
        self.name = name or "folder"
        self.chunk = chunk
        self.undersized = undersized
        ignored = []
        pre_split = [s for s in SPLIT_NAMES if os.path.isdir(os.path.join(src, s))]
        if pre_split:
            per_split = {s: _class_files(os.path.join(src, s), src, ignored) for s in pre_split}
            classes = sorted({c for d in per_split.values() for c in d})
        else:
            per_class = _class_files(src, src, ignored)
            classes = sorted(per_class)
        if label_names:
            unknown = sorted(set(classes) - set(label_names))
            if unknown:
                raise UserError(f"{src}: class folders {unknown} not in --label_names={','.join(label_names)}")
            classes = list(label_names)
        if len(classes) < 2:
            raise UserError(f"{src}: found {len(classes)} class folder(s) {classes}; need at least 2")
        self.label_names = tuple(classes)
        lab = {c: i for i, c in enumerate(classes)}
        rng = np.random.default_rng(split_seed)
        self.by_split = {}
        if pre_split:
            for s in pre_split:
                items = [(c, p) for c in sorted(per_split[s]) for p in per_split[s][c]]
                self.by_split[s] = [items[i] for i in rng.permutation(len(items))]
        else:
            self.by_split = {s: [] for s in SPLIT_NAMES}
            for c in classes:
                paths = per_class.get(c, [])
                perm = rng.permutation(len(paths))
                n = len(paths)
                cuts = np.round(np.cumsum(fractions) * n).astype(int)
                bounds = [0, cuts[0], cuts[1], n]
                for si, s in enumerate(SPLIT_NAMES):
                    self.by_split[s] += [(c, paths[j]) for j in perm[bounds[si]:bounds[si + 1]]]
            for s in SPLIT_NAMES:
                lst = self.by_split[s]
                self.by_split[s] = [lst[i] for i in rng.permutation(len(lst))]
            self.by_split = {s: v for s, v in self.by_split.items() if v}
        self.items = {s: [(s, p, lab[c], self._key(src, c, p), s) for c, p in v]
                      for s, v in self.by_split.items()}
        first = next((v[0][1] for v in self.items.values() if v), None)
        if first is None:
            raise UserError(f"{src}: no images ({', '.join(EXTENSIONS)}) in class folders")
        try:
            self.image_shape = load_image_file(first).shape
        except ValueError as e:
            raise UserError(f"{first}: {e}") from None
        keys = [it[3] for v in self.items.values() for it in v]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[0]
            raise UserError(f"{src}: two files give the same key {dup} (same name, different extension?)")
        self.total = len(keys)
        self.report = {"ignored": {"count": len(ignored), "paths": ignored[:200]},
                       "label_map": lab, "pre_split": bool(pre_split)}
        self.provenance = {"source": "folder", "src": os.path.abspath(src),
                           "split": None if pre_split else list(fractions), "split_seed": split_seed}

    @staticmethod
    def _key(src, cname, path):
        rel = os.path.splitext(os.path.relpath(path, src))[0].replace(os.sep, "/")
        return f"folder/{rel}"

    def jobs(self, encoding, progress_total=None):
        for s, items in self.items.items():
            if progress_total is not None:
                progress_total(s, len(items))
            for i in range(0, len(items), self.chunk):
                yield ("files", encoding, tuple(self.image_shape), self.undersized, items[i:i + self.chunk])
