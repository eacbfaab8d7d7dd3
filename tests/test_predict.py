"""A model you can use: train_classifier writes model.keras (its input mapping inside, P(positive)
out) that loads in a process that never imports histaug_tf; predict reproduces the run's test
predictions and AUC; bad image files are counted, not raised; calibration and operating points
against direct computations."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from histaug_tf.classifier import evaluate as ev
from histaug_tf.classifier import train as ct
from histaug_tf.data.writer import DatasetWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORED, RES = 20, 16


def _img(rng, label):
    x = rng.normal(110, 25, (STORED, STORED, 3))
    if label:
        i, j = rng.integers(4, STORED - 10, size=2)
        x[i:i + 6, j:j + 6] += 30
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    data = str(root / "data")
    rng = np.random.default_rng(0)
    with DatasetWriter(data, "pat", (STORED, STORED, 3), encoding="raw",
                       label_names=("normal", "tumour")) as w:
        for split, n_pat in (("train", 16), ("valid", 6), ("test", 8)):
            for pt in range(n_pat):
                lab = pt % 2
                for j in range(10):
                    w.add(split, _img(rng, lab), lab, f"pat/{split}/{pt}/{j}", f"{split}{pt}")
    out = str(root / "clf")
    m = ct.train_classifier(out, data, resolution=RES, resize_mode="crop", batch_size=32,
                            epochs=3, n_boot=100, strategy="default", verbose=False)
    return data, out, m


def test_metrics_calibration_and_operating_points(run):
    data, out, m = run
    y, p, _ = ct.load_predictions(out)
    c = m["calibration"]
    assert c["brier"] == pytest.approx(np.mean((p - y) ** 2))
    ece = 0.0
    for b in range(10):  # bins (b/10, (b+1)/10], the first one closed at 0
        inb = [(pi, yi) for pi, yi in zip(p, y) if (b / 10 < pi <= (b + 1) / 10) or (b == 0 and pi == 0)]
        if inb:
            ece += len(inb) / len(p) * abs(np.mean([v for _, v in inb]) - np.mean([q for q, _ in inb]))
    assert c["ece"] == pytest.approx(ece, abs=1e-12)
    op = m["operating_points"]
    for k in ("val_max_f1", "val_specificity"):
        t = op[k]["threshold"]
        assert op[k]["sensitivity"] == pytest.approx(np.mean(p[y == 1] >= t))
        assert op[k]["specificity"] == pytest.approx(np.mean(p[y == 0] < t))
    assert m["auc_ci_cluster"][0] <= m["auc"] <= m["auc_ci_cluster"][1] and m["num_groups"] == 8
    assert os.path.exists(os.path.join(out, "reliability.png"))


def test_threshold_for_specificity_against_brute_force():
    rng = np.random.default_rng(4)
    y = (rng.random(200) < 0.4).astype(int)
    s = np.round(rng.normal(size=200) + y, 1)
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        t = ev.threshold_for_specificity(y, s, target)
        ok = [c for c in np.r_[np.unique(s), np.inf] if np.mean(s[y == 0] < c) >= target]
        assert t == min(ok)


def test_predict_reproduces_the_run(run, tmp_path):
    from histaug_tf.apps.predict import predict
    data, out, m = run
    r = predict(out, str(tmp_path / "p.csv"), data=data, split="test", n_boot=100)
    assert r["metrics"]["auc"] == m["auc"]
    import csv
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    y, p, k = ct.load_predictions(out)
    want = dict(zip([x.decode() for x in k], p))
    assert len(rows) == len(want) == 80
    for row in rows:
        assert float(row["p_positive"]) == pytest.approx(want[row["key"]], abs=1e-6)
        assert row["group"].startswith("test") and row["label_name"] in ("normal", "tumour")
    assert json.load(open(tmp_path / "p.json"))["metrics"]["auc"] == m["auc"]


def test_model_loads_without_histaug_tf(run, tmp_path):
    """A fresh process that imports only keras (and NumPy) loads model.keras and predicts the
    run's test patches at their stored size (the crop to the training size is inside)."""
    data, out, m = run
    from histaug_tf.data.pipeline import make_dataset
    x = np.concatenate([b["image"].numpy() for b in make_dataset(
        data, "test", pixel_range=None, batch_size=80, with_meta=True)])
    keys = np.concatenate([b["key"].numpy() for b in make_dataset(
        data, "test", pixel_range=None, batch_size=80, with_meta=True)])
    np.save(tmp_path / "x.npy", x)
    code = (f"import sys, numpy as np, keras\n"
            f"m = keras.models.load_model({os.path.join(out, 'model.keras')!r})\n"
            f"p = np.asarray(m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))[:, 0]\n"
            f"np.save({str(tmp_path / 'p.npy')!r}, p)\n"
            f"print('histaug_tf imported:', any(k.startswith('histaug_tf') for k in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "histaug_tf imported: False" in proc.stdout
    y, p, k = ct.load_predictions(out)
    want = dict(zip(k.tolist(), p))
    got = np.load(tmp_path / "p.npy")
    np.testing.assert_allclose(got, [want[kk] for kk in keys.tolist()], atol=1e-6)


@pytest.mark.slow
def test_cli_on_a_folder_counts_bad_files(run, tmp_path):
    data, out, m = run
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(9)
    for i in range(5):
        Image.fromarray(_img(rng, i % 2)).save(d / "sub" / f"ok{i}.png")
    Image.fromarray(_img(rng, 0)[:10, :10]).save(d / "small.png")
    Image.fromarray(_img(rng, 0)[..., 0]).save(d / "grey.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    p = subprocess.run([sys.executable, "-m", "histaug_tf.predict", f"--model={out}",
                        f"--images={d}", f"--out={tmp_path / 'f.csv'}"],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "wrote 5 predictions" in p.stdout and "skipped 3 files" in p.stdout
    rep = json.load(open(tmp_path / "f.json"))
    probs = {s["file"]: s["problem"] for s in rep["skipped"]["files"]}
    assert set(probs) == {"small.png", "grey.png", "broken.png"}
    assert probs["small.png"].startswith("image is 10x10x3") and "grayscale" in probs["grey.png"]
    assert probs["broken.png"].startswith("unreadable")
    assert len(open(tmp_path / "f.csv").read().splitlines()) == 6


def test_youden_threshold_against_brute_force():
    rng = np.random.default_rng(5)
    y = (rng.random(150) < 0.35).astype(int)
    s = np.round(rng.normal(size=150) + y, 1)
    t = ev.youden_threshold(y, s)
    j = {c: np.mean(s[y == 1] >= c) + np.mean(s[y == 0] < c) - 1 for c in np.unique(s)}
    best = max(j.values())
    assert t == max(c for c, v in j.items() if v >= best - 1e-12)
