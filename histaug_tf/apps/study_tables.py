"""The study's tables, built only from the cells' ``cell.json`` files: ``results.csv`` (one row per
dataset × fraction × seed × arm), ``results.md``, ``roc.png`` and (``apps.report``) ``report.html``.

``aggregate(outdir)`` regenerates all of them; every file is written atomically, so a table is
never half-written. Across seeds, each arm is compared with ``baseline`` and with ``classic``:
the per-seed Δ AUC (same seed, same subset, same test set) gives a mean with its 95 % Student-t
interval and a paired t test over seeds (``classifier.across_seeds``); each cell's own DeLong test
is in the per-cell table.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time

import numpy as np

from histaug_tf.apps.arms import ARMS, COMPARED_WITH, ORDER
from histaug_tf.classifier import evaluate as ev
from histaug_tf.common import UserError, write_text_atomic

CSV_COLUMNS = ["dataset", "fraction", "seed", "arm", "auc", "auc_lo", "auc_hi", "n_train",
               "auc_cluster_lo", "auc_cluster_hi",
               "delta_vs_baseline", "delta_vs_baseline_rel_pct", "delong_z_vs_baseline",
               "delong_p_vs_baseline", "cluster_p_vs_baseline", "delta_vs_classic",
               "delong_z_vs_classic", "delong_p_vs_classic", "cluster_p_vs_classic",
               "p_vs_baseline", "p_vs_classic", "p_method", "tumour_precision", "tumour_recall", "tumour_f1",
               "balanced_accuracy", "val_threshold", "tumour_f1_valthr", "brier", "ece",
               "target_specificity", "sensitivity_at_specificity", "specificity_at_specificity",
               "effective_synthetic_ratio", "auc_tstr", "memorization_share",
               "filter_kept_fraction_min", "status", "train_seconds"]


# ----------------------------------------------------------------------------- cells

def _upgrade(rec: dict) -> dict:
    """A cell.json written before arms (``baseline``/``augmented`` keys) in today's shape."""
    if "arms" in rec:
        return rec
    arms, delong = {}, {}
    if rec.get("baseline"):
        arms["baseline"] = rec["baseline"]
    if rec.get("augmented"):
        arms["gan"] = dict(rec["augmented"],
                           effective_synthetic_ratio=rec.get("effective_synthetic_ratio"))
        if rec.get("delong"):
            delong["gan"] = {"vs_baseline": rec["delong"]}
    return dict(rec, arms=arms, delong=delong, refused={})


def load_cells(outdir: str) -> list:
    recs = []
    root = os.path.join(outdir, "cells")
    for dirpath, _, files in os.walk(root):
        if "cell.json" in files:
            try:
                with open(os.path.join(dirpath, "cell.json")) as f:
                    recs.append(_upgrade(json.load(f)))
            except (OSError, ValueError) as e:
                raise UserError(f"{os.path.join(dirpath, 'cell.json')}: unreadable ({e})") from None
    recs.sort(key=lambda r: (r["dataset"], r["fraction"], r["seed"]))
    return recs


