"""The numbers behind FID, KID and precision/recall, computed from feature arrays (NumPy/SciPy only).

These functions know nothing of images, networks or datasets: they take feature matrices
(rows = samples) or their first two moments. The definitions follow the NVlabs StyleGAN2-ADA
metrics (``metrics/frechet_inception_distance.py``, ``kernel_inception_distance.py``,
``precision_recall.py`` and ``metric_utils.FeatureStats``):

* FID: ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` with the *biased* covariance
  (divide by n), as ``FeatureStats.get_mean_cov`` does.
* KID: the unbiased estimator of the squared MMD with the polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over ``num_subsets`` random subsets of
  ``min(n_real, n_gen, max_subset_size)`` samples each (Binkowski et al. 2018).
* Precision / recall (Kynkaenniemi et al. 2019): the manifold of a set is the union of balls around
  its samples with radius = distance to the k-th nearest neighbour in the same set (self excluded);
  precision = fraction of generated samples inside the real manifold, recall = fraction of real
  samples inside the generated manifold.
"""
from __future__ import annotations

import numpy as np


class FeatureStats:
    """Streaming first and second moments of features, optionally per class and with kept rows.

    ``append(features, labels=None, keep=None)`` adds a batch; ``labels`` (int array) splits the
    moments per class as well (the overall moments are the sum over classes). ``keep`` (bool mask)
    selects the rows stored for KID / precision-recall; ``capture_all=False`` stores none.
    Sums are float64, so the order of batches does not matter beyond round-off.
    """

    def __init__(self, capture_all: bool = False):
        self.capture_all = capture_all
        self.dim = None
        self.count = 0
        self.sum = None
        self.sum_sq = None
        self.class_count: dict[int, int] = {}
        self.class_sum: dict[int, np.ndarray] = {}
        self.class_sum_sq: dict[int, np.ndarray] = {}
        self._rows: list[np.ndarray] = []
        self._row_labels: list[np.ndarray] = []

    def _init(self, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
            self.sum = np.zeros([dim], np.float64)
            self.sum_sq = np.zeros([dim, dim], np.float64)
        elif dim != self.dim:
            raise ValueError(f"feature dimension {dim} != {self.dim}")

    def append(self, features, labels=None, keep=None) -> None:
        x = np.asarray(features, np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {x.shape}")
        if x.shape[0] == 0:
            return
        self._init(x.shape[1])
        if labels is None:
            x64 = x.astype(np.float64)
            self.count += x.shape[0]
            self.sum += x64.sum(0)
            self.sum_sq += x64.T @ x64
            lab = np.full([x.shape[0]], -1, np.int64)
        else:
            lab = np.asarray(labels, np.int64).reshape(-1)
            if lab.shape[0] != x.shape[0]:
                raise ValueError("labels and features differ in length")
            for c in np.unique(lab):
                c = int(c)
                xc = x[lab == c].astype(np.float64)
                if c not in self.class_count:
                    self.class_count[c] = 0
                    self.class_sum[c] = np.zeros([self.dim], np.float64)
                    self.class_sum_sq[c] = np.zeros([self.dim, self.dim], np.float64)
                s, ss = xc.sum(0), xc.T @ xc  # the d x d product once, for both totals
                self.class_count[c] += xc.shape[0]
                self.class_sum[c] += s
                self.class_sum_sq[c] += ss
                self.count += xc.shape[0]
                self.sum += s
                self.sum_sq += ss
        if self.capture_all:
            sel = np.ones([x.shape[0]], bool) if keep is None else np.asarray(keep, bool)
            if sel.any():
                self._rows.append(x[sel])
                self._row_labels.append(lab[sel])

    def mean_cov(self, label: int | None = None):
        """(mean, biased covariance) overall or of one class."""
        if label is None:
            n, s, ss = self.count, self.sum, self.sum_sq
        else:
            if label not in self.class_count:
                raise KeyError(label)
            n, s, ss = self.class_count[label], self.class_sum[label], self.class_sum_sq[label]
        if n == 0:
            raise ValueError("no features accumulated")
        mean = s / n
        cov = ss / n - np.outer(mean, mean)
        return mean, cov

    def features(self, label: int | None = None) -> np.ndarray:
        """The kept feature rows (all, or of one class)."""
        if not self.capture_all:
            raise ValueError("features were not captured (capture_all=False)")
        if not self._rows:
            return np.zeros([0, self.dim or 0], np.float32)
        if len(self._rows) > 1:  # join once; later calls reuse the joined rows
            self._rows = [np.concatenate(self._rows, 0)]
            self._row_labels = [np.concatenate(self._row_labels, 0)]
        x = self._rows[0]
        if label is None:
            return x
        return x[self._row_labels[0] == label]

    def row_labels(self) -> np.ndarray:
        """The labels of the kept rows (-1: appended without labels), aligned with ``features()``."""
        self.features()  # joins the batches
        return self._row_labels[0] if self._row_labels else np.zeros([0], np.int64)

    def labels(self) -> list[int]:
        return sorted(self.class_count)

    # -- (de)serialisation as a flat dict of arrays (np.savez) --
    def to_arrays(self) -> dict:
        out = {"count": np.int64(self.count), "capture_all": np.bool_(self.capture_all),
               "dim": np.int64(self.dim or 0)}
        if sum(self.class_count.values()) != self.count:  # else the sum over classes (saves 1/3)
            out["sum"], out["sum_sq"] = self.sum, self.sum_sq
        for c in self.class_count:
            out[f"class{c}_count"] = np.int64(self.class_count[c])
            out[f"class{c}_sum"] = self.class_sum[c]
            out[f"class{c}_sum_sq"] = self.class_sum_sq[c]
        if self.capture_all:
            out["rows"] = self.features()
            out["row_labels"] = self._row_labels[0] if self._row_labels else np.zeros([0], np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "FeatureStats":
        st = cls(capture_all=bool(arrays["capture_all"]))
        st.dim = int(arrays["dim"])
        st.count = int(arrays["count"])
        for k in arrays.keys():
            if k.startswith("class") and k.endswith("_count"):
                c = int(k[len("class"):-len("_count")])
                st.class_count[c] = int(arrays[k])
                st.class_sum[c] = np.asarray(arrays[f"class{c}_sum"], np.float64)
                st.class_sum_sq[c] = np.asarray(arrays[f"class{c}_sum_sq"], np.float64)
        if "sum" in arrays:
            st.sum = np.asarray(arrays["sum"], np.float64)
            st.sum_sq = np.asarray(arrays["sum_sq"], np.float64)
        else:
            st.sum = np.zeros([st.dim], np.float64)
            st.sum_sq = np.zeros([st.dim, st.dim], np.float64)
            for c in sorted(st.class_count):
                st.sum += st.class_sum[c]
                st.sum_sq += st.class_sum_sq[c]
        if st.capture_all:
            st._rows = [np.asarray(arrays["rows"], np.float32)]
            st._row_labels = [np.asarray(arrays["row_labels"], np.int64)]
        return st


def _one_blas_thread():
    """The 2048x2048 eigendecompositions run on one BLAS thread: LAPACK's symmetric eigensolvers
    gain little from threads, and on a shared, busy CPU OpenBLAS's spinning threads made them
    ~7x slower (40 s vs 6 s measured here). Best effort: a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues
    from round-off are clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2) (which has the same eigenvalues as S1 S2): real, and stable
    for singular covariances (n < d), unlike a general ``sqrtm`` of the non-symmetric product.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError("mean/covariance shapes differ")
    with _one_blas_thread():
        r1 = _sqrt_psd(s1)
        m = r1 @ s2 @ r1
        ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    d = float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(d, 0.0)


def kernel_inception_distance(real, gen, num_subsets: int = 100, max_subset_size: int = 1000,
                              seed: int = 0) -> float:
    """KID: mean over subsets of the unbiased MMD^2 with kernel (x.y/d + 1)^3 (NVlabs defaults)."""
    real = np.asarray(real, np.float64)
    gen = np.asarray(gen, np.float64)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError("features must be [N, D] with the same D")
    d = real.shape[1]
    m = min(real.shape[0], gen.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)]
        y = real[rng.choice(real.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.sum() / (m * m)
    return float(total / num_subsets)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
    return np.maximum(d, 0)


def _kth_radii(manifold: np.ndarray, k: int, row_batch: int, col_batch: int) -> np.ndarray:
    """Squared distance of each manifold sample to its k-th nearest neighbour (self excluded)."""
    n = manifold.shape[0]
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    out = np.empty([n], manifold.dtype)
    for r0 in range(0, n, row_batch):
        rows = manifold[r0:r0 + row_batch]
        # The k+1 smallest distances seen so far; the sample itself (distance 0) is one of them,
        # so the largest of the k+1 is the distance to the k-th neighbour.
        best = np.full([rows.shape[0], k + 1], np.inf, manifold.dtype)
        for c0 in range(0, n, col_batch):
            cand = np.concatenate([best, _sq_dists(rows, manifold[c0:c0 + col_batch])], axis=1)
            best = np.partition(cand, k, axis=1)[:, :k + 1]
        out[r0:r0 + row_batch] = best.max(1)
    return out


def _coverage(probes: np.ndarray, manifold: np.ndarray, radii: np.ndarray,
              row_batch: int, col_batch: int) -> float:
    inside = np.zeros([probes.shape[0]], bool)
    for r0 in range(0, probes.shape[0], row_batch):
        rows = probes[r0:r0 + row_batch]
        hit = np.zeros([rows.shape[0]], bool)
        for c0 in range(0, manifold.shape[0], col_batch):
            d = _sq_dists(rows, manifold[c0:c0 + col_batch])
            hit |= (d <= radii[None, c0:c0 + col_batch]).any(1)
        inside[r0:r0 + row_batch] = hit
    return float(inside.mean())


def precision_recall(real, gen, k: int = 3, row_batch: int = 4096, col_batch: int = 4096,
                     dtype=np.float32) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) with k-NN manifolds, batched over
    rows and columns so memory stays at row_batch x col_batch distances."""
    real = np.asarray(real, dtype)
    gen = np.asarray(gen, dtype)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError("features must be [N, D] with the same D")
    precision = _coverage(gen, real, _kth_radii(real, k, row_batch, col_batch), row_batch, col_batch)
    recall = _coverage(real, gen, _kth_radii(gen, k, row_batch, col_batch), row_batch, col_batch)
    return precision, recall
