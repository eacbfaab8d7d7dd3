"""The augmentation study: dataset × fraction × seed cells, each

    subset → classifiers of the real-only arms (baseline, classic) → GAN (conditional, or one per
    class) → generate (and the set filtered by the baseline classifier) → memorisation check →
    classifiers of the GAN arms (gan, gan_filtered, gan+classic; apps/arms.py) and TSTR →
    evaluate on the full test split,

and the aggregated tables (apps/study_tables.py). ``python -m histaug_tf.experiment`` is the thin entry.

Layout of ``--outdir``::

    data/<name>/                     datasets prepared by the experiment (``--prepare``), if any
    results.csv  results.md  roc.png  report.html   regenerated from every cell.json on each run
    cells/<dataset>/f<fraction>/s<seed>/
        subsets/  gan/ (or gan_c0/, gan_c1/)  synthetic/  synthetic_filtered/
        clf_<arm>/ (one per arm)  clf_tstr/  memorization.json  memorization_pairs.png
        logs/<stage>.log             stdout/stderr of each stage's subprocess
        cell.json                    the cell's results — written LAST, atomically

Resumption: every step is skipped when its output is complete (a manifest.json, a GAN ``.done``
marker, a classifier's metrics.json), and a cell with a ``cell.json`` is skipped entirely; killing
the experiment at any moment and rerunning the same command loses at most the step that was running
(the GAN stage resumes from its own checkpoints). The table is always regenerated from the cell files,
so it is never half-written. For SLURM arrays run one cell per task (``--fractions=<one>
--seeds=<one>``) into a shared ``--outdir`` and finish with ``--aggregate_only``.

A fraction of 1 (``--fractions=...,1``) runs ``full_data_arms`` (default: the baseline) on all the
training data (no GAN), the reference for how much the scarce-data cells lose.

The GAN, subset, generate and prepare stages run as subprocesses (``python -m histaug_tf.<stage>``),
the classifiers in this process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
from absl import logging

from histaug_tf.apps.arms import ARMS, COMPARED_WITH, ORDER as ARM_ORDER
from histaug_tf.classifier import evaluate as ev
from histaug_tf.common import UserError, file_lock, write_json_atomic


@dataclasses.dataclass
class StudyConfig:
    outdir: str
    data: list                      # dataset directories (manifest.json), or names to --prepare
    fractions: list = dataclasses.field(default_factory=lambda: [0.03, 0.2])
    seeds: list = dataclasses.field(default_factory=lambda: [0])
    prepare: str = ""               # '' or a prepare_data --dataset name (e.g. synthetic_tissue)
    prepare_args: str = ""          # extra prepare_data flags
    subset_args: str = ""
    resolution: int = 32
    resize_mode: str = "crop"
    # GAN
    gan_mode: str = "conditional"   # conditional | per_class
    gan_cfg: str = "demo"
    gan_kimg: float = 10
    gan_args: str = ""
    # generate
    num_synthetic_per_class: int = 1000
    truncation: float = 1.0
    generate_args: str = ""
    # classifier
    arch: str = "small_cnn"
    weights: str = "none"
    clf_batch: int = 64
    clf_epochs: int = 30
    clf_min_steps_per_epoch: int = 1
    clf_lr: float = 1e-3
    clf_patience: int = 5
    balance: str = "class_weight"
    synthetic_ratio: float | None = 0.5
    synthetic_count: int | None = None
    tstr: bool = True
    # arms (apps/arms.py): which classifiers each cell trains; at fraction 1 only full_data_arms
    arms: list = dataclasses.field(default_factory=lambda: list(ARM_ORDER))
    full_data_arms: list = dataclasses.field(default_factory=lambda: ["baseline"])
    full_data_seeds: list | None = None   # seeds of the fraction-1 cells (None: every seed)
    classic_augment: str = "flips,hed_light,hsv_light,bc"
    filter_min_confidence: str = "val"   # generate --min_confidence: a probability or 'val'
    filter_max_draws: float = 4.0
    filter_min_kept: float = 0.5
    memorization: bool = True
    memorization_max: int = 2000   # synthetic patches compared per cell (split over the classes)
    n_boot: int = 1000
    strategy: str = "auto"
    mixed_precision: bool = False
    # control
    aggregate_only: bool = False
    redo_changed: bool = False      # redo a finished step whose recorded flags differ (else refuse)
    stop_after_cells: int = 0        # testing: stop after this many newly finished cells (0 = all)


# ----------------------------------------------------------------------------- small helpers

def frac_tag(f: float) -> str:
    """0.03 → 'f0.03', 1 → 'f1' (stable directory names)."""
    return "f" + (f"{f:.6f}".rstrip("0").rstrip("."))


def cell_dir(outdir: str, dataset: str, fraction: float, seed: int) -> str:
    return os.path.join(outdir, "cells", dataset, frac_tag(fraction), f"s{seed}")


def _has_manifest(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "manifest.json"))


def run_stage(module: str, args: list, log_path: str) -> None:
    """Run ``python -m histaug_tf.<module> args`` with output to ``log_path``; UserError on failure."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    cmd = [sys.executable, "-m", f"histaug_tf.{module}", *[str(a) for a in args]]
    logging.info("run: %s", " ".join(shlex.quote(c) for c in cmd))
    t0 = time.time()
    with open(log_path, "ab") as log:
        log.write(("\n$ " + " ".join(shlex.quote(c) for c in cmd) + "\n").encode())
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = ""
        with contextlib.suppress(OSError), open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 2000))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
            tail = lines[-1] if lines else ""
        raise UserError(f"{log_path}: stage {module} failed with exit code {rc}: {tail}")
    logging.info("done: %s (%.0fs)", module, time.time() - t0)


