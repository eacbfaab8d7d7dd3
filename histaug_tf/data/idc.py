"""IDC (Kaggle "breast-histopathology-images") reader and the patient-level split.

Tree: ``<src>/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png`` (50×50 RGB). The nested
duplicate tree ``IDC_regular_ps50_idx5/`` and stray files (``.DS_Store``, READMEs, anything not
matching the pattern) are ignored and counted. Splits are by patient only; see ``split_patients``.
Example key ``idc/<patient>/x<X>_y<Y>``, group = patient id.
"""
from __future__ import annotations

import os
import re

import numpy as np

from histaug_tf.common import UserError

IMAGE_SHAPE = (50, 50, 3)
LABEL_NAMES = ("normal", "idc")
NESTED_DUPLICATE = "IDC_regular_ps50_idx5"
_NAME = re.compile(r"^(\d+)_idx5_x(\d+)_y(\d+)_class(\d+)\.png$")
SPLIT_NAMES = ("train", "valid", "test")


def parse_fractions(text, what="--split"):
    try:
        fr = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"{what}={text}: expected comma-separated fractions like 0.7,0.15,0.15") from None
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise UserError(f"{what}={text}: expected three non-negative fractions (train,valid,test) "
                        "summing to 1")
    return fr


def split_patients(pos_frac: dict, fractions, seed: int) -> dict:
    """Assign each patient to train/valid/test, stratified by the patient's tumour fraction.

    Patients are sorted by their fraction of class-1 patches and cut into consecutive strata of
    ~10; the order inside a stratum is shuffled with ``seed``. Walking that order, each patient goes
    to the split furthest below its quota (fraction × patients seen so far), so every split gets
    patients from across the whole range of tumour fractions and the split sizes are exact up to
    rounding. Returns {patient: split}.
    """
    rng = np.random.default_rng(seed)
    patients = sorted(pos_frac)
    rng.shuffle(patients)  # random tie-breaking
    patients.sort(key=lambda p: pos_frac[p])
    n = len(patients)
    stratum = 10
    order = []
    for i in range(0, n, stratum):
        block = patients[i:i + stratum]
        order += [block[j] for j in rng.permutation(len(block))]
    assigned = np.zeros(3)
    out = {}
    fr = np.asarray(fractions, float)
    for i, p in enumerate(order):
        deficit = fr * (i + 1) - assigned
        deficit[fr == 0] = -np.inf
        s = int(np.argmax(deficit))
        assigned[s] += 1
        out[p] = SPLIT_NAMES[s]
    return out


def scan(src: str, skip_bad: bool):
    """Walk the tree. Returns (files, ignored, bad): files = [(patient, label, x, y, path)]."""
    if not os.path.isdir(src):
        raise UserError(f"{src}: --src directory does not exist")
    top = src
    entries = sorted(os.listdir(src))
    if not any(e.isdigit() and os.path.isdir(os.path.join(src, e)) for e in entries) and \
            os.path.isdir(os.path.join(src, NESTED_DUPLICATE)):
        top = os.path.join(src, NESTED_DUPLICATE)  # only the nested copy was unpacked
        entries = sorted(os.listdir(top))
    files, ignored, bad, seen = [], [], [], {}
    for pdir in entries:
        pp = os.path.join(top, pdir)
        if not (pdir.isdigit() and os.path.isdir(pp)):
            ignored.append(os.path.relpath(pp, src))
            continue
        for cdir in sorted(os.listdir(pp)):
            cp = os.path.join(pp, cdir)
            if cdir not in ("0", "1") or not os.path.isdir(cp):
                ignored.append(os.path.relpath(cp, src))
                continue
            for fn in sorted(os.listdir(cp)):
                fp = os.path.join(cp, fn)
                m = _NAME.match(fn)
                if not m or not os.path.isfile(fp):
                    ignored.append(os.path.relpath(fp, src))
                    continue
                pid, x, y, c = m.groups()
                problem = None
                if c != cdir:
                    problem = f"filename says class{c} but the file is in folder '{cdir}'"
                elif pid != pdir:
                    problem = f"filename says patient {pid} but the file is in patient folder '{pdir}'"
                elif (pdir, x, y) in seen:
                    problem = f"duplicate of {seen[(pdir, x, y)]} (same patient and x/y)"
                if problem:
                    if not skip_bad:
                        raise UserError(f"{fp}: {problem} (pass --skip_bad to skip such files)")
                    bad.append({"file": os.path.relpath(fp, src), "problem": problem})
                    continue
                seen[(pdir, x, y)] = os.path.relpath(fp, src)
                files.append((pdir, int(cdir), int(x), int(y), fp))
    if not files:
        raise UserError(f"{src}: no IDC patches found (expected <patient>/<0|1>/"
                        "<patient>_idx5_x<X>_y<Y>_class<C>.png)")
    return files, ignored, bad


class IdcSource:
    name = "idc"
    image_shape = IMAGE_SHAPE
    label_names = LABEL_NAMES

    def __init__(self, src, fractions=(0.7, 0.15, 0.15), split_seed=0, undersized="pad",
                 skip_bad=False, chunk=256, shuffle_seed=None):
        if undersized not in ("pad", "drop"):
            raise UserError(f"--undersized={undersized}: expected pad or drop")
        self.undersized = undersized
        self.chunk = chunk
        files, ignored, bad = scan(src, skip_bad)
        per_patient = {}
        for pid, lab, *_ in files:
            a = per_patient.setdefault(pid, [0, 0])
            a[lab] += 1
        pos_frac = {p: c[1] / (c[0] + c[1]) for p, c in per_patient.items()}
        assign = split_patients(pos_frac, fractions, split_seed)
        self.by_split = {s: [] for s in SPLIT_NAMES}
        for f in files:
            self.by_split[assign[f[0]]].append(f)
        for s, fr in zip(SPLIT_NAMES, fractions):
            if fr == 0:
                continue
            labs = {f[1] for f in self.by_split[s]}
            if labs != {0, 1}:
                raise UserError(f"{src}: split '{s}' gets {len({f[0] for f in self.by_split[s]})} "
                                f"patient(s) with classes {sorted(labs)}; too few patients for "
                                f"--split={','.join(map(str, fractions))} with both classes in "
                                "every split")
        rng = np.random.default_rng(split_seed if shuffle_seed is None else shuffle_seed)
        for s in SPLIT_NAMES:  # shuffle within a split so shards mix patients
            lst = self.by_split[s]
            self.by_split[s] = [lst[i] for i in rng.permutation(len(lst))]
        self.total = len(files)
        self.report = {
            "ignored": {"count": len(ignored), "paths": ignored[:200]},
            "skipped": bad,
            "undersized": undersized,
            "patients": {s: sorted({f[0] for f in self.by_split[s]}, key=int) for s in SPLIT_NAMES},
        }
        self.provenance = {"source": "idc", "src": os.path.abspath(src),
                           "split": list(fractions), "split_seed": split_seed,
                           "num_files": len(files), "num_patients": len(per_patient)}

    def jobs(self, encoding, progress_total=None):
        for s in SPLIT_NAMES:
            lst = self.by_split[s]
            if progress_total is not None:
                progress_total(s, len(lst))
            for i in range(0, len(lst), self.chunk):
                items = [(s, fp, lab, f"idc/{pid}/x{x}_y{y}", pid)
                         for pid, lab, x, y, fp in lst[i:i + self.chunk]]
                yield ("files", encoding, IMAGE_SHAPE, self.undersized, items)