def cell_rows(r: dict) -> list:
    """One row per arm of a cell (refused arms included, without AUC)."""
    rows = []
    mem = (r.get("memorization") or {}).get("share")
    kept = [v["kept_fraction"] for v in (r.get("filter") or {}).values()]
    tstr = (r.get("tstr") or {}).get("auc")
    names = [a for a in ORDER if a in r["arms"] or a in r.get("refused", {})]
    for arm in names:
        m = r["arms"].get(arm)
        row = {"dataset": r["dataset"], "fraction": r["fraction"], "seed": r["seed"], "arm": arm,
               "n_train": r["n_train"], "status": "ok" if m else "refused by the filter"}
        if ARMS[arm].synthetic:
            row.update(auc_tstr=tstr, memorization_share=mem)
        if arm == "gan_filtered" and kept:
            row["filter_kept_fraction_min"] = min(kept)
        if m:
            cl = m.get("auc_ci_cluster") or [None, None]
            row.update(auc=m["auc"], auc_lo=m["auc_ci"][0], auc_hi=m["auc_ci"][1],
                       auc_cluster_lo=cl[0], auc_cluster_hi=cl[1],
                       tumour_precision=m["tumour_precision"], tumour_recall=m["tumour_recall"],
                       tumour_f1=m["tumour_f1"], balanced_accuracy=m["balanced_accuracy"],
                       val_threshold=m.get("val_threshold"),
                       tumour_f1_valthr=m.get("tumour_f1_valthr"), brier=m.get("brier"),
                       ece=m.get("ece"), target_specificity=m.get("target_specificity"),
                       sensitivity_at_specificity=m.get("sensitivity_at_specificity"),
                       specificity_at_specificity=m.get("specificity_at_specificity"),
                       effective_synthetic_ratio=m.get("effective_synthetic_ratio"),
                       train_seconds=m.get("train_seconds"))
            for ref in COMPARED_WITH:
                d = r.get("delong", {}).get(arm, {}).get(f"vs_{ref}")
                b = r["arms"].get(ref)
                if d and b:
                    row[f"delta_vs_{ref}"] = m["auc"] - b["auc"]
                    row[f"delong_z_vs_{ref}"] = d["z"]
                    row[f"delong_p_vs_{ref}"] = d["p_value"]
                    # the cell's p: the paired cluster bootstrap when the test set has groups
                    cluster = d.get("cluster")
                    row[f"cluster_p_vs_{ref}"] = cluster["p_value"] if cluster else None
                    row[f"p_vs_{ref}"] = cluster["p_value"] if cluster else d["p_value"]
                    row["p_method"] = ("paired cluster bootstrap" if cluster else "DeLong")
                    if ref == "baseline":
                        row["delta_vs_baseline_rel_pct"] = 100.0 * (m["auc"] - b["auc"]) / b["auc"]
        rows.append({c: row.get(c) for c in CSV_COLUMNS})
    return rows


# ----------------------------------------------------------------------------- markdown

