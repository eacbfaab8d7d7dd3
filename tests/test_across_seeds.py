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
    """The study's across-seed row carries the closed-form interval of its cells' Δ AUC."""
    from histaug_tf.apps.experiment import across_seeds_markdown
    rows = [{"delta_auc": d, "delong_z": z} for d, z in ((0.01, 1.0), (0.03, 2.0), (0.02, 3.0))]
    rows.append({"delta_auc": None, "delong_z": None})          # an all-data cell: no GAN
    md = across_seeds_markdown({("tissue", 0.03): rows, ("tissue", 1.0): [rows[-1]]})
    half = T_2_975 * 0.01 / math.sqrt(3)
    p = 1.0 - 3.4641016151377544 / math.sqrt(14.0)
    line = [ln for ln in md.splitlines() if ln.startswith("| tissue | 3 % |")]
    assert line == [f"| tissue | 3 % | 3 | +0.020 | [{0.02 - half:+.3f}, {0.02 + half:+.3f}] "
                    f"| {p:.3g} | +3.46 (p {math.erfc(6 / math.sqrt(3) / math.sqrt(2)):.3g}) |"]
    assert "| tissue | 100 % |" not in md
