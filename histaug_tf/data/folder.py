"""Users' own patches: a folder tree (``--dataset=folder``) or a table (``--dataset=table``).

**Folder**: ``<src>/<class_name>/[<slide or patient>/...]/*.{png,jpg,jpeg,tif,tiff}``; if ``<src>``
holds ``train/``, ``valid/`` and/or ``test/`` each with class folders, those splits are kept as
they are. **Table**: a CSV with the columns ``path,label[,group][,split]`` (header required;
paths relative to the CSV's directory, labels are class names). Example key
``folder/<path below src without extension>`` (the table: below the CSV's directory).

**Groups** (the unit that must never straddle splits: a slide or a patient): ``group_from=
'parent'`` takes the directory that holds the image (``<class>/<slide>/<patch>.png``), a
``group_regex`` with one capture group takes the capture from the image's path below ``src``
(``/`` separators), a table takes its ``group`` column. Splits are then made by group: the groups
are stratified by their majority class, shuffled with ``split_seed``, and each goes to the split
in which the middle of its patches falls when the stratum's groups are laid end to end
(``split_groups``), so the example fractions come out close to ``fractions`` while no group is
cut. Without any group information the images are split one by one (stratified by class), a
warning says so once, and the manifest records ``"grouping": "none"``. Pre-split folders and a
table's ``split`` column are kept as given, but a group found in two of them is refused.

**Classes**: ``label_names`` fixes the order (label 0, 1, ...). With two classes and no order, the
conversion refuses in one line naming the classes found, unless ``positive_class`` names the one
that gets label 1: sorted folder names would otherwise decide which class every tumour metric is
about (``IDC``/``non-IDC`` sorts ``non-IDC`` last). The manifest records ``positive_class``.
All images must have the size of the first one (``--undersized=pad`` pads smaller ones with white).
"""
from __future__ import annotations

import csv
import logging
import os
import re

import numpy as np

from histaug_tf.common import UserError
from histaug_tf.data.idc import SPLIT_NAMES

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
GROUP_FROM = ("none", "parent")


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


def resolve_classes(found, label_names, positive_class, where) -> list:
    """The label order: ``label_names``, or for two classes the one not ``positive_class`` first;
    refuses two classes without either (one line listing them), and names not found."""
    found = sorted(found)
    if label_names:
        names = [str(n) for n in label_names]
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise UserError(f"{where}: classes {unknown} not in --label_names={','.join(names)}")
        if len(set(names)) != len(names):
            raise UserError(f"--label_names={','.join(names)}: a name is repeated")
        if positive_class and (len(names) != 2 or names[1] != positive_class):
            raise UserError(f"--positive_class={positive_class} disagrees with --label_names="
                            f"{','.join(names)} (the positive class is the second name)")
        return names
    if len(found) < 2:
        raise UserError(f"{where}: found {len(found)} class(es) {found}; need at least 2")
    if positive_class:
        if positive_class not in found:
            raise UserError(f"{where}: --positive_class={positive_class} is not one of the classes "
                            f"found {found}")
        if len(found) != 2:
            raise UserError(f"{where}: --positive_class needs two classes, found {found}; give "
                            "--label_names")
        return [c for c in found if c != positive_class] + [positive_class]
    if len(found) == 2:
        raise UserError(f"{where}: two classes {found} and no order: say which is the positive "
                        f"(tumour) class with --positive_class=<name>, or give "
                        f"--label_names=<negative>,<positive> (e.g. --label_names={found[0]},"
                        f"{found[1]})")
    return found


def split_groups(group_labels: dict, fractions, seed) -> dict:
    """{group: split} for ``group_labels`` = {group: [labels of its patches]} (see the module
    docstring): per majority class, groups shuffled and laid end to end; a group goes to the
    split whose share of the stratum holds the middle of its patches."""
    bounds = np.cumsum(np.asarray(fractions, np.float64))
    strata: dict = {}
    for g in sorted(group_labels):
        labels = np.asarray(group_labels[g], np.int64)
        strata.setdefault(int(np.bincount(labels).argmax()), []).append((g, len(labels)))
    out = {}
    for c, groups in sorted(strata.items()):
        rng = np.random.default_rng([int(seed), c])
        order = [groups[i] for i in rng.permutation(len(groups))]
        total = float(sum(n for _, n in order))
        cum = 0.0
        for g, n in order:
            mid = (cum + n / 2.0) / total
            i = int(np.searchsorted(bounds, mid, side="right"))
            out[g] = SPLIT_NAMES[min(i, len(SPLIT_NAMES) - 1)]
            cum += n
    return out