def _fmt(v, nd=3):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _mean_sd(vals, nd=3, signed=False):
    """'mean ± sd' (sample sd over seeds), or the value alone for one seed."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    sign = "+" if signed else ""
    m = float(np.mean(vals))
    if len(vals) == 1:
        return f"{m:{sign}.{nd}f}"
    return f"{m:{sign}.{nd}f} ± {float(np.std(vals, ddof=1)):.{nd}f}"


def _delta_cells(rows, ref) -> tuple:
    """(mean Δ with its 95 % t interval, paired t p) over the seeds of ``rows`` against ``ref``."""
    from histaug_tf.classifier.across_seeds import summarize
    deltas = [r[f"delta_vs_{ref}"] for r in rows if r[f"delta_vs_{ref}"] is not None]
    if not deltas:
        return "–", "–"
    s = summarize(deltas)
    ci = "" if s["ci_lo"] is None else f" [{s['ci_lo']:+.3f}, {s['ci_hi']:+.3f}]"
    return f"{s['mean']:+.3f}{ci}", ("–" if s["p_t"] is None else f"{s['p_t']:.3g}")


def arms_markdown(groups: dict) -> str:
    """Per dataset × fraction × arm: AUC over seeds and the across-seed Δ against baseline and
    against classic (mean, 95 % Student-t interval over seeds, paired t test over seeds)."""
    out = ["| dataset | data | arm | seeds | n train | AUC | Δ vs baseline [95 % CI] | p | "
           "Δ vs classic [95 % CI] | p | tumour F1 | F1 at val. threshold |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (ds, fr), rows in groups.items():
        for arm in ORDER:
            rs = [r for r in rows if r["arm"] == arm]
            if not rs:
                continue
            ok = [r for r in rs if r["auc"] is not None]
            seeds = f"{len(ok)}" + (f" ({len(rs) - len(ok)} refused)" if len(ok) < len(rs) else "")
            db, pb = _delta_cells(ok, "baseline")
            dc, pc = _delta_cells(ok, "classic")
            out.append(f"| {ds} | {fr * 100:g} % | {arm} | {seeds} | {rs[0]['n_train']} "
                       f"| {_mean_sd([r['auc'] for r in ok])} | {db} | {pb} | {dc} | {pc} "
                       f"| {_mean_sd([r['tumour_f1'] for r in ok])} "
                       f"| {_mean_sd([r['tumour_f1_valthr'] for r in ok])} |")
    return "\n".join(out) + "\n"


def gan_checks_markdown(recs: list) -> str:
    """Per dataset × fraction: what the GANs' synthetic sets are (TSTR, memorisation, filter)."""
    groups: dict = {}
    for r in recs:
        if r.get("tstr") or r.get("memorization") or r.get("filter") or r.get("refused"):
            groups.setdefault((r["dataset"], r["fraction"]), []).append(r)
    if not groups:
        return ""
    out = ["| dataset | data | seed | TSTR AUC | memorisation share | closest / typical distance "
           "| filter: kept of drawn |", "|---|---|---|---|---|---|---|"]
    for (ds, fr), rs in groups.items():
        for r in rs:
            m = r.get("memorization") or {}
            dist = "–"
            if m.get("closest"):
                dist = (f"{m['closest'][0]['distance']:.3f} / "
                        f"{m['train_loo_percentiles']['50']:.3f}")
            filt = "–"
            if r.get("refused", {}).get("gan_filtered"):
                filt = "refused"
            elif r.get("filter"):
                filt = ", ".join(f"{k} {v['kept']}/{v['drawn']}" for k, v in r["filter"].items())
            out.append(f"| {ds} | {fr * 100:g} % | {r['seed']} | {_fmt((r.get('tstr') or {}).get('auc'))} "
                       f"| {_fmt(m.get('share'), 3)} | {dist} | {filt} |")
    return ("\n**The synthetic sets** (per cell). TSTR: a classifier trained on the synthetic set "
            "alone, tested on the real test set (0.5: no class signal). Memorisation share: the "
            "fraction of synthetic patches closer to a training patch than the 1st percentile of "
            "the training patches' distances to each other (≈ 0.01 for new tissue, near 1 for "
            "copies; docs/metrics.md), with the closest pair's distance against the median "
            "distance between training patches. Filter: synthetic patches the baseline "
            "classifier agreed with, of those drawn, per class (`gan_filtered`).\n\n"
            + "\n".join(out) + "\n")


def datasets_markdown(recs: list) -> str:
    """One line per dataset: its positive class and how its patches are grouped."""
    seen, out = set(), []
    for r in recs:
        if r["dataset"] in seen:
            continue
        seen.add(r["dataset"])
        grouping = r.get("grouping")
        how = {None: "not recorded", "split": "none within a split (intervals resample patches)",
               "none": "**none** — patches were split one by one, so patches of one slide or "
                       "patient may be in train and test; intervals resample patches"}.get(
            grouping, f"by {grouping} (intervals and per-cell p-values also resample groups)")
        out.append(f"Dataset **{r['dataset']}**: positive class '{r.get('positive_class') or '?'}'"
                   f"; groups: {how}.\n")
    return "".join(out) + ("\n" if out else "")


