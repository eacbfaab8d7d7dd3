"""Conversion of a raw dataset into TFRecord shards + manifest (``python -m histaug_tf.prepare_data``).

A reader (``pcam``, ``idc``, ``folder``, ``synthetic_tissue``) yields encoding jobs (chunks of a few
hundred patches); a pool of worker processes encodes them (PNG + serialized Example, see
``encode_worker``); the main process writes the results in order through ``DatasetWriter``. At
most ``2 × workers + 2`` jobs are in flight, so memory stays bounded whatever the input size.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import sys

import numpy as np

from histaug_tf.common import Progress, UserError
from histaug_tf.data import encode_worker
from histaug_tf.data.writer import TMP_PREFIX, DatasetWriter

DATASETS = ("pcam", "idc", "folder", "table", "synthetic_tissue")
# What a record's group is, per source (folder/table sources say it themselves).
GROUPING = {"pcam": "split", "idc": "patient", "synthetic_tissue": "split"}


class SyntheticSource:
    """The built-in procedural tissue set (``synthetic_tissue.render_patch``), exactly balanced.

    Example key ``synthetic_tissue/<split>/<index:06d>``, group = split name, source ``real`` (it
    plays the part of the real data in the demo). Patch seeds derive from (seed, split, index).
    """
    name = "synthetic_tissue"
    label_names = ("normal", "tumour")
    check_keys = False  # keys are unique by construction (split, index)

    def __init__(self, counts: dict, size=64, seed=0, positive_fraction=0.5, chunk=128):
        if int(size) < 8:
            raise UserError(f"--size={size}: must be >= 8")
        self.size = int(size)
        self.image_shape = (self.size, self.size, 3)
        self.counts = {s: int(n) for s, n in counts.items() if int(n) > 0}
        if not self.counts:
            raise UserError("synthetic_tissue: all of --num_train/--num_valid/--num_test are 0")
        self.seed = int(seed)
        self.pos = float(positive_fraction)
        self.chunk = chunk
        self.total = sum(self.counts.values())
        self.report = {}
        self.provenance = {"source": "synthetic_tissue", "generator": "histaug_tf.data.synthetic_tissue",
                           "counts": self.counts, "size": self.size, "seed": self.seed,
                           "positive_fraction": self.pos}

    def jobs(self, encoding, progress_total=None):
        for si, (split, n) in enumerate(self.counts.items()):
            if progress_total is not None:
                progress_total(split, n)
            rng = np.random.default_rng([self.seed, si, 7])
            labels = np.zeros(n, np.int64)
            labels[: int(round(n * self.pos))] = 1
            labels = labels[rng.permutation(n)]
            seeds = np.random.SeedSequence([self.seed, si]).generate_state(n, np.uint64)
            for i in range(0, n, self.chunk):
                items = [(split, int(seeds[j]), int(labels[j]), f"synthetic_tissue/{split}/{j:06d}", split)
                         for j in range(i, min(n, i + self.chunk))]
                yield ("synthetic", encoding, self.size, items)


def _spawn_can_import_main() -> bool:
    """Spawned workers re-import ``__main__`` (by module name, or by file path). That is impossible
    for code read from stdin or ``-c``; then the conversion runs inline instead."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.isfile(path)  # no __file__ (interactive): nothing re-imported


def run_jobs(jobs, handle, workers: int, max_inflight=None, start_timeout=300):
    """Run ``encode_worker.process`` over ``jobs`` (in ``workers`` processes; 0 = inline) and call
    ``handle(result)`` in job order. Bounded: at most ``max_inflight`` jobs submitted ahead.

    Workers are spawned (not forked: the parent may hold TensorFlow threads), so like any
    multiprocessing code a calling script needs an ``if __name__ == "__main__":`` guard."""
    if workers > 0 and not _spawn_can_import_main():
        logging.warning("encoder processes cannot re-import __main__ (stdin / -c); encoding inline")
        workers = 0
    if workers <= 0:
        for job in jobs:
            handle(encode_worker.process(job))
        return
    max_inflight = max_inflight or 2 * workers + 2
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold TF threads
    # Ctrl-C reaches the whole process group: the workers ignore it (no traceback from each), the
    # main process stops, and leaving the `with` terminates them.
    with ctx.Pool(workers, initializer=encode_worker.ignore_sigint) as pool:
        try:  # a pool whose workers die at start-up would otherwise wait forever
            pool.apply_async(encode_worker.ping).get(start_timeout)
        except multiprocessing.TimeoutError:
            raise RuntimeError(f"encoder processes did not start within {start_timeout}s") from None
        pending = collections.deque()
        for job in jobs:
            pending.append(pool.apply_async(encode_worker.process, (job,)))
            while len(pending) >= max_inflight:
                handle(pending.popleft().get())
        while pending:
            handle(pending.popleft().get())
        pool.close()
        pool.join()


