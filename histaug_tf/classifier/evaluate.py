"""Evaluation of a binary classifier's scores on a test split.

Pure NumPy / SciPy / scikit-learn (no TensorFlow), so it can be imported and tested on its own.

* ``roc_auc(y, s)`` — the area under the ROC curve, the Mann-Whitney statistic with ties counted 1/2.
* ``delong_components(y, s)`` — DeLong's structural components V10 (one per positive: the fraction of
  negatives it out-scores) and V01 (one per negative), computed in O(n log n) with midranks
  (Sun & Xu, IEEE Signal Processing Letters 21(11), 2014).
* ``delong_variance(y, s)``, ``delong_ci(y, s)`` and ``delong_test(y, s1, s2)`` — the variance of an
  AUC and the two-sided test of AUC1 = AUC2 for two classifiers scored on the same test set
  (DeLong, DeLong & Clarke-Pearson, Biometrics 44, 1988).
* ``bootstrap_auc_ci(y, s)`` — a percentile bootstrap interval, resampling within each class
  (stratified), so every replicate has both classes.
* ``classification_metrics(y, prob, threshold)`` — accuracy, balanced accuracy, confusion matrix and
  per-class precision/recall/F1/support at a threshold on the positive-class probability.
* ``evaluate_scores(...)`` — all of the above as one JSON-serialisable dict (what ``metrics.json``
  holds); ``plot_roc(path, curves)`` — ROC curves as a PNG (JSON files are written with ``common.write_json_atomic``).

Convention: label 1 is the positive (tumour) class; higher scores mean "more likely 1".
"""
from __future__ import annotations


import numpy as np
from scipy import stats

from histaug_tf.common import atomic_path


def _check(y, s):
    y = np.asarray(y).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    u = np.unique(y)
    if not np.all(np.isin(u, [0, 1])):
        raise ValueError(f"labels must be 0/1, got values {u.tolist()[:5]}")
    pos = y == 1
    if pos.all() or (~pos).all():
        raise ValueError("the AUC needs both classes in the labels")
    return y.astype(np.int64), s, pos


def roc_auc(y, s) -> float:
    """ROC AUC = P(score of a positive > score of a negative) + 1/2 P(tie)."""
    return float(delong_components(y, s)[0])


def delong_components(y, s):
    """Return ``(auc, v10, v01)``: V10 has one entry per positive, V01 one per negative.

    V10[i] = mean_j psi(X_i, Y_j), V01[j] = mean_i psi(X_i, Y_j) with psi(x, y) = 1 if x > y,
    1/2 if x == y, else 0 (X positives, Y negatives). AUC = mean(V10) = mean(V01).
    """
    _, s, pos = _check(y, s)
    x, yneg = s[pos], s[~pos]
    m, n = x.size, yneg.size
    tx = stats.rankdata(x)                           # midranks among positives
    ty = stats.rankdata(yneg)                        # midranks among negatives
    tz = stats.rankdata(np.concatenate([x, yneg]))   # midranks among all
    v10 = (tz[:m] - tx) / n           # negatives below each positive (+1/2 per tie)
    v01 = 1.0 - (tz[m:] - ty) / m     # positives above each negative (+1/2 per tie)
    auc = v10.mean()
    return auc, v10, v01


def _cov_components(v10s, v01s):
    """Covariance matrix of the AUC estimates from stacked components [k, m] and [k, n]."""
    m, n = v10s.shape[1], v01s.shape[1]
    s10 = np.atleast_2d(np.cov(v10s)) if m > 1 else np.zeros((len(v10s),) * 2)
    s01 = np.atleast_2d(np.cov(v01s)) if n > 1 else np.zeros((len(v01s),) * 2)
    return s10 / m + s01 / n


def delong_variance(y, s) -> float:
    """DeLong's variance of the empirical AUC: S10/m + S01/n (sample variances, ddof=1)."""
    _, v10, v01 = delong_components(y, s)
    return float(_cov_components(v10[None], v01[None])[0, 0])


