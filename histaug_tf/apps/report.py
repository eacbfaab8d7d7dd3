"""The study's report: one self-contained ``report.html`` (every image embedded) in the study directory.

It reads only what the study wrote (``results.md``, ``roc.png``, each ``cells/.../cell.json`` with its
subset, synthetic set and GAN run directories) and shows, in the order a reader needs them:

1. the across-seed answer and the per-cell table (``results.md`` rendered as HTML tables);
2. the ROC panels;
3. per cell: every arm's AUC (and TSTR); real training patches against synthetic patches, one row
   pair per class (the first patches of each, so the same cell always shows the same patches); the
   GAN's fakes at the start and the end of training; the memorisation check (its share and the
   closest synthetic/training pairs side by side); what the filter kept of the synthetic patches
   (or that it refused them);
4. the published numbers of the study this project ports, for orientation.

``write_report(outdir, recs)`` is called by the study's aggregation; ``python -m histaug_tf.experiment
--aggregate_only`` rewrites it. A missing picture (a cell without a GAN, a run whose fakes were not
written) is stated in the report as missing, never silently left out.

An app-layer module without an entry point of its own: used by the experiment app (``apps/experiment.py``).
"""
from __future__ import annotations

import base64
import glob
import html
import io
import json
import os
import re

import numpy as np

from histaug_tf.apps.arms import ARMS, ORDER
from histaug_tf.common import write_text_atomic

# The reference study's reported ROC AUC gains from GAN augmentation (one run each).
PUBLISHED = [("PCAM", "3 %", "+5.9 %"), ("PCAM", "20 %", "+11.3 %"),
             ("IDC", "3 %", "+3.4 %"), ("IDC", "20 %", "+2.4 %")]

PATCHES_PER_ROW = 8


def _png_data_uri(image: np.ndarray) -> str:
    from PIL import Image
    img = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _img(uri: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(alt)}"{w} style="image-rendering:pixelated">'


def _missing(what: str) -> str:
    return f'<p class="missing">({html.escape(what)}: not available)</p>'


def markdown_tables_to_html(md: str) -> str:
    """The pipe tables and paragraphs of ``results.md`` as HTML (nothing else occurs there)."""
    out, rows = [], []

    def flush():
        if not rows:
            return
        head, body = rows[0], [r for r in rows[2:]]
        out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                   + "</tr></thead><tbody>")
        for r in body:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        out.append("</tbody></table>")
        rows.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            rows.append([c.strip() for c in s[1:-1].split("|")])
            continue
        flush()
        if s:
            s = html.escape(s)
            s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
            out.append(f"<p>{s}</p>")
    flush()
    return "\n".join(out)


def _first_patches(data_dir: str, resolution, resize_mode: str, label: int, n: int):
    """The first ``n`` patches of class ``label`` of the train split, uint8 NHWC (or None)."""
    from histaug_tf.data.pipeline import make_dataset
    try:
        ds = make_dataset(data_dir, "train", resolution=resolution, resize_mode=resize_mode,
                          pixel_range=None, batch_size=n, class_filter=label, deterministic=True)
        for images, _ in ds.take(1):
            return images.numpy()
    except Exception:  # noqa: BLE001 — a report shows what it can; the table is the result
        return None
    return None