# ----------------------------------------------------------------------------- step records
#
# Every finished step records the flags it was made with in ``<cell>/steps/<step>.json`` (prepared
# datasets: ``<outdir>/steps/prepare-<name>.json``). A step's flags include those of the steps it
# reads (a GAN's include its subset's), so a change anywhere upstream shows at every later step.
# A finished step whose record differs from the current flags is refused (one line naming the step
# directory and the differing flags) unless ``redo_changed``, which redoes it. A step without a
# record (made before records existed) is reused and its record written.

def _json_norm(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _flag_diff(old: dict, new: dict, prefix: str = "") -> list:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _flag_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _record_path(steps_dir: str, step: str) -> str:
    return os.path.join(steps_dir, f"{step}.json")


def check_step(cfg: StudyConfig, steps_dir: str, step: str, out_dir: str, flags: dict,
               done: bool, adopt=None) -> bool:
    """Whether the finished step ``step`` (output ``out_dir``) can be reused with ``flags``.

    Returns True to reuse, False to (re)do it. Raises ``UserError`` for a finished step whose
    recorded flags differ, unless ``cfg.redo_changed``. A finished step without a record is
    adopted: ``adopt()`` (if given; e.g. a verification) runs, then its record is written."""
    if not done:
        return False
    rp = _record_path(steps_dir, step)
    if not os.path.exists(rp):
        if adopt is not None:
            adopt()
        record_step(steps_dir, step, out_dir, flags)
        return True
    try:
        with open(rp, encoding="utf-8") as f:
            old = json.load(f)["flags"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{rp}: unreadable step record ({e}); delete it to reuse {out_dir}") from None
    diff = _flag_diff(old, _json_norm(flags))
    if not diff:
        return True
    if cfg.redo_changed:
        logging.info("%s: flags changed (%s); redoing it", out_dir, "; ".join(diff))
        return False
    raise UserError(f"{out_dir}: made with other flags ({'; '.join(diff)}); pass --redo_changed to "
                    f"redo it (and what depends on it), or use another --outdir")


def record_step(steps_dir: str, step: str, out_dir: str, flags: dict) -> None:
    write_json_atomic(_record_path(steps_dir, step),
                      {"dir": os.path.abspath(out_dir), "flags": _json_norm(flags),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _data_identity(data_dir: str) -> dict:
    """What identifies a dataset's content: its directory, name, labels and shard checksums."""
    from histaug_tf.common import file_sha256
    from histaug_tf.data.manifest import load_manifest
    m = load_manifest(data_dir, check="exists")
    shards = sorted(sh.get("sha256", "") for info in m["splits"].values()
                    for sh in info.get("shards", []))
    import hashlib
    return {"dir": os.path.abspath(data_dir), "name": m["name"], "label_names": m["label_names"],
            "shards_sha256": hashlib.sha256("".join(shards).encode()).hexdigest(),
            "manifest_sha256": None if shards else file_sha256(os.path.join(data_dir, "manifest.json"))}


# ----------------------------------------------------------------------------- stages

def prepare_dataset(cfg: StudyConfig, entry: str) -> str:
    """Return the dataset directory for a ``--data`` entry, preparing it when asked."""
    if _has_manifest(entry):
        return entry
    if not cfg.prepare:
        raise UserError(f"{entry}: no manifest.json (prepare it with histaug_tf.prepare_data, or "
                        f"pass --prepare=<dataset>)")
    d = entry if os.path.isabs(entry) or os.sep in entry else os.path.join(cfg.outdir, "data", entry)
    steps = os.path.join(cfg.outdir, "steps")
    step = "prepare-" + os.path.basename(os.path.normpath(d))
    flags = {"dataset": cfg.prepare, "prepare_args": cfg.prepare_args, "out": os.path.abspath(d)}
    from histaug_tf.data.manifest import verify_shards
    with file_lock(os.path.join(cfg.outdir, ".prepare.lock")):  # SLURM array tasks share it
        # verified once, after it was written (or when a run that wrote it stopped before its
        # record): later steps trust the manifest's sizes
        if not check_step(cfg, steps, step, d, flags, _has_manifest(d),
                          adopt=lambda: verify_shards(d)):
            args = [f"--dataset={cfg.prepare}", f"--out={d}", "--overwrite",
                    *shlex.split(cfg.prepare_args)]
            run_stage("prepare_data", args, os.path.join(cfg.outdir, "logs", "prepare_data.log"))
            verify_shards(d)
            record_step(steps, step, d, flags)
    return d


def subset_flags(cfg, data_dir, fraction, seed) -> dict:
    return {"data": _data_identity(data_dir), "fraction": fraction, "seed": seed,
            "subset_args": cfg.subset_args}


def make_subset(cfg, data_dir, fraction, seed, out, logs, steps=None, flags=None) -> str:
    """The train subset of one cell: ``<out>/frac<f>/`` written by ``histaug_tf.subset``."""
    from histaug_tf.data.subsets import frac_dirname
    d = os.path.join(out, frac_dirname(fraction))
    steps = steps or os.path.join(os.path.dirname(out), "steps")
    flags = flags if flags is not None else subset_flags(cfg, data_dir, fraction, seed)
    if not check_step(cfg, steps, "subset", d, flags, _has_manifest(d)):
        args = [f"--src={data_dir}", f"--fractions={fraction}", f"--seed={seed}", f"--out={out}",
                "--overwrite", *shlex.split(cfg.subset_args)]
        run_stage("subset", args, os.path.join(logs, "subset.log"))
        record_step(steps, "subset", d, flags)
    return d


def gan_flags(cfg, seed, upstream: dict) -> dict:
    return {"subset": upstream, "gan_mode": cfg.gan_mode, "gan_cfg": cfg.gan_cfg,
            "gan_kimg": cfg.gan_kimg, "seed": seed, "resolution": cfg.resolution,
            "resize_mode": cfg.resize_mode, "gan_args": cfg.gan_args}


def train_gans(cfg, subset_dir, cdir, seed, logs, num_classes=2, flags=None) -> dict:
    """Train the GAN(s); return {'network': dir} (conditional) or {'networks': {c: dir}}."""
    import shutil
    steps = os.path.join(cdir, "steps")
    common = [f"--data={subset_dir}", f"--cfg={cfg.gan_cfg}", f"--kimg={cfg.gan_kimg}",
              f"--seed={seed}", f"--resolution={cfg.resolution}", f"--resize={cfg.resize_mode}",
              *shlex.split(cfg.gan_args)]
    runs = {}
    if cfg.gan_mode == "conditional":
        runs[None] = (os.path.join(cdir, "gan"), ["--cond"])
    elif cfg.gan_mode == "per_class":
        for c in range(num_classes):
            runs[c] = (os.path.join(cdir, f"gan_c{c}"), ["--nocond", f"--class_filter={c}"])
    else:
        raise UserError(f"--gan_mode={cfg.gan_mode}: expected conditional or per_class")
    for c, (rd, extra) in runs.items():
        done = os.path.join(rd, ".done")
        name = "train_gan" if c is None else f"train_gan_c{c}"
        step_flags = dict(flags or {}, args=[*common, *extra])
        finished = os.path.exists(done)
        if not check_step(cfg, steps, os.path.basename(rd), rd, step_flags, finished):
            if finished:  # redo: train_gan would resume from the old run's checkpoints
                shutil.rmtree(rd)
            run_stage("train_gan", [f"--outdir={rd}", *common, *extra],
                      os.path.join(logs, f"{name}.log"))
            write_json_atomic(done, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            record_step(steps, os.path.basename(rd), rd, step_flags)
    if cfg.gan_mode == "conditional":
        return {"network": runs[None][0]}
    return {"networks": {c: rd for c, (rd, _) in runs.items()}}


def generate_synthetic(cfg, gans, out, seed, logs, flags=None, extra=()) -> str:
    """The cell's synthetic set ``out`` (step name: its directory's name); ``extra`` generate
    flags (the filter's)."""
    steps = os.path.join(os.path.dirname(out), "steps")
    step = os.path.basename(out)
    flags = dict(flags or {}, num_synthetic_per_class=cfg.num_synthetic_per_class,
                 truncation=cfg.truncation, generate_args=cfg.generate_args, seed=seed)
    if not check_step(cfg, steps, step, out, flags, _has_manifest(out)):
        if "network" in gans:
            net = [f"--network={gans['network']}"]
        else:
            net = ["--networks=" + ",".join(f"{c}:{d}" for c, d in sorted(gans["networks"].items()))]
        args = [*net, f"--num_per_class={cfg.num_synthetic_per_class}", f"--seed={seed}",
                f"--outdir={out}", f"--trunc={cfg.truncation}", "--overwrite",
                *shlex.split(cfg.generate_args), *extra]
        run_stage("generate", args, os.path.join(logs, f"generate_{step}.log"
                                                 if extra else "generate.log"))
        record_step(steps, step, out, flags)
    return out


def _clf_kwargs(cfg: StudyConfig, seed: int) -> dict:
    """The classifier settings every arm shares (an arm adds its data and augmentation)."""
    return dict(arch=cfg.arch, weights=cfg.weights, resolution=cfg.resolution,
                resize_mode=cfg.resize_mode, batch_size=cfg.clf_batch, epochs=cfg.clf_epochs,
                min_steps_per_epoch=cfg.clf_min_steps_per_epoch, learning_rate=cfg.clf_lr,
                patience=cfg.clf_patience, balance=cfg.balance, seed=seed, strategy=cfg.strategy,
                mixed_precision=cfg.mixed_precision, n_boot=cfg.n_boot, overwrite=True)


def run_classifier(kind: str, run_dir: str, cfg: StudyConfig, seed: int, **kw) -> dict:
    """Train one classifier unless its metrics.json exists; return its metrics."""
    from histaug_tf.classifier.train import read_metrics, train_classifier
    m = read_metrics(run_dir)
    if m is not None:
        return m
    logging.info("classifier %s → %s", kind, run_dir)
    import keras
    keras.backend.clear_session()
    return train_classifier(run_dir, **kw, **_clf_kwargs(cfg, seed))


def _classifier_step(cfg, cdir, kind, run_dir, seed, inputs: dict, augment="flips", **kw) -> dict:
    """``run_classifier`` behind the step check: a finished run made with other flags is refused,
    or (``redo_changed``) its metrics.json removed so that it is trained again. ``augment`` is
    recorded when it is not the default flips (so records of studies before arms still match)."""
    flags = {"kind": kind, "inputs": inputs,
             **{k: v for k, v in _clf_kwargs(cfg, seed).items()
                if k not in ("overwrite", "strategy", "mixed_precision")}}
    if augment != "flips":
        flags["augment"] = augment
    steps = os.path.join(cdir, "steps")
    metrics = os.path.join(run_dir, "metrics.json")
    reuse = check_step(cfg, steps, f"clf_{kind}", run_dir, flags, os.path.exists(metrics))
    if not reuse and os.path.exists(metrics):
        os.remove(metrics)  # unfinished now: run_classifier trains it again (overwrite=True)
    m = run_classifier(kind, run_dir, cfg, seed, augment=augment, **kw)
    if not reuse:
        record_step(steps, f"clf_{kind}", run_dir, flags)
    return m


def cell_arms(cfg: StudyConfig, fraction: float) -> list:
    """The arms a cell trains: ``cfg.arms``, or at fraction 1 (no GAN) ``cfg.full_data_arms``
    without the GAN arms."""
    if fraction >= 1.0:
        return [a for a in cfg.full_data_arms if ARMS[a].synthetic is None]
    return list(cfg.arms)


def cell_flags(cfg: StudyConfig, data_dir: str, fraction: float, seed: int) -> dict:
    """Every flag a cell's results depend on (recorded in its cell.json)."""
    sub = subset_flags(cfg, data_dir, fraction, seed)
    arms = cell_arms(cfg, fraction)
    out = {"subset": sub, "classifier": {k: v for k, v in _clf_kwargs(cfg, seed).items()
                                         if k not in ("overwrite", "strategy", "mixed_precision")},
           "arms": arms}
    if any(ARMS[a].classic for a in arms):
        out["classic_augment"] = cfg.classic_augment
    if fraction < 1.0:
        out.update(gan=gan_flags(cfg, seed, sub),
                   generate={"num_synthetic_per_class": cfg.num_synthetic_per_class,
                             "truncation": cfg.truncation, "generate_args": cfg.generate_args},
                   synthetic_ratio=cfg.synthetic_ratio, synthetic_count=cfg.synthetic_count,
                   tstr=cfg.tstr, memorization=cfg.memorization)
        if "gan_filtered" in arms:
            out["filter"] = _filter_settings(cfg)
        if cfg.memorization:
            out["memorization_max"] = cfg.memorization_max
    return _json_norm(out)


def finished_cell(cfg: StudyConfig, cdir: str, flags: dict):
    """The cell.json record of a finished cell made with ``flags``, or None: not finished, or made
    with other flags. Such a cell is run again: its steps reuse what has not changed and refuse
    (or, with ``redo_changed``, redo) what has; its old cell.json stays until the new one replaces
    it, except with ``redo_changed``, which removes it first."""
    cell_json = os.path.join(cdir, "cell.json")
    if not os.path.exists(cell_json):
        return None
    try:
        with open(cell_json) as f:
            rec = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{cell_json}: unreadable ({e})") from None
    if "flags" not in rec:  # written before cells recorded their flags
        return rec
    diff = _flag_diff(rec["flags"], flags)
    if not diff:
        return rec
    logging.info("%s: flags changed (%s); checking its steps", cdir, "; ".join(diff))
    if cfg.redo_changed:
        os.remove(cell_json)
    return None


# ----------------------------------------------------------------------------- one cell

def _filter_settings(cfg: StudyConfig) -> dict:
    return {"min_confidence": cfg.filter_min_confidence, "max_draws": cfg.filter_max_draws,
            "min_kept": cfg.filter_min_kept}


def _tumour(m: dict, label_names) -> dict:
    pc = m["per_class"]
    name = label_names[1] if label_names[1] in pc else sorted(pc)[-1]
    return pc[name]


def _aligned_predictions(run_a: str, run_b: str):
    """(labels, scores of a, scores of b, groups or None) of two runs' test predictions, in one
    order (by key when they differ)."""
    from histaug_tf.classifier.train import load_groups, load_predictions
    ya, pa, ka = load_predictions(run_a)
    yb, pb, kb = load_predictions(run_b)
    ga = load_groups(run_a)
    if len(ka) != len(kb):
        raise UserError(f"{run_a}, {run_b}: test sets differ in size ({len(ka)} vs {len(kb)})")
    if not np.array_equal(ka, kb):
        ia, ib = np.argsort(ka, kind="stable"), np.argsort(kb, kind="stable")
        if not np.array_equal(ka[ia], kb[ib]):
            raise UserError(f"{run_a}, {run_b}: test sets hold different keys")
        ya, pa, yb, pb = ya[ia], pa[ia], yb[ib], pb[ib]
        ga = None if ga is None else ga[ia]
    if not np.array_equal(ya, yb):
        raise UserError(f"{run_a}, {run_b}: test labels differ")
    return ya, pa, pb, ga


@dataclasses.dataclass
class _Cell:
    """What the steps of one cell share."""
    cfg: StudyConfig
    dir: str
    seed: int
    train_dir: str
    sub_flags: dict
    real: dict            # val_data / test_data: the full dataset
    logs: str
    synthetic: dict = dataclasses.field(default_factory=dict)   # set name -> (dir, flags)

    def arm(self, name: str) -> dict:
        """Train (or reuse) the classifier of arm ``name``; return its metrics."""
        arm = ARMS[name]
        augment = self.cfg.classic_augment if arm.classic else "flips"
        inputs = {"train": self.sub_flags}
        kw = dict(train_data=self.train_dir, **self.real)
        if arm.synthetic:
            sdir, sflags = self.synthetic[arm.synthetic]
            mix = ({"synthetic_count": self.cfg.synthetic_count}
                   if self.cfg.synthetic_count is not None
                   else {"synthetic_ratio": self.cfg.synthetic_ratio})
            inputs.update(synthetic=sflags, **mix)
            kw.update(synthetic_data=sdir, **mix)
        return _classifier_step(self.cfg, self.dir, name, os.path.join(self.dir, arm.run_dir),
                                self.seed, inputs, augment=augment, **kw)


def _filtered_set(cell: _Cell, gans: dict, syn_flags: dict):
    """(the synthetic set filtered by the baseline classifier, None), or (None, the reason) when
    the filter refused it (a GAN whose patches of a class the classifier rejects): the refusal is
    recorded in ``<cell>/synthetic_filtered.refused.json`` and repeated, not retried, while the
    flags match."""
    from histaug_tf.apps.generate import FILTER_REFUSED
    cfg = cell.cfg
    out = os.path.join(cell.dir, "synthetic_filtered")
    flags = dict(syn_flags, filter=dict(_filter_settings(cfg), classifier=_json_norm(
        {"kind": "baseline", "inputs": {"train": cell.sub_flags}})))
    refused = os.path.join(cell.dir, "synthetic_filtered.refused.json")
    if os.path.exists(refused):
        with open(refused, encoding="utf-8") as f:
            rec = json.load(f)
        if not _flag_diff(rec["flags"], _json_norm(dict(flags, seed=cell.seed))):
            return None, rec["reason"]
        os.remove(refused)
    extra = [f"--filter_classifier={os.path.join(cell.dir, ARMS['baseline'].run_dir)}",
             f"--min_confidence={cfg.filter_min_confidence}",
             f"--filter_max_draws={cfg.filter_max_draws}",
             f"--filter_min_kept={cfg.filter_min_kept}"]
    try:
        return generate_synthetic(cfg, gans, out, cell.seed, cell.logs, flags=flags,
                                  extra=extra), None
    except UserError as e:
        if FILTER_REFUSED not in str(e):
            raise
        write_json_atomic(refused, {"reason": str(e), "flags": _json_norm(dict(flags, seed=cell.seed))})
        logging.warning("%s: the filter refused the synthetic set: %s", cell.dir, e)
        return None, str(e)


def _filter_record(syn_dir: str) -> dict | None:
    from histaug_tf.data.manifest import load_manifest
    f = load_manifest(syn_dir, check="exists").get("provenance", {}).get("filter")
    if not f:
        return None
    return {name: {"drawn": v["drawn"], "kept": v["kept"],
                   "kept_fraction": v["kept_fraction_of_drawn"]}
            for name, v in f["per_class"].items()}


def _memorization_step(cell: _Cell, syn_dir: str, syn_flags: dict, num_classes: int) -> dict:
    """The memorisation check of the cell's synthetic set against its real subset
    (``memorization.json`` and the closest pairs side by side in ``memorization_pairs.png``)."""
    from histaug_tf.data.images import image_grid
    from histaug_tf.data.pipeline import read_images
    from histaug_tf.metrics import memorization as mem
    from histaug_tf.common import save_png
    cfg = cell.cfg
    out = os.path.join(cell.dir, "memorization.json")
    steps = os.path.join(cell.dir, "steps")
    flags = {"synthetic": syn_flags, "train": cell.sub_flags, "max": cfg.memorization_max}
    if check_step(cfg, steps, "memorization", out, flags, os.path.exists(out)):
        with open(out, encoding="utf-8") as f:
            return json.load(f)
    kw = dict(resolution=cfg.resolution, resize_mode=cfg.resize_mode)
    real = read_images(cell.train_dir, "train", **kw)
    per = max(1, cfg.memorization_max // num_classes)
    syn = np.concatenate([read_images(syn_dir, "train", limit=per, class_filter=c, **kw)
                          for c in range(num_classes)])
    r = mem.memorization(real, syn)
    if r["closest"]:
        views = mem.dihedral(real)
        top = [syn[p["synthetic"]] for p in r["closest"]]
        bottom = [views[p["orientation"], p["train"]] for p in r["closest"]]
        save_png(os.path.join(cell.dir, "memorization_pairs.png"),
                 image_grid(np.stack(top + bottom), cols=len(top)))
        r["pairs_png"] = "memorization_pairs.png"
    write_json_atomic(out, r)
    record_step(steps, "memorization", out, flags)
    return r


def _gan_steps(cell: _Cell, arms: list, rec: dict, metrics: dict, man: dict) -> None:
    """The GAN half of a cell: GAN(s), synthetic set, memorisation check, filtered set, the GAN
    arms' classifiers (into ``metrics``) and TSTR (into ``rec``)."""
    from histaug_tf.data.manifest import check_same_label_names, load_manifest
    cfg, cdir, seed, logs = cell.cfg, cell.dir, cell.seed, cell.logs
    label_names = list(man.get("label_names", ["normal", "tumour"]))
    g_flags = gan_flags(cfg, seed, cell.sub_flags)
    gans = train_gans(cfg, cell.train_dir, cdir, seed, logs, num_classes=len(label_names),
                      flags=g_flags)
    syn = generate_synthetic(cfg, gans, os.path.join(cdir, "synthetic"), seed, logs,
                             flags={"gan": g_flags})
    check_same_label_names(man, load_manifest(syn))
    syn_flags = {"gan": g_flags, "num_synthetic_per_class": cfg.num_synthetic_per_class,
                 "truncation": cfg.truncation, "generate_args": cfg.generate_args}
    cell.synthetic["synthetic"] = (syn, syn_flags)
    if cfg.memorization:
        rec["memorization"] = _memorization_step(cell, syn, syn_flags, len(label_names))
    if "gan_filtered" in arms:
        fsyn, reason = _filtered_set(cell, gans, syn_flags)
        if fsyn is None:
            rec["refused"]["gan_filtered"] = reason
        else:
            check_same_label_names(man, load_manifest(fsyn))
            cell.synthetic["synthetic_filtered"] = (fsyn, dict(syn_flags, filter=_json_norm(
                _filter_settings(cfg))))
            rec["filter"] = _filter_record(fsyn)
    for name in [a for a in arms if ARMS[a].synthetic and a not in rec["refused"]]:
        metrics[name] = cell.arm(name)
    if cfg.tstr:
        mt = _classifier_step(cfg, cdir, "tstr", os.path.join(cdir, "clf_tstr"), seed,
                              {"train": syn_flags}, train_data=syn, **cell.real)
        rec["tstr"] = _summary(mt, label_names)


def run_cell(cfg: StudyConfig, data_dir: str, dataset: str, fraction: float, seed: int) -> dict:
    """Run (or finish) one cell; write and return its cell.json record."""
    from histaug_tf.data.manifest import check_same_label_names, load_manifest

    cdir = cell_dir(cfg.outdir, dataset, fraction, seed)
    flags = cell_flags(cfg, data_dir, fraction, seed)
    rec = finished_cell(cfg, cdir, flags)
    if rec is not None:
        return rec
    t0 = time.time()
    logs = os.path.join(cdir, "logs")
    os.makedirs(logs, exist_ok=True)
    man = load_manifest(data_dir)
    label_names = list(man.get("label_names", ["normal", "tumour"]))
    full = fraction >= 1.0
    sub_flags = subset_flags(cfg, data_dir, fraction, seed)
    train_dir = data_dir if full else make_subset(cfg, data_dir, fraction, seed,
                                                  os.path.join(cdir, "subsets"), logs,
                                                  os.path.join(cdir, "steps"), sub_flags)
    tman = load_manifest(train_dir)
    check_same_label_names(man, tman)
    rec = {"dataset": dataset, "fraction": fraction, "seed": seed,
           "n_train": int(tman["splits"]["train"]["num_examples"]),
           "train_class_counts": tman["splits"]["train"].get("class_counts"),
           "label_names": label_names, "dir": os.path.relpath(cdir, cfg.outdir),
           "grouping": man.get("grouping"),
           "positive_class": man.get("positive_class", label_names[-1]),
           "arms": {}, "refused": {}, "delong": {}}
    # Validation and test come from the full dataset (a subset's valid/test reference the parent's).
    cell = _Cell(cfg, cdir, seed, train_dir, sub_flags, dict(val_data=data_dir, test_data=data_dir),
                 logs)
    arms = cell_arms(cfg, fraction)
    metrics = {}
    for name in ("baseline", "classic"):  # the filter needs the baseline classifier
        if name in arms or (name == "baseline" and "gan_filtered" in arms):
            metrics[name] = cell.arm(name)
    if not full and (cfg.tstr or any(ARMS[a].synthetic for a in arms)):
        _gan_steps(cell, arms, rec, metrics, man)
    for name in arms:
        if name in metrics:
            rec["arms"][name] = _summary(metrics[name], label_names)
            rec["arms"][name]["effective_synthetic_ratio"] = metrics[name].get(
                "effective_synthetic_ratio")
    for name in rec["arms"]:  # each arm against baseline and classic (DeLong, same test set)
        for ref in COMPARED_WITH:
            if ref != name and ref in rec["arms"]:
                y, p_ref, p_arm, groups = _aligned_predictions(
                    os.path.join(cdir, ARMS[ref].run_dir), os.path.join(cdir, ARMS[name].run_dir))
                test = ev.delong_test(y, p_arm, p_ref)
                if ev.has_groups(groups):  # patches of a slide/patient are not independent
                    test["cluster"] = ev.paired_cluster_bootstrap(y, p_arm, p_ref, groups,
                                                                  n_boot=cfg.n_boot, seed=seed)
                rec["delong"].setdefault(name, {})[f"vs_{ref}"] = test
    rec["seconds"] = round(time.time() - t0, 1)
    rec["flags"] = flags
    write_json_atomic(os.path.join(cdir, "cell.json"), rec)
    return rec


def _summary(m: dict, label_names) -> dict:
    t = _tumour(m, label_names)
    out = {"auc": m["auc"], "auc_ci": m["auc_ci"], "auc_ci_cluster": m.get("auc_ci_cluster"),
           "accuracy": m["accuracy"],
           "balanced_accuracy": m["balanced_accuracy"], "tumour_precision": t["precision"],
           "tumour_recall": t["recall"], "tumour_f1": t["f1"], "best_epoch": m.get("best_epoch"),
           "epochs_run": m.get("epochs_run"), "train_seconds": m.get("train_seconds")}
    v = m.get("at_val_threshold")
    if v:  # hard decisions at the threshold chosen on validation data (max tumour F1)
        out.update(val_threshold=v["threshold"], tumour_f1_valthr=_tumour(v, label_names)["f1"],
                   balanced_accuracy_valthr=v["balanced_accuracy"])
    cal = m.get("calibration")
    if cal:
        out.update(brier=cal["brier"], ece=cal["ece"])
    ops = m.get("operating_points") or {}
    if "val_specificity" in ops:
        o = ops["val_specificity"]
        out.update(sensitivity_at_specificity=o["sensitivity"],
                   specificity_at_specificity=o["specificity"],
                   target_specificity=o["target_specificity_on_validation"])
    return out


# ----------------------------------------------------------------------------- aggregation

def aggregate(outdir: str) -> str:
    """Regenerate results.csv, results.md, roc.png and report.html from every cell.json; return
    the markdown (``study_tables``)."""
    from histaug_tf.apps.study_tables import aggregate as _aggregate
    return _aggregate(outdir)


def load_cells(outdir: str) -> list:
    from histaug_tf.apps.study_tables import load_cells as _load
    return _load(outdir)


# ----------------------------------------------------------------------------- the study

def run_study(cfg: StudyConfig) -> str:
    """Run every unfinished cell, then aggregate. Returns the results markdown."""
    if not cfg.outdir:
        raise UserError("--outdir is required")
    from histaug_tf.apps.arms import parse_arms
    from histaug_tf.classifier.stain import parse_augment
    cfg.arms = parse_arms(cfg.arms)  # refused in one line before anything is written
    cfg.full_data_arms = parse_arms(cfg.full_data_arms, "--full_data_arms")
    parse_augment(cfg.classic_augment)
    os.makedirs(cfg.outdir, exist_ok=True)
    if cfg.aggregate_only:
        md = aggregate(cfg.outdir)
        if not load_cells(cfg.outdir):
            raise UserError(f"{cfg.outdir}: no finished cells to aggregate")
        return md
    if not cfg.data:
        raise UserError("--data: give at least one dataset directory")
    for f in cfg.fractions:
        if not 0 < f <= 1:
            raise UserError(f"--fractions: {f} is not in (0, 1]")
    from histaug_tf.data.manifest import load_manifest
    t0 = time.time()
    new = 0
    for entry in cfg.data:
        data_dir = prepare_dataset(cfg, entry)
        dataset = load_manifest(data_dir)["name"]
        for fraction in cfg.fractions:
            for seed in cfg.seeds:
                if fraction >= 1.0 and cfg.full_data_seeds is not None and \
                        seed not in cfg.full_data_seeds:
                    continue
                cdir = cell_dir(cfg.outdir, dataset, fraction, seed)
                if finished_cell(cfg, cdir, cell_flags(cfg, data_dir, fraction, seed)) is not None:
                    logging.info("cell %s done already, skipped", os.path.relpath(cdir, cfg.outdir))
                    continue
                logging.info("cell %s ...", os.path.relpath(cdir, cfg.outdir))
                rec = run_cell(cfg, data_dir, dataset, fraction, seed)
                new += 1
                logging.info("cell %s finished in %.0fs", rec["dir"], rec["seconds"])
                aggregate(cfg.outdir)
                if cfg.stop_after_cells and new >= cfg.stop_after_cells:
                    return aggregate(cfg.outdir)
    md = aggregate(cfg.outdir)
    logging.info("study finished in %.0fs (%d new cells)", time.time() - t0, new)
    return md
