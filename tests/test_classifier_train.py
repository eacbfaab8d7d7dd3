"""Classifier training end to end on tiny datasets written with the data writer.

Independent references: sklearn's AUC on the saved predictions, a fresh model loaded from the kept
best checkpoint reproducing those predictions, and hand-computed class weights / steps."""
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histaug_tf.classifier import train as ct
from histaug_tf.common import UserError
from histaug_tf.data.writer import DatasetWriter

S = 16  # the small CNN runs at any size; 16x16 keeps this fast


def _img(rng, label, s=S):
    x = rng.normal(110, 25, (s, s, 3))
    if label:  # a bright square somewhere in the centre region: easy but not trivial
        i, j = rng.integers(2, s - 8, size=2)
        x[i:i + 6, j:j + 6] += 25
    return np.clip(x, 0, 255).astype(np.uint8)


def _write(path, name, counts, seed, source="real", splits=("train", "valid", "test"),
           shard_size=200):
    rng = np.random.default_rng(seed)
    with DatasetWriter(str(path), name, (S, S, 3), encoding="raw", shard_size=shard_size) as w:
        for split in splits:
            n0, n1 = counts[split]
            labels = [0] * n0 + [1] * n1
            for i, lab in enumerate(labels):
                w.add(split, _img(rng, lab), lab, f"{name}/{split}/{i}", split, source=source)
    return str(path)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    d = tmp_path_factory.mktemp("real") / "real"
    return _write(d, "real", {"train": (120, 40), "valid": (60, 30), "test": (80, 40)}, 0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn") / "syn"
    return _write(d, "syn", {"train": (50, 50)}, 1, source="synthetic", splits=("train",))


def test_training_plan_matches_hand_computation():
    w, steps = ct.training_plan([300, 100], [0, 0], 0.0, 64, "class_weight")
    np.testing.assert_allclose(w, [400 / (2 * 300), 400 / (2 * 100)])
    assert steps == 7  # ceil(400 / 64)
    # mixed: p = 0.75*[.75,.25] + 0.25*[.5,.5] = [.6875, .3125]
    w, steps = ct.training_plan([300, 100], [500, 500], 0.25, 64, "class_weight")
    np.testing.assert_allclose(w, [1 / (2 * 0.6875), 1 / (2 * 0.3125)])
    assert steps == 9  # ceil(400 / 0.75 / 64) = ceil(8.33)
    w, _ = ct.training_plan([300, 100], [0, 0], 0.0, 64, "none")
    np.testing.assert_allclose(w, [1, 1])


def test_train_early_stops_keeps_best_checkpoint_and_metrics(real, tmp_path):
    import keras
    from histaug_tf.classifier.models import build_model
    from histaug_tf.data.pipeline import make_dataset

    out = str(tmp_path / "run")
    m = ct.train_classifier(out, real, batch_size=32, epochs=30, patience=2, n_boot=100,
                            strategy="default", verbose=False, learning_rate=3e-3)
    files = set(os.listdir(out))
    assert {"metrics.json", "best.weights.h5", "predictions.npz", "roc.png", "history.json",
            "options.json", "tb"} <= files
    y, p, keys = ct.load_predictions(out)
    assert len(y) == 120 and y.sum() == 40 and len(set(keys.tolist())) == 120
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    hist = json.load(open(os.path.join(out, "history.json")))
    assert m["auc"] > 0.75, m["auc"]  # the task is learnable in a few epochs
    assert len({h["val_auc"] for h in hist}) > 1  # ... and not trivial: val AUC changes
    assert json.load(open(os.path.join(out, "metrics.json")))["auc"] == m["auc"]
    # early stopping: stopped exactly `patience` epochs after the best validation AUC
    best = max(range(len(hist)), key=lambda i: hist[i]["val_auc"])  # first maximum
    assert m["best_epoch"] == best + 1 and m["best_val_auc"] == pytest.approx(hist[best]["val_auc"])
    assert m["epochs_run"] == len(hist) == best + 1 + 2 < 30
    # the kept checkpoint is the best-validation one and reproduces the test predictions
    keras.backend.clear_session()
    model = build_model("small_cnn", (S, S, 3), weights=os.path.join(out, "best.weights.h5"))
    ds = make_dataset(real, "test", pixel_range=(-1, 1), batch_size=64)
    p2 = np.concatenate([1 / (1 + np.exp(-np.asarray(model(x, training=False))[:, 0]))
                         for x, _ in ds])
    np.testing.assert_allclose(p2, p, atol=1e-5)
    # the second threshold is the validation split's max-F1 one, applied to the test predictions
    vds = make_dataset(real, "valid", pixel_range=(-1, 1), batch_size=64)
    yv = np.concatenate([np.asarray(yb) for _, yb in vds])
    pv = np.concatenate([1 / (1 + np.exp(-np.asarray(model(x, training=False))[:, 0])) for x, _ in vds])
    f1v = [2 * ((pv >= t) & (yv == 1)).sum() / ((pv >= t).sum() + (yv == 1).sum()) for t in pv]
    at = m["at_val_threshold"]
    t_ref = max(t for t, f in zip(pv, f1v) if f >= max(f1v) - 1e-12)  # largest among ties
    assert at["threshold"] == pytest.approx(t_ref, abs=1e-5)
    pred = p >= at["threshold"]
    tp = (pred & (y == 1)).sum()
    assert at["per_class"]["tumour"]["f1"] == pytest.approx(2 * tp / (pred.sum() + y.sum()))
    # TensorBoard: per-epoch validation AUC and the test PR curve
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(os.path.join(out, "tb", "test"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "test_pr_curve/pr_curves" in acc.Tags()["tensors"]
    acc = ea.EventAccumulator(os.path.join(out, "tb", "validation"), size_guidance={"tensors": 0})
    acc.Reload()
    import tensorflow as tf
    vals = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("epoch_auc")]
    np.testing.assert_allclose(vals, [h["val_auc"] for h in hist], rtol=1e-6)
    # a finished run is not silently redone
    with pytest.raises(UserError, match="already finished"):
        ct.train_classifier(out, real, epochs=1, verbose=False)


def test_augmented_and_tstr(real, synthetic, tmp_path):
    m = ct.train_classifier(str(tmp_path / "aug"), real, synthetic_data=synthetic,
                            synthetic_count=60, batch_size=32, epochs=1, n_boot=50,
                            strategy="default", verbose=False)
    assert m["effective_synthetic_ratio"] == pytest.approx(60 / 220)
    opts = json.load(open(tmp_path / "aug" / "options.json"))
    assert opts["steps_per_epoch"] == 7  # ceil(160 / (160/220) / 32) = ceil(6.875)
    m2 = ct.train_classifier(str(tmp_path / "aug2"), real, synthetic_data=synthetic,
                             synthetic_ratio=0.5, balance="sampling", batch_size=32, epochs=1,
                             n_boot=50, strategy="default", verbose=False)
    assert m2["effective_synthetic_ratio"] == 0.5
    # TSTR as the study runs it: trained on the synthetic set, validated and tested on the real one
    t = ct.train_classifier(str(tmp_path / "tstr"), synthetic, val_data=real, test_data=real,
                            batch_size=32, epochs=1, n_boot=50, strategy="default", verbose=False)
    assert t["num_examples"] == 120 and t["num_real_train"] == 100


def test_bad_inputs(real, synthetic, tmp_path):
    with pytest.raises(UserError, match="only 100"):
        ct.train_classifier(str(tmp_path / "x"), real, synthetic_data=synthetic,
                            synthetic_count=1000, verbose=False)
    with pytest.raises(UserError, match="no split"):
        ct.train_classifier(str(tmp_path / "y"), synthetic, verbose=False)  # no valid split
    with pytest.raises(UserError, match="need --synthetic_data"):
        ct.train_classifier(str(tmp_path / "z"), real, synthetic_ratio=0.3, verbose=False)
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def _take(ds, n):
    return [{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in e.items()}
            if isinstance(e, dict) else tuple(v.numpy() for v in e) for e in ds.take(n)]


@pytest.mark.parametrize("case, p, q", [
    (dict(synthetic_ratio=0.25), 1, 4),   # 1 synthetic in every 4
    (dict(synthetic_count=30), 1, 3),     # 30 / (30 + 60 real) = 1/3
])
def test_the_stream_train_classifier_fits_on_mixes_synthetic_at_the_ratio(tmp_path, monkeypatch,
                                                                         case, p, q):
    """Measured on the real training stream (not arithmetic on options): train_classifier's own
    call of ``training_stream`` is recorded, replayed with ``with_meta`` (the same elements, checked
    against the replay without it), and every block of q consecutive elements holds exactly p
    examples whose ``source`` is ``synthetic`` and whose key is in the synthetic split; the same
    with the stream sharded over 2 workers (disjoint real keys, same share per block)."""
    real = _write(tmp_path / "real", "real", {"train": (30, 30), "valid": (8, 8), "test": (8, 8)},
                  0, shard_size=15)
    syn = _write(tmp_path / "syn", "syn", {"train": (20, 20)}, 1, source="synthetic",
                 splits=("train",), shard_size=10)
    calls = []
    orig = ct.training_stream

    def spy(*a, **kw):
        calls.append((a, kw))
        return orig(*a, **kw)

    monkeypatch.setattr(ct, "training_stream", spy)
    m = ct.train_classifier(str(tmp_path / "run"), real, synthetic_data=syn, batch_size=16,
                            epochs=1, n_boot=10, strategy="default", verbose=False, **case)
    assert m["effective_synthetic_ratio"] == pytest.approx(p / q)
    (a, kw), = calls
    assert kw["num_workers"] == 1 and kw["worker_index"] == 0
    real_keys = {f"real/train/{i}".encode() for i in range(60)}
    syn_keys = [f"syn/train/{i}".encode() for i in range(40)]  # file order
    n = 120 * q  # many blocks; several passes over the real split
    for workers in (1, 2):
        seen_real, seen_syn = [], []
        for w in range(workers):
            kw_w = dict(kw, num_workers=workers, worker_index=w)
            meta = _take(orig(*a, **dict(kw_w, with_meta=True)), n)
            plain = _take(orig(*a, **kw_w), n)
            # with_meta changes the element format only: same labels and images, in order
            # (images of --synthetic_count's examples excepted: their flips/rotations are
            # stateful random ops, drawn anew by every iterator)
            is_syn = np.array([e["source"] == b"synthetic" for e in meta])
            assert [int(e["label"]) for e in meta] == [int(y) for _, y in plain]
            cmp = ~is_syn if "synthetic_count" in case else np.ones(n, bool)
            np.testing.assert_array_equal(np.stack([e["image"] for e in meta])[cmp],
                                          np.stack([x for x, _ in plain])[cmp])
            keys = [e["key"] for e in meta]
            assert all((k in syn_keys) == s for k, s in zip(keys, is_syn))
            assert all(k in real_keys for k, s in zip(keys, is_syn) if not s)
            per_block = is_syn.reshape(-1, q).sum(axis=1)
            assert per_block.tolist() == [p] * (n // q), per_block
            if "synthetic_count" in case and workers == 1:
                # a fixed set of `synthetic_count` synthetic examples, drawn again and again
                assert len({k for k, s in zip(keys, is_syn) if s}) == 30
            seen_syn.append({k for k, s in zip(keys, is_syn) if s})
            seen_real.append({k for k, s in zip(keys, is_syn) if not s})
        if workers == 2:  # file-sharded: the workers read disjoint real examples, all of them
            assert not seen_real[0] & seen_real[1]
            assert seen_real[0] | seen_real[1] == real_keys
            if "synthetic_count" in case:  # the count is global: 15 + 15 distinct, not 30 + 30
                assert not seen_syn[0] & seen_syn[1]
                assert [len(s) for s in seen_syn] == [15, 15], [len(s) for s in seen_syn]


def test_colour_augmentation_reaches_the_training_batches(real, synthetic, tmp_path):
    """The stream train_classifier fits on: batch i of the mixed (real + synthetic) stream carries
    exactly the stain jitter of seed pair (seed, i) — checked by redoing it from the un-jittered
    stream with stain.colour_augment — and a run with --augment=flips,hed_strong,bc records it."""
    import tensorflow as tf
    from histaug_tf.classifier import stain
    kw = dict(train_split="train", real_counts=[120, 40], synthetic_data=synthetic,
              synthetic_split="train", syn_counts=[50, 50], ratio=0.5, synthetic_count=None,
              seed=3, balance="class_weight", resolution=None, resize_mode="crop",
              num_workers=1, worker_index=0, shuffle_buffer=64)
    plain = ct.training_stream(real, augment="none", **kw).batch(16).take(3)
    spec = stain.parse_augment("hed_strong,bc")
    jittered = ct.colour_batches(
        ct.training_stream(real, augment="none", **kw).batch(16), spec, seed=11).take(3)
    n = 0
    for i, ((x0, y0), (x1, y1)) in enumerate(zip(plain, jittered)):
        assert np.array_equal(y0, y1)
        want = stain.colour_augment(x0, tf.constant([11, i], tf.int64), spec)
        np.testing.assert_allclose(x1.numpy(), want.numpy(), atol=1e-6)
        assert np.abs(x1.numpy() - x0.numpy()).max() > 0.02
        n += 1
    assert n == 3
    m = ct.train_classifier(str(tmp_path / "classic"), real, augment="flips,hed_strong,bc",
                            batch_size=32, epochs=1, n_boot=20, strategy="default",
                            verbose=False)
    assert json.load(open(tmp_path / "classic" / "options.json"))["augment"] == "flips,hed_strong,bc"
    assert 0 <= m["auc"] <= 1
    with pytest.raises(UserError, match="unknown 'hue'"):
        ct.train_classifier(str(tmp_path / "bad"), real, augment="flips,hue", verbose=False)
    assert not (tmp_path / "bad").exists()
