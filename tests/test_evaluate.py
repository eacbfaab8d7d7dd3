"""histaug_tf.classifier.evaluate against independent references: scikit-learn, explicit O(n^2)
double loops for DeLong's structural components, and the binormal closed form for coverage."""
import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from histaug_tf.classifier import evaluate as ev
from histaug_tf.common import write_json_atomic


def _psi(x, y):
    return 1.0 if x > y else (0.5 if x == y else 0.0)


def _delong_direct(y, scores_list):
    """DeLong et al. (1988) written out: V10/V01 by double loops, S10/S01 by explicit sums."""
    y = np.asarray(y)
    k = len(scores_list)
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos), len(neg)
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    aucs = np.zeros(k)
    for r, s in enumerate(scores_list):
        for a, i in enumerate(pos):
            for b, j in enumerate(neg):
                p = _psi(s[i], s[j])
                v10[r, a] += p / n
                v01[r, b] += p / m
                aucs[r] += p / (m * n)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for r in range(k):
        for q in range(k):
            s10[r, q] = sum((v10[r, a] - aucs[r]) * (v10[q, a] - aucs[q]) for a in range(m)) / (m - 1)
            s01[r, q] = sum((v01[r, b] - aucs[r]) * (v01[q, b] - aucs[q]) for b in range(n)) / (n - 1)
    cov = s10 / m + s01 / n
    return aucs, v10, v01, cov


def _data(seed, n=60, ties=True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = [0, 1]
    s1 = rng.normal(size=n) + 1.0 * y
    s2 = 0.6 * s1 + rng.normal(size=n) * 0.8 + 0.3 * y
    if ties:  # coarse rounding creates many ties within and across classes
        s1, s2 = np.round(s1, 1), np.round(s2, 1)
    return y, s1, s2


@pytest.mark.parametrize("seed,ties", [(0, True), (1, False), (2, True)])
def test_auc_equals_sklearn(seed, ties):
    y, s1, s2 = _data(seed, n=201, ties=ties)
    assert ev.roc_auc(y, s1) == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert ev.roc_auc(y, s2) == pytest.approx(roc_auc_score(y, s2), abs=1e-12)


def test_auc_constant_and_perfect_scores():
    y = np.array([0, 0, 1, 1, 1])
    assert ev.roc_auc(y, np.ones(5)) == 0.5
    assert ev.roc_auc(y, y.astype(float)) == 1.0
    assert ev.roc_auc(y, -y.astype(float)) == 0.0


@pytest.mark.parametrize("seed", [3, 4])
def test_delong_matches_direct_double_loop(seed):
    y, s1, s2 = _data(seed)
    aucs, v10, v01, cov = _delong_direct(y, [s1, s2])
    auc1, v10a, v01a = ev.delong_components(y, s1)
    np.testing.assert_allclose(v10a, v10[0], atol=1e-12)
    np.testing.assert_allclose(v01a, v01[0], atol=1e-12)
    assert auc1 == pytest.approx(aucs[0], abs=1e-12)
    assert ev.delong_variance(y, s1) == pytest.approx(cov[0, 0], rel=1e-10)
    assert ev.delong_variance(y, s2) == pytest.approx(cov[1, 1], rel=1e-10)

    t = ev.delong_test(y, s1, s2)
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    p = 2 * (1 - stats.norm.cdf(abs(z)))
    assert t["cov"] == pytest.approx(cov[0, 1], rel=1e-10)
    assert t["z"] == pytest.approx(z, rel=1e-10)
    assert t["p_value"] == pytest.approx(p, rel=1e-9)
    # antisymmetry
    t2 = ev.delong_test(y, s2, s1)
    assert t2["z"] == pytest.approx(-t["z"]) and t2["p_value"] == pytest.approx(t["p_value"])


def test_delong_identical_scores_gives_p_one():
    y, s1, _ = _data(5)
    t = ev.delong_test(y, s1, 2 * s1 + 3)  # same ranking → same AUC, zero variance of difference
    assert t["z"] == 0.0 and t["p_value"] == 1.0


def test_delong_detects_clear_difference():
    rng = np.random.default_rng(6)
    y = np.repeat([0, 1], 300)
    good = rng.normal(size=600) + 2.0 * y
    weak = good * 0.2 + rng.normal(size=600)
    assert ev.delong_test(y, good, weak)["p_value"] < 1e-6


def test_bootstrap_interval_covers_binormal_auc_at_nominal_rate():
    """Binormal scores N(0,1) vs N(d,1): true AUC = Phi(d / sqrt(2))."""
    d = 1.0
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(7)
    reps, m, n = 400, 80, 120
    hits = 0
    widths, dl_widths = [], []
    for r in range(reps):
        s = np.concatenate([rng.normal(d, 1, m), rng.normal(0, 1, n)])
        y = np.concatenate([np.ones(m, int), np.zeros(n, int)])
        lo, hi = ev.bootstrap_auc_ci(y, s, n_boot=300, seed=r)
        hits += lo <= true_auc <= hi
        widths.append(hi - lo)
        dlo, dhi = ev.delong_ci(y, s)
        dl_widths.append(dhi - dlo)
    rate = hits / reps
    # nominal 0.95; binomial sd at 400 reps is 0.011 → accept 0.89..0.99
    assert 0.89 <= rate <= 0.99, rate
    # the mean width agrees with DeLong's normal interval on the same samples
    assert np.mean(widths) == pytest.approx(np.mean(dl_widths), rel=0.1)


def test_bootstrap_stratified_keeps_class_counts(monkeypatch):
    """Every replicate is 3 positives drawn from the positives and 97 negatives drawn from the
    negatives (observed in the replicate matrices handed to the rank step), and its AUC equals a
    brute-force Mann-Whitney double loop over those draws, reproduced with the same seeded
    generator (positives' indices, then negatives', per chunk of 256)."""
    y = np.array([0] * 97 + [1] * 3)
    s = np.random.default_rng(0).normal(size=100)
    pos, neg = set(s[y == 1].tolist()), set(s[y == 0].tolist())
    seen = []
    orig = ev.stats.rankdata

    def spy(a, *args, **kw):
        seen.append(np.array(a))
        return orig(a, *args, **kw)

    monkeypatch.setattr(ev.stats, "rankdata", spy)
    aucs = ev.bootstrap_aucs(y, s, n_boot=50, seed=1)
    monkeypatch.undo()
    assert aucs.shape == (50,) and len(seen) == 1 and seen[0].shape == (50, 100)
    for row in seen[0]:
        assert set(row[:3].tolist()) <= pos and set(row[3:].tolist()) <= neg
    # independent: the same draws, AUC by counting pairs
    rng = np.random.default_rng(1)
    xi = rng.integers(0, 3, size=(50, 3))
    yi = rng.integers(0, 97, size=(50, 97))
    xs, ys = s[y == 1], s[y == 0]
    ref = [sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in xs[xi[r]] for b in ys[yi[r]])
           / (3 * 97) for r in range(50)]
    np.testing.assert_allclose(aucs, ref, rtol=0, atol=1e-12)
    assert len(set(np.round(aucs, 9))) > 5  # the replicates differ


