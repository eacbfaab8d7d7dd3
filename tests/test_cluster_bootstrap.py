"""Clustered intervals (classifier/evaluate.py): the cluster bootstrap against a brute-force loop
over the same resamples, and by simulation: with patches correlated within their slide, the patch
bootstrap's 95 % interval covers the true AUC far less often than 95 %, the cluster bootstrap's
close to 95 %."""
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from histaug_tf.classifier import evaluate as ev


def _slides(rng, n_groups=100, per=12, mu=1.0, sd_group=1.0, sd_patch=0.3):
    """Each slide has one class and a random effect shared by all its patches."""
    y = np.repeat(np.arange(n_groups) % 2, per)
    g = np.repeat(np.arange(n_groups), per)
    u = rng.normal(0, sd_group, n_groups)[g]
    s = mu * y + u + rng.normal(0, sd_patch, y.size)
    return y, s, np.array([f"slide{i}" for i in g])


def true_auc(mu=1.0, sd_group=1.0, sd_patch=0.3):
    """P(score of a random tumour patch > a random normal patch), of different slides."""
    return float(stats.norm.cdf(mu / np.sqrt(2 * (sd_group ** 2 + sd_patch ** 2))))


def test_against_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(0)
    y, s, g = _slides(rng, n_groups=14, per=5)
    s = np.round(s, 1)  # ties
    s2 = s + rng.normal(0, 0.5, s.size)
    gidx, draws = ev.cluster_draws(y, g, 40, seed=3)
    fast = ev.cluster_bootstrap_aucs(y, s, g, n_boot=40, seed=3)
    pair = ev.paired_cluster_bootstrap(y, s, s2, g, n_boot=40, seed=3)
    deltas = []
    for b in range(40):
        idx = np.concatenate([np.flatnonzero(gidx == k) for k in draws[b]])
        assert fast[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)
        deltas.append(roc_auc_score(y[idx], s[idx]) - roc_auc_score(y[idx], s2[idx]))
    assert pair["se"] == pytest.approx(np.std(deltas, ddof=1), rel=1e-9)
    assert pair["delta"] == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, s2))
    # every replicate keeps both classes in the proportion of the groups' majority classes
    major = np.array([y[gidx == k][0] for k in range(14)])
    assert all((major[d] == 1).sum() == 7 for d in draws)


@pytest.mark.slow
def test_coverage_patch_vs_cluster_bootstrap():
    rng = np.random.default_rng(20261208)
    truth = true_auc()
    reps, hit_patch, hit_cluster = 300, 0, 0
    for r in range(reps):
        y, s, g = _slides(rng)
        lo, hi = ev.bootstrap_auc_ci(y, s, n_boot=300, seed=r)
        hit_patch += lo <= truth <= hi
        lo, hi = ev.cluster_bootstrap_auc_ci(y, s, g, n_boot=300, seed=r)
        hit_cluster += lo <= truth <= hi
    cov_patch, cov_cluster = hit_patch / reps, hit_cluster / reps
    print(f"coverage of a nominal 95 % interval over {reps} simulated test sets "
          f"(100 slides x 12 patches): patch bootstrap {cov_patch:.3f}, cluster {cov_cluster:.3f}")
    assert cov_patch < 0.6, cov_patch
    assert 0.92 <= cov_cluster <= 0.98, cov_cluster
