"""Nested, stratified, seeded subsets of a dataset's train split (``python -m histaug_tf.subset``).

For one seed, every class c gets one random permutation of its train examples (in stored order);
the subset of fraction f takes the first ``round(f · n_c)`` of it. So the 3 % subset is inside the
20 % one, per-class counts are within half an example of the exact fraction, the same seed always
gives the same subset and another seed a different one. Each subset is a dataset directory of its
own (``<out>/frac<f>/``) holding the selected train records, copied byte for byte in their stored
order; its other splits reference the parent's shards (no copy) and its manifest names the parent.
With ``--by=group`` whole groups (slides, patients) are drawn instead (``select_groups``), so that
the patches of one slide are all in a subset or all out of it.
"""
from __future__ import annotations

import os

import numpy as np

from histaug_tf.common import Progress, UserError, file_sha256
from histaug_tf.data.manifest import load_manifest, manifest_path, split_shard_paths
from histaug_tf.data.writer import DEFAULT_SHARD_SIZE, DatasetWriter


def parse_fraction_list(text) -> list[float]:
    try:
        fr = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise UserError(f"--fractions={text}: expected comma-separated numbers in (0, 1]") from None
    if not fr or any(not 0 < f <= 1 for f in fr):
        raise UserError(f"--fractions={text}: every fraction must be in (0, 1]")
    return sorted(set(fr))


def frac_dirname(f: float) -> str:
    return f"frac{f:g}"


def select_ranks(class_counts, fractions, seed) -> dict:
    """{fraction: [set of within-class ranks selected for class c]} — nested across fractions."""
    out = {f: [] for f in fractions}
    for c, n in enumerate(class_counts):
        perm = np.random.default_rng([int(seed), c]).permutation(int(n))
        for f in fractions:
            out[f].append(set(perm[: int(round(f * n))].tolist()))
    return out


def select_groups(group_labels: dict, fractions, seed) -> dict:
    """{fraction: set of groups} — whole groups, nested across fractions (``--by=group``).

    Per majority class, the groups are shuffled once (``seed``) and laid end to end; the subset of
    fraction f takes, in that order, each group whose middle patch falls within the first
    round(f · n) patches of its stratum (n: the stratum's patches), and always at least the first
    group of a stratum with round(f · n) ≥ 1. So a subset holds close to f of each stratum's
    patches, never part of a group, and a smaller fraction's subset is inside a larger one's."""
    strata: dict = {}
    for g in sorted(group_labels):
        labels = np.asarray(group_labels[g], np.int64)
        strata.setdefault(int(np.bincount(labels).argmax()), []).append((g, len(labels)))
    out = {f: set() for f in fractions}
    for c, groups in sorted(strata.items()):
        order = [groups[i] for i in np.random.default_rng([int(seed), c]).permutation(len(groups))]
        total = sum(n for _, n in order)
        for f in fractions:
            target = int(round(f * total))
            cum = 0
            for k, (g, n) in enumerate(order):
                if cum + n / 2.0 > target and not (k == 0 and target >= 1):
                    break
                out[f].add(g)
                cum += n
    return out


def _train_groups(m, split):
    """{group: [labels]} of a split, read from its records."""
    import tensorflow as tf
    spec = {"label": tf.io.FixedLenFeature([], tf.int64),
            "group": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(split_shard_paths(m, split)).batch(4096).map(
        lambda s: tf.io.parse_example(s, spec))
    out: dict = {}
    for ex in ds.as_numpy_iterator():
        for lab, g in zip(ex["label"], ex["group"]):
            out.setdefault(g.decode(), []).append(int(lab))
    return out


def make_subsets(src, fractions, seed, out, split="train", overwrite=False, shard_size=None,
                 quiet=None, by="example"):
    """Write one subset dataset per fraction under ``out``; returns {fraction: manifest}.

    ``by='example'``: per class the first round(f · n_c) of one permutation (``select_ranks``);
    ``by='group'``: whole groups (``select_groups``; needs a dataset whose records have groups,
    i.e. a manifest that lists them with more than one group in the split)."""
    import tensorflow as tf

    fractions = parse_fraction_list(fractions)
    if by not in ("example", "group"):
        raise UserError(f"--by={by}: expected example or group")
    m = load_manifest(src, check="size")
    if split not in m["splits"]:
        raise UserError(f"{manifest_path(src)}: no '{split}' split to take subsets of")
    info = m["splits"][split]
    counts = info["class_counts"]
    ranks = select_ranks(counts, fractions, seed) if by == "example" else None
    chosen = None
    if by == "group":
        gl = _train_groups(m, split)
        if len(gl) < 2 or m.get("grouping") in (None, "none", "split"):
            raise UserError(f"{manifest_path(src)}: --by=group needs patches grouped by slide or "
                            f"patient (grouping: {m.get('grouping')}, {len(gl)} group(s) in "
                            f"'{split}'); use --by=example")
        chosen = select_groups(gl, fractions, seed)
    parent = {"path": os.path.abspath(src), "name": m["name"], "split": split,
              "manifest_sha256": file_sha256(manifest_path(src)), "seed": int(seed)}
    writers = {}
    for f in fractions:
        d = os.path.join(out, frac_dirname(f))
        prov = {"subset_of": dict(parent, fraction=f), "parent": parent["path"],
                "fractions": fractions, "seed": int(seed), "by": by}
        writers[f] = DatasetWriter(d, f"{m['name']}-{frac_dirname(f)}", m["image_shape"],
                                   encoding=m["encoding"], label_names=m["label_names"],
                                   shard_size=shard_size or DEFAULT_SHARD_SIZE,
                                   overwrite=overwrite, provenance=prov)
    for f in fractions:
        writers[f].extra = {k: m[k] for k in ("grouping", "positive_class") if k in m}
    entered = []
    try:
        for f in fractions:
            entered.append(writers[f].__enter__())
        seen = [0] * len(counts)
        prog = Progress(info["num_examples"], label=f"subsets of {m['name']}/{split}", quiet=quiet)
        ds = tf.data.TFRecordDataset(split_shard_paths(m, split))  # stored order
        spec = {"label": tf.io.FixedLenFeature([], tf.int64), "key": tf.io.FixedLenFeature([], tf.string),
                "group": tf.io.FixedLenFeature([], tf.string)}
        ds = ds.batch(1024).map(lambda s: (s, tf.io.parse_example(s, spec)))
        for sers, ex in ds.as_numpy_iterator():
            for ser, lab, key, grp in zip(sers, ex["label"], ex["key"], ex["group"]):
                lab = int(lab)
                r = seen[lab]
                seen[lab] += 1
                for f in fractions:
                    if (r in ranks[f][lab]) if chosen is None else (grp.decode() in chosen[f]):
                        writers[f].add_serialized(split, bytes(ser), lab, key.decode(), grp)
            prog.update(len(sers))
        if seen != list(counts):
            raise UserError(f"{src}: split '{split}' holds class counts {seen}, manifest says {counts}")
        for f in fractions:
            for s, sinfo in m["splits"].items():
                if s != split:
                    writers[f].reference_split(s, sinfo, src, (m.get("groups") or {}).get(s))
        for w in entered:
            w.__exit__(None, None, None)
        prog.close()
    except BaseException as e:
        for w in entered:
            w.__exit__(type(e), e, None)
        raise
    return {f: writers[f].manifest for f in fractions}
