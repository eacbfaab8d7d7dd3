"""generate --filter_classifier: which synthetic patches are kept, against an independent replay of
the rule (seed order, the classifier's probability of the conditioning class, the quota, the draw
limit); a set whose labels are swapped is refused with no output; a real classifier run loads."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from histaug_tf.apps import generate as generate_lib
from histaug_tf.common import UserError
from test_generate import RES, nets  # noqa: F401  (nets: a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _template_model(t0, t1, k=40.0):
    """logit = k · (‖x − t0‖² − ‖x − t1‖²) / D: P(class 1) high near template 1."""
    import keras
    import tensorflow as tf

    class Templates(keras.Model):
        def call(self, x, training=False):
            d0 = tf.reduce_mean(tf.square(x - t0), axis=[1, 2, 3])
            d1 = tf.reduce_mean(tf.square(x - t1), axis=[1, 2, 3])
            return (k * (d0 - d1))[:, None]
    return Templates()


def _as_pipeline(images):
    return images.astype(np.float32) * (2 / 255) - 1


@pytest.fixture()
def template_filter(nets, monkeypatch):
    """The filter classifier: templates = mean images of the two per-class networks' outputs."""
    from histaug_tf.classifier import train as ct
    t0 = _as_pipeline(expected_images_unc(nets["G0"], range(100, 116))).mean(0)
    t1 = _as_pipeline(expected_images_unc(nets["G1"], range(100, 116))).mean(0)
    model = _template_model(t0, t1)
    opts = {"arch": "templates", "image_shape": [RES, RES, 3]}
    monkeypatch.setattr(ct, "load_trained", lambda run_dir: (model, opts))
    return model


def expected_images_unc(G, seeds):
    return np.stack([expected_images_const(G, s) for s in seeds])


def expected_images_const(G, s):
    z = np.random.RandomState(s).randn(1, G.z_dim).astype(np.float32)
    img = np.asarray(G(z, np.zeros([1, 0], np.float32), noise_mode="const"))[0]
    return np.clip(np.floor(img * 127.5 + 128), 0, 255).astype(np.uint8)


def _p1(model, images):
    return 1 / (1 + np.exp(-np.asarray(model(_as_pipeline(images)))[:, 0].astype(np.float64)))


def test_kept_patches_follow_the_rule(nets, template_filter, tmp_path):
    """A strict threshold keeps only part of each class: the kept seeds are exactly the first
    seeds, in order, whose class probability passes, and the counts add up."""
    model = template_filter
    seeds = np.arange(0, 60)
    conf = {0: 1 - _p1(model, expected_images_unc(nets["G0"], seeds)),
            1: _p1(model, expected_images_unc(nets["G1"], seeds))}
    thr = float(min(np.quantile(v, 0.4) for v in conf.values()))  # >= 60 % of each class pass
    num = 12
    out = str(tmp_path / "syn")
    generate_lib.generate_dataset(out, networks={0: nets["p0"], 1: nets["p1"]}, num_per_class=num,
                                  seed=0, batch_size=5, progress=False, filter_classifier="RUN",
                                  min_confidence=thr, filter_max_draws=4.0, filter_min_kept=0.5)
    m = json.load(open(os.path.join(out, "manifest.json")))
    f = m["provenance"]["filter"]
    assert f["min_confidence"] == thr and f["classifier"] == os.path.abspath("RUN")
    from histaug_tf.data.pipeline import make_dataset
    keys = sorted(k.decode() for k in (ex["key"].numpy() for ex in make_dataset(
        out, "train", pixel_range=None, with_meta=True)))
    for c, name in ((0, "normal"), (1, "tumour")):
        passing = np.nonzero(conf[c] >= thr)[0]
        want = passing[:num]
        assert len(want) == num
        got = sorted(int(k.rsplit("/", 1)[1]) for k in keys if f"/{name}/" in k)
        assert got == sorted(want.tolist()), (name, got, want)
        rec = f["per_class"][name]
        assert rec["kept"] == num and rec["drawn"] == want[-1] + 1
        assert rec["refused"] == rec["drawn"] - num == (conf[c][:want[-1] + 1] < thr).sum()
        assert rec["seeds"] == [0, int(want[-1])]
    assert m["splits"]["train"]["class_counts"] == [num, num]