def _cell_patches(outdir: str, rec: dict) -> str:
    from histaug_tf.data.images import image_grid
    cdir = os.path.join(outdir, rec["dir"])
    subset = sorted(glob.glob(os.path.join(cdir, "subsets", "*", "manifest.json")))
    synthetic = os.path.join(cdir, "synthetic", "manifest.json")
    names = rec.get("label_names") or ["normal", "tumour"]
    res = rec.get("resolution")
    if res is None and os.path.exists(synthetic):  # show real patches as the classifier saw them
        with open(synthetic, encoding="utf-8") as f:
            res = int(json.load(f)["image_shape"][0])
    parts = ['<table class="patches"><tr><th>class</th><th>real (training subset)</th>'
             '<th>synthetic</th></tr>']
    for c, name in enumerate(names):
        cells = []
        for mpath in (subset[0] if subset else None,
                      synthetic if os.path.exists(synthetic) else None):
            imgs = None if mpath is None else _first_patches(
                os.path.dirname(mpath), res, rec.get("resize_mode", "crop"), c, PATCHES_PER_ROW)
            if imgs is None or len(imgs) == 0:
                cells.append(_missing("patches"))
            else:
                grid = image_grid(imgs, cols=len(imgs))
                scale = max(1, 64 // imgs.shape[1])
                cells.append(_img(_png_data_uri(grid), f"{name} patches", grid.shape[1] * scale))
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _cell_fakes(outdir: str, rec: dict) -> str:
    cdir = os.path.join(outdir, rec["dir"])
    runs = sorted(d for d in glob.glob(os.path.join(cdir, "gan*")) if os.path.isdir(d))
    if not runs:
        return _missing("GAN fakes")
    out = []
    for rd in runs:
        snaps = sorted(glob.glob(os.path.join(rd, "fakes[0-9]*.png")))
        first = os.path.join(rd, "fakes_init.png")
        pics = [("start", first if os.path.exists(first) else None),
                ("end", snaps[-1] if snaps else None)]
        row = []
        for label, p in pics:
            if p is None:
                row.append(_missing(f"{os.path.basename(rd)} fakes at the {label}"))
            else:
                kimg = re.findall(r"fakes(\d+)\.png$", p)
                cap = f"{label} ({int(kimg[0])} kimg)" if kimg else label
                row.append(f"<figure>{_img(_file_data_uri(p), os.path.basename(p), 256)}"
                           f"<figcaption>{html.escape(os.path.basename(rd))}: {cap}</figcaption>"
                           "</figure>")
        out.append('<div class="row">' + "".join(row) + "</div>")
    return "\n".join(out)


def _auc(rec: dict, kind: str) -> str:
    r = rec.get("arms", {}).get(kind) if kind in ARMS else rec.get(kind)
    if not r:
        return "–"
    lo, hi = r.get("auc_ci", [None, None])
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{r['auc']:.3f}{ci}"


def _cell_reliability(outdir: str, rec: dict) -> str:
    """A reliability diagram of the cell's arms (from their test predictions)."""
    import tempfile
    from histaug_tf.classifier import evaluate as ev
    from histaug_tf.classifier.train import load_predictions
    cdir = os.path.join(outdir, rec["dir"])
    curves = []
    for a in ORDER:
        rd = os.path.join(cdir, ARMS[a].run_dir)
        if a in rec.get("arms", {}) and os.path.exists(os.path.join(rd, "predictions.npz")):
            y, p, _ = load_predictions(rd)
            curves.append((a, y, p))
    if not curves:
        return _missing("reliability diagram (no test predictions)")
    with tempfile.TemporaryDirectory() as d:
        png = os.path.join(d, "reliability.png")
        ev.plot_reliability(png, curves, title="calibration on the test set")
        uri = _file_data_uri(png)
    return (f"<figure>{_img(uri, 'reliability diagram', 320)}<figcaption>reliability: observed "
            "frequency of the positive class against the mean prediction, 10 bins</figcaption>"
            "</figure>")


def _cell_synthetic_checks(outdir: str, rec: dict) -> str:
    """The memorisation check (share, closest pairs) and the filter's counts of one cell."""
    cdir = os.path.join(outdir, rec["dir"])
    out = []
    m = rec.get("memorization")
    if m is not None:
        out.append(f"<p>Memorisation: {m['share']:.3f} of {m['n_synthetic']} synthetic patches are "
                   f"closer to a training patch than the 1st percentile of the training patches' "
                   f"distances to each other (≈ 0.01 for new tissue, near 1 for copies).</p>")
        png = os.path.join(cdir, m.get("pairs_png") or "memorization_pairs.png")
        if os.path.exists(png):
            d = ", ".join(f"{p['distance']:.3f}" for p in m.get("closest", []))
            cap = (f"closest pairs: top synthetic, bottom the nearest training patch (turned as "
                   f"matched); distances {d} (median between training patches "
                   f"{m['train_loo_percentiles']['50']:.3f})")
            out.append(f"<figure>{_img(_file_data_uri(png), 'closest pairs', 512)}"
                       f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        else:
            out.append(_missing("memorisation closest pairs"))
    if rec.get("refused", {}).get("gan_filtered"):
        out.append("<p>Filter: refused — " + html.escape(rec["refused"]["gan_filtered"]) + "</p>")
    elif rec.get("filter"):
        kept = "; ".join(f"{k}: kept {v['kept']} of {v['drawn']} drawn ({v['kept_fraction']:.0%})"
                         for k, v in rec["filter"].items())
        out.append(f"<p>Filter (patches the baseline classifier agreed with): "
                   f"{html.escape(kept)}</p>")
    return "\n".join(out)


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:middle}
figure{display:inline-block;margin:0 1em 1em 0}.row{display:flex;flex-wrap:wrap}
.missing{color:#a00}h3{margin-top:2em;border-top:1px solid #ccc;padding-top:1em}"""


def build_report(outdir: str, recs: list) -> str:
    """The report's HTML text for the study in ``outdir`` with the cell records ``recs``."""
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
             "<title>histaug_tf study report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>GAN augmentation study</h1>",
             f"<p>{len(recs)} cells in <code>{html.escape(os.path.abspath(outdir))}</code>.</p>"]
    md_path = os.path.join(outdir, "results.md")
    parts.append("<h2>Results</h2>")
    if os.path.exists(md_path):
        with open(md_path, encoding="utf-8") as f:
            parts.append(markdown_tables_to_html(f.read()))
    else:
        parts.append(_missing("results.md"))
    parts.append("<h2>ROC curves</h2>")
    roc = os.path.join(outdir, "roc.png")
    parts.append(_img(_file_data_uri(roc), "ROC panels", 900) if os.path.exists(roc)
                 else _missing("roc.png"))
    parts.append("<h2>Cells</h2>")
    for rec in recs:
        title = f"{rec['dataset']} · {rec['fraction'] * 100:g} % · seed {rec['seed']}"
        parts.append(f'<h3 id="{html.escape(rec["dir"])}">{html.escape(title)}</h3>')
        aucs = [f"{a} {_auc(rec, a)}" for a in ORDER if a in rec.get("arms", {})]
        aucs += [f"{a} refused by the filter" for a in rec.get("refused", {})]
        if rec.get("tstr"):
            aucs.append(f"TSTR {_auc(rec, 'tstr')}")
        parts.append(f"<p>{rec.get('n_train', '?')} training patches · AUC "
                     + html.escape(" · ".join(aucs)) + "</p>")
        parts.append(_cell_reliability(outdir, rec))
        if not rec.get("tstr") and not any(ARMS[a].synthetic for a in rec.get("arms", {})):
            parts.append("<p>No GAN in this cell (all-data reference, or no GAN arm).</p>")
            continue
        parts.append(_cell_patches(outdir, rec))
        parts.append(_cell_fakes(outdir, rec))
        parts.append(_cell_synthetic_checks(outdir, rec))
    parts.append("<h2>Published numbers, for orientation</h2>")
    parts.append("<p>ROC AUC gain from GAN augmentation reported by the study this project ports "
                 "(one run per cell, real PCAM / IDC data, full-size networks); the demo's "
                 "synthetic tissue set and small networks are not comparable in size.</p>")
    parts.append("<table><tr><th>dataset</th><th>labelled data</th><th>AUC gain</th></tr>"
                 + "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in PUBLISHED)
                 + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(outdir: str, recs: list) -> str:
    """Write ``outdir/report.html`` atomically from the study's cell records; return its path."""
    path = os.path.join(outdir, "report.html")
    write_text_atomic(path, build_report(outdir, recs))
    return path


def report_index(path: str) -> dict:
    """For checks: the cell ids (``h3`` anchors) and the number of embedded images of a report."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {"cells": re.findall(r'<h3 id="([^"]+)"', text),
            "images": len(re.findall(r'<img src="data:image/png;base64,', text)),
            "missing": re.findall(r'<p class="missing">\(([^)]*)\)', text)}