def delong_ci(y, s, alpha: float = 0.05):
    """Normal-approximation (1-alpha) interval from DeLong's variance, clipped to [0, 1]."""
    auc, v10, v01 = delong_components(y, s)
    se = float(np.sqrt(_cov_components(v10[None], v01[None])[0, 0]))
    z = stats.norm.ppf(1 - alpha / 2)
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def delong_test(y, s1, s2) -> dict:
    """Two-sided DeLong test of AUC(s1) == AUC(s2) on the same labelled test set.

    Returns a dict: auc1, auc2, var1, var2, cov, z, p_value. z = (auc1 - auc2) / sqrt(var1 + var2
    - 2 cov); p = 2 (1 - Phi(|z|)). When the difference has zero variance (identical rankings),
    z = 0 and p = 1 if the AUCs are equal.
    """
    a1, v10a, v01a = delong_components(y, s1)
    a2, v10b, v01b = delong_components(y, s2)
    c = _cov_components(np.stack([v10a, v10b]), np.stack([v01a, v01b]))
    var_diff = c[0, 0] + c[1, 1] - 2 * c[0, 1]
    diff = a1 - a2
    if var_diff <= 1e-300:
        z = 0.0 if abs(diff) < 1e-15 else float(np.sign(diff) * np.inf)
    else:
        z = diff / np.sqrt(var_diff)
    p = float(2 * stats.norm.sf(abs(z)))
    return {"auc1": float(a1), "auc2": float(a2), "var1": float(c[0, 0]), "var2": float(c[1, 1]),
            "cov": float(c[0, 1]), "z": float(z), "p_value": p}