def make_source(dataset, src=None, tmp_dir=None, split="0.7,0.15,0.15", split_seed=0,
                undersized="pad", skip_bad=False, num_train=2000, num_valid=500, num_test=500,
                size=64, seed=0, positive_fraction=0.5, label_names=None, group_from="none",
                group_regex=None, positive_class=None):
    from histaug_tf.data.idc import parse_fractions

    if dataset not in DATASETS:
        raise UserError(f"--dataset={dataset}: expected one of {', '.join(DATASETS)}")
    if dataset != "synthetic_tissue" and not src:
        raise UserError(f"--dataset={dataset} needs --src")
    if dataset == "pcam":
        from histaug_tf.data.pcam import PcamSource
        return PcamSource(src, tmp_dir)
    if dataset == "idc":
        from histaug_tf.data.idc import IdcSource
        return IdcSource(src, parse_fractions(split), split_seed, undersized, skip_bad)
    if dataset in ("folder", "table"):
        from histaug_tf.data.folder import FolderSource
        return FolderSource(src, parse_fractions(split), split_seed, label_names,
                            undersized if undersized in ("pad", "drop") else "error",
                            group_from=group_from, group_regex=group_regex,
                            positive_class=positive_class, table=dataset == "table")
    return SyntheticSource({"train": num_train, "valid": num_valid, "test": num_test}, size, seed,
                           positive_fraction)


def convert(dataset, out, src=None, encoding="png", shard_size=None, overwrite=False, workers=None,
            skip_bad=False, tmp_dir=None, flags=None, quiet=None, **source_kwargs):
    """Convert ``dataset`` from ``src`` into ``out``; returns the manifest. See prepare_data.py."""
    from histaug_tf.data.writer import DEFAULT_SHARD_SIZE, prepare_output_dir

    workers = os.cpu_count() if workers is None else int(workers)
    out = os.path.abspath(out)
    # Refuse an existing output before doing any work (the writer checks again when it opens).
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        prepare_output_dir(out, overwrite=False)
    tmp_dir = tmp_dir or os.path.join(out, TMP_PREFIX + "decompress")
    source = make_source(dataset, src, tmp_dir=tmp_dir, skip_bad=skip_bad, **source_kwargs)
    prov = dict(source.provenance, flags=dict(flags or {}, dataset=dataset, encoding=encoding))
    progress = Progress(source.total, label=f"{source.name}", quiet=quiet)
    notes = collections.Counter()
    skipped = []

    def set_total(split, n):
        if source.total is None:
            progress.total = (progress.total or 0) + n

    with DatasetWriter(out, source.name, source.image_shape, encoding=encoding,
                       label_names=source.label_names,
                       shard_size=shard_size or DEFAULT_SHARD_SIZE,
                       overwrite=overwrite, provenance=prov,
                       check_keys=getattr(source, "check_keys", True)) as w:

        def handle(res):
            for path, problem in res["errors"]:
                if not skip_bad:
                    raise UserError(f"{path}: {problem}")
                skipped.append({"file": os.path.relpath(path, src) if src else path, "problem": problem})
            notes.update(res["notes"])
            for split, ser, label, key, group in res["records"]:
                w.add_serialized(split, ser, label, key, group)
            progress.update(len(res["records"]))

        try:
            run_jobs(source.jobs(encoding, set_total), handle, workers)
        finally:
            if os.path.isdir(tmp_dir) and tmp_dir.startswith(out):
                import shutil
                shutil.rmtree(tmp_dir, ignore_errors=True)
        report = dict(source.report)
        if skipped or "skipped" in report:
            report["skipped"] = list(report.get("skipped", [])) + skipped
        if notes:
            report.update({k: int(v) for k, v in sorted(notes.items())})
        w.input_report = report
        w.extra.update(getattr(source, "extra", None) or {"grouping": GROUPING.get(dataset)})
    progress.close()
    return w.manifest
