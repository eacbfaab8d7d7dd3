"""Across-seed statistics of Δ AUC: closed forms and tabulated quantiles, and the coverage of the interval."""
import math

import numpy as np

from histaug_tf.classifier import across_seeds as A

T_2_975 = 4.302652729749464  # Student t, 2 degrees of freedom, 0.975 quantile (standard tables)


def test_hand_checked_three_seeds():
    d = [0.01, 0.03, 0.02]                      # mean 0.02, sd 0.01
    m, lo, hi = A.t_interval(d)
    half = T_2_975 * 0.01 / math.sqrt(3)
    assert m == 0.02 or abs(m - 0.02) < 1e-15
    assert abs(lo - (0.02 - half)) < 1e-12 and abs(hi - (0.02 + half)) < 1e-12
    t, p = A.paired_t(d)
    assert abs(t - 0.02 / (0.01 / math.sqrt(3))) < 1e-9
    # two-sided p for 2 degrees of freedom in closed form: 1 - |t| / sqrt(2 + t^2)
    assert abs(p - (1.0 - abs(t) / math.sqrt(2.0 + t * t))) < 1e-12


def test_stouffer_closed_form():
    Z, p = A.stouffer([1.0, 2.0, 3.0])
    assert abs(Z - 6.0 / math.sqrt(3.0)) < 1e-12
    assert abs(p - math.erfc(Z / math.sqrt(2.0))) < 1e-12
    Z1, p1 = A.stouffer([-1.959963984540054])
    assert abs(p1 - 0.05) < 1e-9


def test_degenerate_inputs():
    assert A.t_interval([]) == (None, None, None)
    assert A.t_interval([0.1]) == (0.1, None, None)
    assert A.paired_t([0.1]) == (None, None)
    assert A.paired_t([0.1, 0.1]) == (None, None)
    s = A.summarize([0.02, None, float("nan"), 0.04], zs=[1.0, None])
    assert s["n_seeds"] == 2 and abs(s["mean"] - 0.03) < 1e-15
    assert abs(s["stouffer_z"] - 1.0) < 1e-15


def test_interval_coverage_simulation():
    """A 95 % interval over 3 seeds covers the true mean Δ in ~95 % of simulated studies.

    A normal-quantile interval (1.96 instead of t_{2}) covers only ~82 % here, so this fails if the
    t quantile is lost."""
    rng = np.random.default_rng(20261130)
    true, sd, n, reps = 0.01, 0.02, 3, 4000
    hits = 0
    for _ in range(reps):
        _, lo, hi = A.t_interval(rng.normal(true, sd, n))
        hits += lo <= true <= hi
    cov = hits / reps
    assert 0.93 <= cov <= 0.97, cov


def test_results_table_row():
    """The study's per-arm row carries the closed-form interval and paired t test of its cells'
    Δ AUC against baseline and against classic."""
    from histaug_tf.apps.study_tables import CSV_COLUMNS, arms_markdown
    base = {c: None for c in CSV_COLUMNS}
    rows = []
    for seed, (db, dc) in enumerate(((0.01, -0.02), (0.03, 0.0), (0.02, 0.01))):
        rows.append(dict(base, seed=seed, arm="gan", n_train=60, auc=0.8 + db,
                         delta_vs_baseline=db, delta_vs_classic=dc, tumour_f1=0.5,
                         tumour_f1_valthr=0.6))
        rows.append(dict(base, seed=seed, arm="baseline", n_train=60, auc=0.8, tumour_f1=0.5,
                         tumour_f1_valthr=0.6, delta_vs_classic=dc - db))
    md = arms_markdown({("tissue", 0.03): rows})
    half = T_2_975 * 0.01 / math.sqrt(3)
    p = 1.0 - 3.4641016151377544 / math.sqrt(14.0)       # t = 2·√3 on 2 degrees of freedom
    half_c = T_2_975 * np.std([-0.02, 0.0, 0.01], ddof=1) / math.sqrt(3)
    mc = np.mean([-0.02, 0.0, 0.01])
    tc = mc / (np.std([-0.02, 0.0, 0.01], ddof=1) / math.sqrt(3))
    from scipy import stats
    pc = 2 * stats.t.sf(abs(tc), 2)
    line = [ln for ln in md.splitlines() if ln.startswith("| tissue | 3 % | gan |")]
    assert line == [f"| tissue | 3 % | gan | 3 | 60 | 0.820 ± 0.010 "
                    f"| +0.020 [{0.02 - half:+.3f}, {0.02 + half:+.3f}] | {p:.3g} "
                    f"| {mc:+.3f} [{mc - half_c:+.3f}, {mc + half_c:+.3f}] | {pc:.3g} "
                    f"| 0.500 ± 0.000 | 0.600 ± 0.000 |"], md
    base_line = [ln for ln in md.splitlines() if ln.startswith("| tissue | 3 % | baseline |")][0]
    assert "| – | – |" in base_line  # no Δ of the baseline against itself