def _split_items(items, fractions, rng):
    """Split (class, path) items one by one, stratified by class (no groups)."""
    by_split = {s: [] for s in SPLIT_NAMES}
    classes = sorted({c for c, _ in items})
    for c in classes:
        paths = [p for cc, p in items if cc == c]
        perm = rng.permutation(len(paths))
        n = len(paths)
        cuts = np.round(np.cumsum(fractions) * n).astype(int)
        b = [0, cuts[0], cuts[1], n]
        for si, s in enumerate(SPLIT_NAMES):
            by_split[s] += [(c, paths[j]) for j in perm[b[si]:b[si + 1]]]
    return by_split


def _group_rule(group_from, group_regex):
    """The compiled ``group_regex`` (or None), after checking the group options."""
    if group_from not in GROUP_FROM:
        raise UserError(f"--group_from={group_from}: expected one of {', '.join(GROUP_FROM)}")
    if not group_regex:
        return None
    try:
        rx = re.compile(group_regex)
    except re.error as e:
        raise UserError(f"--group_regex={group_regex}: {e}") from None
    if rx.groups != 1:
        raise UserError(f"--group_regex={group_regex}: needs exactly one capture group, "
                        f"has {rx.groups}")
    if group_from != "none":
        raise UserError("give --group_from or --group_regex, not both")
    return rx


def _group_of(cname, path, col, root, rx, group_regex, group_from):
    """The group of one image: the table's column, the regex capture, its folder, or None."""
    if col:
        return col
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if rx is not None:
        m = rx.search(rel)
        if not m or not m.group(1):
            raise UserError(f"{path}: --group_regex={group_regex} does not match its path {rel!r}")
        return m.group(1)
    if group_from == "parent":
        parent = os.path.basename(os.path.dirname(path))
        if parent == cname:
            raise UserError(f"{path}: --group_from=parent, but the image lies directly in the "
                            f"class folder {cname!r} (expected <class>/<group>/<image>)")
        return parent
    return None


def _assign_splits(rows, groups, lab, fractions, seed, src):
    """({split: [(class, path)]}, the generator to shuffle each split with): the splits as given
    (a group in two given splits is refused), by whole groups (``split_groups``), or patch by
    patch stratified by class (no groups; the shuffle continues that split's generator)."""
    if any(s for _, _, _, s in rows):
        if not all(s for _, _, _, s in rows):
            raise UserError(f"{src}: some rows give a split and others do not")
        by_split, where = {}, {}
        for c, p, _, s in rows:
            by_split.setdefault(s, []).append((c, p))
            if groups is not None and where.setdefault(groups[p], s) != s:
                raise UserError(f"{src}: group {groups[p]!r} is in splits {where[groups[p]]!r} and "
                                f"{s!r} (patches of one group must stay in one split)")
        return by_split, np.random.default_rng(seed)
    if groups is not None:
        gl: dict = {}
        for c, p, _, _ in rows:
            gl.setdefault(groups[p], []).append(lab[c])
        assign = split_groups(gl, fractions, seed)
        by_split = {s: [] for s in SPLIT_NAMES}
        for c, p, _, _ in rows:
            by_split[assign[groups[p]]].append((c, p))
        return by_split, np.random.default_rng(seed)
    rng = np.random.default_rng(seed)
    return _split_items([(c, p) for c, p, _, _ in rows], fractions, rng), rng