def bootstrap_aucs(y, s, n_boot: int = 1000, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """AUCs of ``n_boot`` stratified bootstrap replicates (positives and negatives resampled apart)."""
    _, s, pos = _check(y, s)
    x, yneg = s[pos], s[~pos]
    m, n = x.size, yneg.size
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        xb = x[rng.integers(0, m, size=(b, m))]
        yb = yneg[rng.integers(0, n, size=(b, n))]
        ranks = stats.rankdata(np.concatenate([xb, yb], axis=1), axis=1)
        out[start:start + b] = (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    return out


def bootstrap_auc_ci(y, s, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Percentile bootstrap (1-alpha) interval of the AUC (stratified resampling)."""
    aucs = bootstrap_aucs(y, s, n_boot=n_boot, seed=seed)
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- cluster bootstrap
#
# Patches of one slide or patient are not independent: resampling patches treats 40 patches of
# one patient as 40 pieces of evidence, so the interval is too narrow. The cluster bootstrap
# resamples whole groups (with replacement, stratified by each group's majority class so every
# replicate keeps both classes in proportion, as the patch bootstrap stratifies by class). A
# replicate is a weight per patch (how often its group was drawn); its AUC is the weighted
# Mann-Whitney statistic, ties counted 1/2 — the AUC of the concatenated resampled patches.

def cluster_draws(y, groups, n_boot: int, seed: int = 0):
    """(group index of each patch [n], draws [n_boot, G]: the groups drawn in each replicate)."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    names, gidx = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    if names.size != 0 and y.size != gidx.size:
        raise ValueError("labels and groups differ in length")
    major = np.array([np.bincount(y[gidx == g], minlength=2).argmax() for g in range(names.size)])
    rng = np.random.default_rng(seed)
    draws = []
    for c in (0, 1):
        members = np.flatnonzero(major == c)
        if members.size:
            draws.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    return gidx, np.concatenate(draws, axis=1)


def _weighted_aucs(s, pos, w):
    """AUC of each row of patch weights ``w`` [B, n] (Mann-Whitney, ties 1/2)."""
    order = np.argsort(s, kind="mergesort")
    ss, ps, ws = s[order], pos[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])      # blocks of equal scores
    wp = np.add.reduceat(ws * ps, starts, axis=1)
    wn = np.add.reduceat(ws * ~ps, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn                            # negative weight strictly below
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _group_weights(gidx, draws):
    n_groups = int(gidx.max()) + 1
    counts = np.zeros((draws.shape[0], n_groups))
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1.0)
    return counts[:, gidx]


def cluster_bootstrap_aucs(y, s, groups, n_boot: int = 1000, seed: int = 0,
                           chunk: int = 100) -> np.ndarray:
    """AUCs of ``n_boot`` cluster bootstrap replicates (whole groups resampled)."""
    y, s, pos = _check(y, s)
    gidx, draws = cluster_draws(y, groups, n_boot, seed)
    return np.concatenate([_weighted_aucs(s, pos, _group_weights(gidx, draws[i:i + chunk]))
                           for i in range(0, n_boot, chunk)])


def cluster_bootstrap_auc_ci(y, s, groups, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Percentile (1-alpha) interval of the AUC from the cluster bootstrap."""
    a = cluster_bootstrap_aucs(y, s, groups, n_boot=n_boot, seed=seed)
    lo, hi = np.nanquantile(a, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_cluster_bootstrap(y, s1, s2, groups, n_boot: int = 1000, alpha: float = 0.05,
                             seed: int = 0, chunk: int = 100) -> dict:
    """Δ = AUC(s1) − AUC(s2) on one test set, both resampled with the same group draws: the
    percentile interval of Δ and a two-sided p from z = Δ / sd(Δ*) (normal approximation, the
    cluster analogue of DeLong's test)."""
    y, s1, pos = _check(y, s1)
    _, s2, _ = _check(y, s2)
    gidx, draws = cluster_draws(y, groups, n_boot, seed)
    deltas = []
    for i in range(0, n_boot, chunk):
        w = _group_weights(gidx, draws[i:i + chunk])
        deltas.append(_weighted_aucs(s1, pos, w) - _weighted_aucs(s2, pos, w))
    d = np.concatenate(deltas)
    diff = roc_auc(y, s1) - roc_auc(y, s2)
    sd = float(np.nanstd(d, ddof=1))
    z = 0.0 if sd == 0 and diff == 0 else (float(np.sign(diff) * np.inf) if sd == 0 else diff / sd)
    lo, hi = np.nanquantile(d, [alpha / 2, 1 - alpha / 2])
    return {"delta": float(diff), "ci": [float(lo), float(hi)], "se": sd, "z": float(z),
            "p_value": float(2 * stats.norm.sf(abs(z))), "n_groups": int(gidx.max()) + 1,
            "n_boot": int(n_boot)}


def classification_metrics(y, prob, threshold: float = 0.5, label_names=("normal", "tumour")) -> dict:
    """Metrics of the hard decision ``prob >= threshold`` (prob: probability of class 1)."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    pred = (np.asarray(prob, dtype=np.float64).reshape(-1) >= threshold).astype(np.int64)
    labels = list(range(len(label_names)))
    p, r, f, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                        "support": int(sup[i])} for i, name in enumerate(label_names)}
    return {
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),  # rows true, cols pred
        "per_class": per_class,
    }


def f1_threshold(y, prob) -> float:
    """The threshold t maximising the class-1 F1 of ``prob >= t`` on (y, prob).

    Candidates are the distinct scores (every distinct decision). Among equal F1 the largest t is
    taken. Meant for validation data: the study applies it to the test set, so a classifier whose
    scores are calibrated differently (e.g. trained on a different class mix) is not judged by an
    arbitrary 0.5 alone. With no positive example the F1 is 0 everywhere and 0.5 is returned.
    """
    y = np.asarray(y).reshape(-1).astype(np.int64)
    s = np.asarray(prob, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0 or y.size == 0:
        return 0.5
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)                       # predicting the first i+1 as positive
    k = np.arange(1, y.size + 1)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # a threshold is a block of equal scores
    f1 = 2.0 * tp / (k + n_pos)
    f1 = np.where(last, f1, -1.0)
    best = f1.max()
    i = int(np.flatnonzero(f1 >= best - 1e-12)[0])  # first = largest threshold
    return float(s_sorted[i])


def evaluate_scores(y, prob, *, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                    alpha: float = 0.05, label_names=("normal", "tumour"), groups=None) -> dict:
    """Everything ``metrics.json`` reports for one classifier on one test set. With ``groups``
    (the slide or patient of each patch) of at least two distinct values, also the cluster
    bootstrap interval (``auc_ci_cluster``)."""
    y, s, _ = _check(y, prob)
    auc = roc_auc(y, s)
    lo, hi = bootstrap_auc_ci(y, s, n_boot=n_boot, alpha=alpha, seed=seed)
    dlo, dhi = delong_ci(y, s, alpha=alpha)
    out = {"num_examples": int(y.size), "auc": auc, "auc_ci": [lo, hi],
           "auc_ci_method": f"stratified percentile bootstrap, {n_boot} replicates, {1 - alpha:.0%}",
           "auc_ci_delong": [dlo, dhi], "auc_se_delong": float(np.sqrt(delong_variance(y, s)))}
    if groups is not None and has_groups(groups):
        out["auc_ci_cluster"] = list(cluster_bootstrap_auc_ci(y, s, groups, n_boot=n_boot,
                                                              alpha=alpha, seed=seed))
        out["auc_ci_cluster_method"] = (f"cluster (group) percentile bootstrap, {n_boot} "
                                        f"replicates, {1 - alpha:.0%}")
        out["num_groups"] = int(np.unique(np.asarray(groups)).size)
    out.update(classification_metrics(y, s, threshold=threshold, label_names=label_names))
    return out


# ----------------------------------------------------------------------------- calibration

ECE_BINS = 10


def calibration(y, prob, n_bins: int = ECE_BINS) -> dict:
    """Brier score and expected calibration error of P(class 1).

    ECE: ``n_bins`` equal-width bins of the predicted probability ([0, 1/B], (1/B, 2/B], ...,
    ((B−1)/B, 1]); ECE = Σ_b (n_b / N) · |observed frequency of class 1 in b − mean prediction in
    b|. ``bins`` lists each non-empty bin (its range, count, mean prediction, observed frequency)
    for a reliability diagram."""
    y = np.asarray(y).reshape(-1).astype(np.float64)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    idx = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = idx == b
        if not m.any():
            continue
        conf, freq = float(p[m].mean()), float(y[m].mean())
        ece += m.sum() / y.size * abs(freq - conf)
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(m.sum()),
                     "mean_prediction": conf, "observed_frequency": freq})
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece),
            "ece_bins": f"{n_bins} equal-width bins of P(positive), weighted by count",
            "bins": bins}


def operating_point(y, prob, threshold: float) -> dict:
    """Sensitivity and specificity of the decision prob >= threshold."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    pred = np.asarray(prob, dtype=np.float64).reshape(-1) >= threshold
    pos, neg = y == 1, y == 0
    return {"threshold": float(threshold),
            "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
            "specificity": float((~pred[neg]).mean()) if neg.any() else float("nan")}


def youden_threshold(y, prob) -> float:
    """The threshold t (a score of the data) maximising Youden's J = sensitivity + specificity − 1
    of ``prob >= t``; the largest such t among ties. The balanced decision: unlike the max-F1
    threshold it does not drift to 'everything positive' when the classes overlap."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    s = np.asarray(prob, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    j = np.where(last, tp / n_pos - fp / n_neg, -np.inf)
    return float(s_sorted[int(np.flatnonzero(j >= j.max() - 1e-12)[0])])


def threshold_for_specificity(y, prob, specificity: float) -> float:
    """The smallest threshold (a score of the data, or +inf) whose specificity on (y, prob) is at
    least ``specificity``: the most sensitive decision that keeps it."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    neg = np.sort(p[y == 0])
    if neg.size == 0:
        return float(np.min(p)) if p.size else 0.5
    cands = np.unique(np.r_[p, np.inf])
    spec = np.searchsorted(neg, cands, side="left") / neg.size   # share of negatives below t
    return float(cands[np.flatnonzero(spec >= specificity - 1e-12)[0]])


def plot_reliability(path, curves, n_bins: int = ECE_BINS, title: str = "Reliability") -> None:
    """Reliability diagram: observed frequency of class 1 against mean prediction per bin, one
    line per ``(name, y, prob)``, with the diagonal; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    for name, y, p in curves:
        c = calibration(y, p, n_bins)
        xs = [b["mean_prediction"] for b in c["bins"]]
        ys = [b["observed_frequency"] for b in c["bins"]]
        ax.plot(xs, ys, "o-", ms=3, label=f"{name} (ECE {c['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted P(positive)")
    ax.set_ylabel("observed frequency of positive")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    _save_fig_atomic(fig, path)
    plt.close(fig)


def has_groups(groups) -> bool:
    """Whether a test set's groups can carry a cluster bootstrap (two or more distinct groups)."""
    return groups is not None and np.unique(np.asarray(groups)).size >= 2


def plot_roc(path, curves, title: str = "ROC") -> None:
    """Write ROC curves to a PNG (atomically). ``curves``: iterable of (label, y_true, scores)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    for label, y, s in curves:
        fpr, tpr, _ = roc_curve(np.asarray(y).reshape(-1), np.asarray(s).reshape(-1))
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    _save_fig_atomic(fig, path)


def plot_roc_panels(path, panels, ncols: int = 3) -> None:
    """Several ROC panels in one PNG (atomically). ``panels``: [(title, [(label, y, s), ...]), ...]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.4 * nrows), dpi=90,
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, curves) in zip(axes.flat, panels):
        for label, y, s in curves:
            fpr, tpr, _ = roc_curve(np.asarray(y).reshape(-1), np.asarray(s).reshape(-1))
            ax.plot(fpr, tpr, lw=1.3, label=f"{label} {roc_auc(y, s):.3f}")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.7, color="grey")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("FPR", fontsize=8)
        ax.set_ylabel("TPR", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(loc="lower right", fontsize=7, title="AUC", title_fontsize=7)
    fig.tight_layout()
    _save_fig_atomic(fig, path)


def _save_fig_atomic(fig, path) -> None:
    import matplotlib.pyplot as plt
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
