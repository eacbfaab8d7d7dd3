"""Across-seed statistics of a paired comparison (augmented vs baseline), one value per seed.

A study cell (dataset × fraction × seed) gives one Δ AUC = AUC(augmented) − AUC(baseline) on the same
test set, and one DeLong z of that difference. Each seed draws a different training subset, GAN and
classifier, so the seeds are the independent replicates; the test patches are shared. This module
answers "does augmentation help at this fraction, and how sure are we" from those per-seed values:

* ``t_interval(deltas)`` — mean Δ with the (1 − α) Student-t interval over seeds,
  ``mean ± t_{n−1, 1−α/2} · sd / √n`` (sd with ddof = 1). It describes the variation between
  *replications of the whole pipeline* (subset, GAN, classifier), which dominates the test-set
  sampling noise at small fractions. Needs ≥ 2 seeds.
* ``paired_t(deltas)`` — the two-sided one-sample t test of mean Δ = 0 over seeds (the paired t test
  of AUC(augmented) vs AUC(baseline) with seeds as pairs).
* ``stouffer(zs)`` — Stouffer's combination of the per-seed DeLong z values, ``Σ z_i / √k``, with its
  two-sided normal p value. Each DeLong z already carries the test-set uncertainty of its seed; the
  combination assumes the z are independent, which the shared test set makes optimistic (say so
  beside the number).

``summarize(deltas, zs)`` returns all of them in one dict (None where a statistic is undefined).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st


def _clean(values) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return v[np.isfinite(v)]


def t_interval(deltas, alpha: float = 0.05):
    """(mean, lo, hi) of the Student-t interval over seeds; lo/hi None with fewer than 2 values."""
    d = _clean(deltas)
    if d.size == 0:
        return None, None, None
    m = float(d.mean())
    if d.size < 2:
        return m, None, None
    half = float(_st.t.ppf(1.0 - alpha / 2.0, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return m, m - half, m + half


def paired_t(deltas):
    """(t, two-sided p) of mean Δ = 0 over seeds; (None, None) with < 2 values or zero spread."""
    d = _clean(deltas)
    if d.size < 2:
        return None, None
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return None, None
    t = float(d.mean()) / (sd / math.sqrt(d.size))
    return t, float(2.0 * _st.t.sf(abs(t), d.size - 1))


def stouffer(zs):
    """(Z, two-sided p) of Stouffer's combination Σ z / √k; (None, None) without values."""
    z = _clean(zs)
    if z.size == 0:
        return None, None
    Z = float(z.sum() / math.sqrt(z.size))
    return Z, float(2.0 * _st.norm.sf(abs(Z)))


def summarize(deltas, zs=(), alpha: float = 0.05) -> dict:
    """Everything above for one dataset × fraction: n, mean, sd, interval, paired t, Stouffer."""
    d = _clean(deltas)
    mean, lo, hi = t_interval(d, alpha)
    t, p_t = paired_t(d)
    Z, p_z = stouffer(zs)
    return {"n_seeds": int(d.size), "mean": mean,
            "sd": float(d.std(ddof=1)) if d.size > 1 else None,
            "ci_lo": lo, "ci_hi": hi, "ci_level": 1.0 - alpha,
            "t": t, "p_t": p_t, "stouffer_z": Z, "p_stouffer": p_z}