class FolderSource:
    """``--dataset=folder`` (``table=None``) or ``--dataset=table`` (``src`` the CSV)."""
    name = "folder"

    def __init__(self, src, fractions=(0.7, 0.15, 0.15), split_seed=0, label_names=None,
                 undersized="error", chunk=256, name=None, group_from="none", group_regex=None,
                 positive_class=None, table=False):
        from histaug_tf.data.encode_worker import load_image_file

        self.chunk = chunk
        self.undersized = undersized
        self.name = name or ("table" if table else "folder")
        rx = _group_rule(group_from, group_regex)
        ignored, bad_rows = [], []
        if table:
            root, rows = self._read_table(src, bad_rows)
        else:
            root, rows = self._read_folder(src, ignored)
        classes = resolve_classes({c for c, _, _, _ in rows}, label_names, positive_class, src)
        self.label_names = tuple(classes)
        lab = {c: i for i, c in enumerate(classes)}
        if not rows:
            raise UserError(f"{src}: no images ({', '.join(EXTENSIONS)}) found")
        groups = {p: _group_of(c, p, col, root, rx, group_regex, group_from)
                  for c, p, col, _ in rows}
        if table and any(g is None for g in groups.values()) and any(groups.values()):
            missing = next(p for p, g in groups.items() if g is None)
            raise UserError(f"{src}: row of {missing} has no group while others have one")
        grouped = all(g is not None for g in groups.values())
        if grouped:
            self.grouping = (f"regex {group_regex}" if rx else "parent folder"
                             if group_from == "parent" else "table column 'group'")
        else:
            self.grouping = "none"
            logging.warning("%s: no groups (slide or patient) given: patches are split one by "
                            "one, so patches of one slide can land in train and test; give "
                            "--group_from=parent or --group_regex (docs/data.md)", src)
        pre_split = any(s for _, _, _, s in rows)
        by_split, rng = _assign_splits(rows, groups if grouped else None, lab, fractions,
                                       split_seed, src)
        self.by_split = {s: [v[i] for i in rng.permutation(len(v))] for s, v in by_split.items() if v}
        self.items = {s: [(s, p, lab[c], self._key(root, p),
                           groups[p] if grouped else s) for c, p in v]
                      for s, v in self.by_split.items()}
        first = next((v[0][1] for v in self.items.values() if v), None)
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
                       "label_map": lab, "pre_split": pre_split, "grouping": self.grouping}
        if table:
            self.report["bad_rows"] = {"count": len(bad_rows), "rows": bad_rows[:200]}
        if grouped:
            self.report["groups_per_split"] = {s: len({it[4] for it in v})
                                               for s, v in self.items.items()}
        self.extra = {"grouping": self.grouping}
        if len(classes) == 2:
            self.extra["positive_class"] = classes[1]
        self.provenance = {"source": "table" if table else "folder", "src": os.path.abspath(src),
                           "split": None if pre_split else list(fractions),
                           "split_seed": split_seed, "grouping": self.grouping}

    @staticmethod
    def _read_folder(src, ignored):
        """(root, [(class name, path, None, split or None)]) of a folder tree."""
        if not os.path.isdir(src):
            raise UserError(f"{src}: --src directory does not exist")
        pre = [s for s in SPLIT_NAMES if os.path.isdir(os.path.join(src, s))]
        rows = []
        for s in pre or [None]:
            base = os.path.join(src, s) if s else src
            for c, paths in _class_files(base, src, ignored).items():
                rows += [(c, p, None, s) for p in paths]
        return src, rows

    @staticmethod
    def _read_table(path, bad_rows):
        """(root, [(label name, abs path, group or None, split or None)]) of a CSV table."""
        if not os.path.isfile(path):
            raise UserError(f"{path}: --src table (CSV) not found")
        root = os.path.dirname(os.path.abspath(path))
        rows = []
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                cols = [c.strip() for c in (reader.fieldnames or [])]
                for need in ("path", "label"):
                    if need not in cols:
                        raise UserError(f"{path}: no {need!r} column (header: {','.join(cols)}; "
                                        "expected path,label[,group][,split])")
                for i, r in enumerate(reader, start=2):
                    r = {(k or "").strip(): (v or "").strip() for k, v in r.items()
                         if isinstance(v, str)}
                    if not r.get("path") or not r.get("label"):
                        bad_rows.append({"line": i, "problem": "empty path or label"})
                        continue
                    split = r.get("split") or None
                    if split is not None and split not in SPLIT_NAMES:
                        raise UserError(f"{path}:{i}: split {split!r} is not one of "
                                        f"{', '.join(SPLIT_NAMES)}")
                    p = os.path.normpath(os.path.join(root, r["path"]))
                    if not os.path.isfile(p):
                        raise UserError(f"{path}:{i}: image {r['path']} not found ({p})")
                    rows.append((r["label"], p, r.get("group") or None, split))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"{path}: unreadable table ({e})") from None
        return root, rows

    @staticmethod
    def _key(src, path):
        rel = os.path.splitext(os.path.relpath(path, src))[0].replace(os.sep, "/")
        return f"folder/{rel}"

    def jobs(self, encoding, progress_total=None):
        for s, items in self.items.items():
            if progress_total is not None:
                progress_total(s, len(items))
            for i in range(0, len(items), self.chunk):
                yield ("files", encoding, tuple(self.image_shape), self.undersized, items[i:i + self.chunk])