def test_swapped_labels_are_refused(nets, template_filter, tmp_path):
    """Class 0 drawn from the class-1 network and vice versa: the classifier agrees with almost
    none of them; the set is refused in one error and nothing that looks like a dataset is left."""
    out = tmp_path / "swapped"
    with pytest.raises(UserError, match=r"agreed with only \d of 20 synthetic 'normal' patches"):
        generate_lib.generate_dataset(str(out), networks={0: nets["p1"], 1: nets["p0"]},
                                      num_per_class=10, seed=0, batch_size=8, progress=False,
                                      filter_classifier="RUN", filter_max_draws=2.0)
    assert not (out / "manifest.json").exists()
    # the right order passes the same filter in full
    generate_lib.generate_dataset(str(tmp_path / "ok"), networks={0: nets["p0"], 1: nets["p1"]},
                                  num_per_class=10, seed=0, batch_size=8, progress=False,
                                  filter_classifier="RUN")
    f = json.load(open(tmp_path / "ok" / "manifest.json"))["provenance"]["filter"]
    assert all(v["kept"] == 10 for v in f["per_class"].values())


@pytest.mark.slow
def test_cli_with_a_real_classifier_run(nets, tmp_path):
    """The CLI loads a finished train_classifier run (its options and best weights) and records
    the filter's counts; a classifier of another image size is one line, no output."""
    from histaug_tf.classifier import train as ct
    from histaug_tf.data.writer import DatasetWriter
    rng = np.random.default_rng(0)
    data = str(tmp_path / "real")
    with DatasetWriter(data, "real", (RES, RES, 3), encoding="raw") as w:
        for split, n in (("train", 40), ("valid", 20), ("test", 20)):
            for i in range(n):
                c = i % 2
                w.add(split, rng.integers(0, 255, (RES, RES, 3), dtype=np.uint8), c,
                      f"r/{split}/{i}", split)
    clf = str(tmp_path / "clf")
    ct.train_classifier(clf, data, batch_size=8, epochs=1, n_boot=10, strategy="default",
                        verbose=False)
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = tmp_path / "syn"
    p = subprocess.run([sys.executable, "-m", "histaug_tf.generate", f"--network={nets['run']}",
                        f"--outdir={out}", "--num_per_class=6", f"--filter_classifier={clf}",
                        "--min_confidence=0", "--filter_min_kept=0"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    f = json.load(open(out / "manifest.json"))["provenance"]["filter"]
    assert f["classifier"] == clf and {v["kept"] for v in f["per_class"].values()} == {6}
    assert "filter: normal kept 6 of 6 drawn; tumour kept 6 of 6 drawn" in p.stdout
    # a classifier trained at another size
    clf8 = str(tmp_path / "clf8")
    ct.train_classifier(clf8, data, resolution=8, batch_size=8, epochs=1, n_boot=10,
                        strategy="default", verbose=False)
    p = subprocess.run([sys.executable, "-m", "histaug_tf.generate", f"--network={nets['run']}",
                        f"--outdir={tmp_path / 'syn8'}", "--num_per_class=6",
                        f"--filter_classifier={clf8}"], env=env, capture_output=True, text=True,
                       timeout=300)
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 1 and err == [
        f"error: {clf8}: the classifier takes 8x8x3 images, the generator makes 16x16x3"], p.stderr
    assert not (tmp_path / "syn8").exists() or not os.listdir(tmp_path / "syn8")


def test_val_rule_uses_the_runs_youden_threshold(nets, template_filter, tmp_path):
    """--min_confidence=val: class 1 kept iff P(positive) >= the run's validation Youden
    threshold, class 0 iff below it."""
    run = tmp_path / "run"
    run.mkdir()
    p1 = _p1(template_filter, expected_images_unc(nets["G0"], range(0, 12)))
    t = float(np.median(p1))  # about half of the class-0 network's patches fall on each side
    (run / "metrics.json").write_text(json.dumps(
        {"auc": 0.8, "operating_points": {"val_youden": {"threshold": t}}}))
    out = str(tmp_path / "syn")
    generate_lib.generate_dataset(out, networks={0: nets["p0"], 1: nets["p0"]}, num_per_class=3,
                                  seed=0, batch_size=4, progress=False, filter_classifier=str(run),
                                  min_confidence="val", filter_min_kept=0.0)
    f = json.load(open(os.path.join(out, "manifest.json")))["provenance"]["filter"]
    assert f["val_threshold"] == t and f["min_confidence"] == "val"
    for c, name in ((0, "normal"), (1, "tumour")):
        keep = (p1 < t) if c == 0 else (p1 >= t)
        want = np.nonzero(keep)[0][:3]
        assert f["per_class"][name]["drawn"] == want[-1] + 1, (name, f["per_class"][name], want)