def test_classification_metrics_against_loop():
    rng = np.random.default_rng(8)
    y = (rng.random(150) < 0.3).astype(int)
    prob = np.clip(rng.random(150) * 0.7 + 0.3 * y, 0, 1)
    m = ev.classification_metrics(y, prob, threshold=0.5)
    pred = [1 if p >= 0.5 else 0 for p in prob]
    cm = [[0, 0], [0, 0]]
    for t, p in zip(y, pred):
        cm[t][p] += 1
    assert m["confusion_matrix"] == cm
    tn, fp, fn, tp = cm[0][0], cm[0][1], cm[1][0], cm[1][1]
    assert m["accuracy"] == pytest.approx((tp + tn) / 150)
    assert m["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    t = m["per_class"]["tumour"]
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    assert t["precision"] == pytest.approx(prec) and t["recall"] == pytest.approx(rec)
    assert t["f1"] == pytest.approx(2 * prec * rec / (prec + rec))
    assert t["support"] == tp + fn and m["per_class"]["normal"]["support"] == tn + fp
    assert m["per_class"]["normal"]["recall"] == pytest.approx(tn / (tn + fp))


def test_a_score_at_the_threshold_is_positive():
    """The decision is prob >= threshold: f1_threshold returns a score of the data, so a score
    exactly at the threshold is the normal case, and it must count as positive."""
    y = np.array([0, 0, 1, 1, 0, 1])
    prob = np.array([0.1, 0.5, 0.5, 0.9, 0.3, 0.7])
    m = ev.classification_metrics(y, prob, threshold=0.5)
    assert m["confusion_matrix"] == [[2, 1], [0, 3]]
    t = ev.f1_threshold(y, prob)
    assert t in prob
    mt = ev.classification_metrics(y, prob, threshold=t)
    pred = (prob >= t).astype(int)
    assert mt["per_class"]["tumour"]["recall"] == pytest.approx(pred[y == 1].mean())


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_f1_threshold_against_brute_force(seed, ties):
    """The chosen threshold gives the largest F1 over every possible decision, via sklearn."""
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(seed)
    y = (rng.random(120) < 0.3).astype(int)
    s = rng.normal(size=120) + 1.2 * y
    if ties:
        s = np.round(s, 1)
    t = ev.f1_threshold(y, s)
    cands = np.unique(np.r_[s, np.inf])
    f1s = {c: f1_score(y, (s >= c).astype(int), zero_division=0) for c in cands}
    best = max(f1s.values())
    assert f1s[t] == pytest.approx(best, abs=1e-12)
    assert t == max(c for c, v in f1s.items() if v >= best - 1e-12)  # largest among ties
    assert ev.f1_threshold(np.zeros(5, int), np.linspace(0, 1, 5)) == 0.5  # no positives


def test_evaluate_scores_json_and_roc_png(tmp_path):
    y, s1, s2 = _data(9, n=80)
    prob = 1 / (1 + np.exp(-s1))
    out = ev.evaluate_scores(y, prob, n_boot=100)
    assert out["auc"] == pytest.approx(roc_auc_score(y, prob))
    assert out["auc_ci"][0] <= out["auc"] <= out["auc_ci"][1]
    write_json_atomic(tmp_path / "m" / "metrics.json", out)
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["auc"] == out["auc"]
    ev.plot_roc(tmp_path / "roc.png", [("a", y, s1), ("b", y, s2)])
    data = (tmp_path / "roc.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_bad_input_raises():
    with pytest.raises(ValueError, match="both classes"):
        ev.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        ev.roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        ev.roc_auc([0, 1], [0.1, np.nan])