def results_markdown(rows: list, recs: list = ()) -> str:
    """The study table: per arm over seeds, the synthetic sets, then every cell × arm."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["fraction"]), []).append(r)
    out = io.StringIO()
    out.write(datasets_markdown(list(recs)))
    out.write("**Arms** (each seed: its own subset, GAN and classifiers; every arm of a seed trains "
              "on the same real patches and is tested on the same test set). AUC: mean ± sd over "
              "seeds. Δ: arm − reference per seed, mean with its 95 % Student-t interval over "
              "seeds; p: paired t test over seeds. Tumour F1 at threshold 0.5 and at the "
              "threshold that maximises it on the validation split.\n\n")
    out.write(arms_markdown(groups))
    out.write(gan_checks_markdown(list(recs)))
    out.write("\nPer cell (95 % stratified bootstrap intervals, and by group where the test set has "
              "groups; Δ with that cell's p on the same test set: the DeLong test, or the paired "
              "cluster bootstrap (marked 'cluster') when the test patches come in groups; "
              "tumour-class precision / recall / F1 at threshold 0.5):\n\n")
    out.write("| dataset | data | seed | arm | AUC [95 % CI] | Δ vs baseline (p) "
              "| Δ vs classic (p) | tumour P/R/F1 | Brier / ECE | sens. / spec. at val. spec. "
              "|\n|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        if r["auc"] is None:
            out.write(f"| {r['dataset']} | {r['fraction'] * 100:g} % | {r['seed']} | {r['arm']} "
                      f"| {r['status']} | – | – | – | – | – |\n")
            continue
        cal = f"{_fmt(r['brier'])} / {_fmt(r['ece'])}"
        op = ("–" if r["sensitivity_at_specificity"] is None else
              f"{r['sensitivity_at_specificity']:.2f} / {r['specificity_at_specificity']:.2f} "
              f"(target {r['target_specificity']:g})")
        ci = f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]"
        if r["auc_cluster_lo"] is not None:
            ci += f" (by group [{r['auc_cluster_lo']:.3f}, {r['auc_cluster_hi']:.3f}])"
        mark = {"DeLong": "", "paired cluster bootstrap": " cluster", None: ""}[r["p_method"]]
        d = {ref: ("–" if r[f"delta_vs_{ref}"] is None
                   else f"{r[f'delta_vs_{ref}']:+.3f} ({r[f'p_vs_{ref}']:.3g}{mark})")
             for ref in COMPARED_WITH}
        prf = "/".join(_fmt(r[f"tumour_{m}"], 2) for m in ("precision", "recall", "f1"))
        out.write(f"| {r['dataset']} | {r['fraction'] * 100:g} % | {r['seed']} | {r['arm']} "
                  f"| {ci} | {d['baseline']} | {d['classic']} | {prf} | {cal} | {op} |\n")
    return out.getvalue()


# ----------------------------------------------------------------------------- files

def plot_study_roc(outdir: str, recs: list, path: str) -> bool:
    """One panel per dataset × fraction (first seed): every arm's ROC curve and TSTR's."""
    from histaug_tf.classifier.train import load_predictions
    panels = []
    seen = set()
    for r in recs:
        key = (r["dataset"], r["fraction"])
        if key in seen:
            continue
        seen.add(key)
        cdir = os.path.join(outdir, r["dir"])
        curves = []
        runs = [(a, ARMS[a].run_dir) for a in ORDER] + [("gan", "clf_augmented"),
                                                         ("tstr", "clf_tstr")]
        for kind, rd in runs:
            rd = os.path.join(cdir, rd)
            if os.path.exists(os.path.join(rd, "predictions.npz")) and \
                    kind not in [c[0] for c in curves]:
                y, p, _ = load_predictions(rd)
                curves.append((kind, y, p))
        if curves:
            panels.append((f"{r['dataset']} {r['fraction'] * 100:g} % (seed {r['seed']})", curves))
    if not panels:
        return False
    ev.plot_roc_panels(path, panels)
    return True


def _remove_stale_temps(outdir: str, min_age_s: float = 600.0) -> None:
    """Delete temporary files a killed run left in ``outdir`` (old enough not to be another
    array task's write in flight)."""
    now = time.time()
    with contextlib.suppress(OSError):
        for name in os.listdir(outdir):
            if ".tmp-" in name:
                p = os.path.join(outdir, name)
                with contextlib.suppress(OSError):
                    if os.path.isfile(p) and now - os.path.getmtime(p) > min_age_s:
                        os.unlink(p)


def aggregate(outdir: str) -> str:
    """Regenerate results.csv, results.md, roc.png and report.html from every cell.json; return
    the markdown."""
    _remove_stale_temps(outdir)
    recs = load_cells(outdir)
    rows = [row for r in recs for row in cell_rows(r)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    os.makedirs(outdir, exist_ok=True)
    write_text_atomic(os.path.join(outdir, "results.csv"), buf.getvalue())
    md = results_markdown(rows, recs)
    write_text_atomic(os.path.join(outdir, "results.md"), md)
    if rows:
        plot_study_roc(outdir, recs, os.path.join(outdir, "roc.png"))
        from histaug_tf.apps.report import write_report
        write_report(outdir, recs)
    return md
