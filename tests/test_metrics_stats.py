"""FID / KID / precision-recall against independent references: SciPy's sqrtm, a closed form for
Gaussians, and direct NumPy loops written here."""
import numpy as np
import pytest
import scipy.linalg

from histaug_tf.metrics import stats


def _fid_scipy(x, y):
    """The textbook formula with scipy.linalg.sqrtm of the (non-symmetric) product."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1 = np.cov(x, rowvar=False, bias=True)
    s2 = np.cov(y, rowvar=False, bias=True)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("n,d", [(200, 8), (300, 32)])
def test_fid_matches_scipy_on_random_features(n, d):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    y = rng.normal(size=(n + 17, d)) * rng.uniform(0.5, 2, size=d) - 0.3
    st_x, st_y = stats.FeatureStats(), stats.FeatureStats()
    for i in range(0, n, 37):  # streaming in uneven batches
        st_x.append(x[i:i + 37])
    st_y.append(y)
    fid = stats.frechet_distance(*st_x.mean_cov(), *st_y.mean_cov())
    ref = _fid_scipy(x, y)
    assert fid == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert ref > 1.0  # the sets really differ


def test_fid_closed_form_diagonal_gaussians():
    # For diagonal covariances: |mu1-mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert stats.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # Same Gaussian: 0; rank-deficient covariance (n < d) still finite and >= 0.
    assert stats.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-9)
    x = rng.normal(size=(5, d))
    s = np.cov(x, rowvar=False, bias=True)
    assert stats.frechet_distance(x.mean(0), s, x.mean(0), s) == pytest.approx(0, abs=1e-7)


def test_fid_of_samples_from_known_gaussians_converges():
    rng = np.random.default_rng(1)
    d = 4
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 1.0, 0.25])
    x = rng.normal(size=(200000, d)) * np.sqrt(a)
    y = rng.normal(size=(200000, d)) * np.sqrt(b) + 1.0
    st_x, st_y = stats.FeatureStats(), stats.FeatureStats()
    st_x.append(x)
    st_y.append(y)
    expected = d * 1.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert stats.frechet_distance(*st_x.mean_cov(), *st_y.mean_cov()) == pytest.approx(expected, abs=0.03)


def test_per_class_moments_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 5))
    lab = rng.integers(0, 3, size=90)
    st = stats.FeatureStats(capture_all=True)
    for i in range(0, 90, 20):
        st.append(x[i:i + 20], labels=lab[i:i + 20])
    for c in range(3):
        m, s = st.mean_cov(c)
        np.testing.assert_allclose(m, x[lab == c].mean(0), rtol=1e-6)
        np.testing.assert_allclose(s, np.cov(x[lab == c], rowvar=False, bias=True), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.features(c), x[lab == c].astype(np.float32))
    m, s = st.mean_cov()
    np.testing.assert_allclose(m, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s, np.cov(x, rowvar=False, bias=True), rtol=1e-5, atol=1e-6)
    # Round trip through the array form used by the cache.
    st2 = stats.FeatureStats.from_arrays(st.to_arrays())
    np.testing.assert_array_equal(st2.mean_cov(1)[1], st.mean_cov(1)[1])
    np.testing.assert_array_equal(st2.features(), st.features())
    np.testing.assert_allclose(st2.mean_cov()[1], np.cov(x, rowvar=False, bias=True), rtol=1e-5, atol=1e-6)
    unlabelled = stats.FeatureStats()
    unlabelled.append(x)
    np.testing.assert_array_equal(stats.FeatureStats.from_arrays(unlabelled.to_arrays()).mean_cov()[1],
                                  unlabelled.mean_cov()[1])


def _mmd2_unbiased_loop(x, y):
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_kid_matches_direct_unbiased_mmd():
    rng = np.random.default_rng(3)
    d = 6
    real = rng.normal(size=(30, d))
    gen = rng.normal(size=(30, d)) * 1.3 + 0.2
    ref = _mmd2_unbiased_loop(gen, real)
    # Subsets as large as the sets are permutations of them; the estimator is order-free.
    kid = stats.kernel_inception_distance(real, gen, num_subsets=3, max_subset_size=1000)
    assert kid == pytest.approx(ref, rel=1e-9)
    assert ref > 0.01


def test_kid_subsets_average_of_subset_mmds():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(40, 5))
    gen = rng.normal(size=(25, 5)) + 0.5
    kid = stats.kernel_inception_distance(real, gen, num_subsets=4, max_subset_size=10, seed=7)
    # Replay the documented subset sampling: per subset, gen indices then real indices.
    r = np.random.default_rng(7)
    vals = []
    for _ in range(4):
        gi = r.choice(25, 10, replace=False)
        ri = r.choice(40, 10, replace=False)
        vals.append(_mmd2_unbiased_loop(gen[gi], real[ri]))
    assert kid == pytest.approx(np.mean(vals), rel=1e-9)


def _pr_brute_force(real, gen, k):
    def dist(a, b):
        return np.sqrt(((a - b) ** 2).sum())

    def radii(s):
        out = []
        for i in range(len(s)):
            ds = sorted(dist(s[i], s[j]) for j in range(len(s)) if j != i)
            out.append(ds[k - 1])
        return out

    def coverage(probes, manifold):
        r = radii(manifold)
        inside = [any(dist(p, manifold[j]) <= r[j] for j in range(len(manifold))) for p in probes]
        return float(np.mean(inside))

    return coverage(gen, real), coverage(real, gen)


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_precision_recall_matches_brute_force(shift):
    rng = np.random.default_rng(5)
    real = rng.normal(size=(60, 4))
    gen = rng.normal(size=(45, 4)) * 0.6 + shift
    ref = _pr_brute_force(real, gen, 3)
    # Small row/col batches exercise the blocking.
    got = stats.precision_recall(real, gen, k=3, row_batch=7, col_batch=11, dtype=np.float64)
    assert got == pytest.approx(ref, abs=1e-12)
    assert 0 < ref[0] <= 1 and 0 < ref[1] < 1
