"""Memorisation check: are synthetic patches new tissue, or copies of the GAN's training patches?

For each synthetic patch, the distance to its nearest training patch is compared with the training
patches' own leave-one-out nearest-neighbour distances (how close two *different* real patches of
this set come). The reported ``share`` is the fraction of synthetic patches closer to a training
patch than the 1st percentile of those leave-one-out distances: about 0.01 for a generator whose
patches are new draws from the same distribution as its training set (by construction), near 1 for
one that reproduces its training patches.

Feature space (``features='pixels'``, the default): each image in [0, 1] is blurred with a Gaussian
of ``sigma`` pixels (reflected borders) and area-downsampled to at most ``size`` × ``size``, then
flattened; distances are root-mean-square differences. A memorised copy differs from its original by
the generator's per-layer noise (fine texture) and small colour offsets; blurring and downsampling
discard those and keep composition and colour, so a copy stays close while two different tissue
patches do not — and the check stays cheap enough to run on every cell of a study. With
``features='inception'`` the caller passes FID Inception pool features instead (semantic
similarity; ``calc_metrics`` does this when ``--inception_weights`` is given).

Training patches are compared in all 8 orientations (flips and 90° rotations): a GAN trained with
flip/rotation augmentation (ADA's ``bgc``, ``--flips``) can reproduce a patch turned over. The
leave-one-out distance of a training patch excludes all 8 orientations of itself.

Pure NumPy, no TensorFlow: ``memorization(train_images, synthetic_images)``.
"""
from __future__ import annotations

import numpy as np

PERCENTILE = 1.0


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_features(images, sigma: float = 1.0, size: int = 16) -> np.ndarray:
    """uint8 (or [0, 1] float) images [N, H, W, C] → float32 features [N, D]."""
    x = np.asarray(images)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if sigma > 0:
        k = _gaussian_kernel(sigma)
        r = len(k) // 2
        for axis in (1, 2):
            pad = [(0, 0)] * 4
            pad[axis] = (r, r)
            xp = np.pad(x, pad, mode="reflect")
            n = x.shape[axis]
            x = sum(k[i] * np.take(xp, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    n, h, w, c = x.shape
    f = max(1, h // size)
    if f > 1:
        h2, w2 = h // f, w // f
        x = x[:, :h2 * f, :w2 * f].reshape(n, h2, f, w2, f, c).mean(axis=(2, 4))
    return x.reshape(n, -1).astype(np.float32)


def dihedral(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] → [8, N, H, W, C]: the 8 flips/rotations of each square image (0 = itself)."""
    out = []
    for t in range(2):
        base = np.swapaxes(images, 1, 2) if t else images
        for fy in range(2):
            for fx in range(2):
                v = base[:, ::-1] if fy else base
                out.append(v[:, :, ::-1] if fx else v)
    return np.stack(out)


def _sq_dists(a: np.ndarray, b: np.ndarray, chunk: int = 256):
    """Squared Euclidean distances [len(a), len(b)] in float64, in chunks of rows."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    bb = (b * b).sum(1)
    for i in range(0, len(a), chunk):
        x = a[i:i + chunk]
        d = (x * x).sum(1)[:, None] + bb[None, :] - 2.0 * x @ b.T
        yield i, np.maximum(d, 0.0)


def nearest(query: np.ndarray, ref: np.ndarray, ref_owner: np.ndarray, exclude_owner=None):
    """For each query row: (distance, index into ref) of its nearest ref row, skipping ref rows
    whose owner equals ``exclude_owner[i]`` (leave-one-out). Distances are RMS per feature."""
    dist = np.empty(len(query))
    idx = np.empty(len(query), np.int64)
    for i, d in _sq_dists(query, ref):
        if exclude_owner is not None:
            d = np.where(ref_owner[None, :] == exclude_owner[i:i + len(d), None], np.inf, d)
        j = np.argmin(d, axis=1)
        idx[i:i + len(d)] = j
        dist[i:i + len(d)] = np.sqrt(d[np.arange(len(d)), j] / query.shape[1])
    return dist, idx


def memorization(train_images, synthetic_images, *, train_features=None, synthetic_features=None,
                 sigma: float = 1.0, size: int = 16, orientations: bool = True,
                 num_pairs: int = 8) -> dict:
    """The memorisation statistics of ``synthetic_images`` against ``train_images`` (uint8 NHWC).

    ``train_features`` / ``synthetic_features`` replace the blurred pixels when given (then
    ``train_features`` must hold the 8 orientations as [8, N, D] when ``orientations``, or
    [N, D]). Returns a JSON-able dict: ``share`` (the headline number), ``threshold`` (the 1st
    percentile of the training leave-one-out distances), percentiles of both distance sets, and
    ``closest``: the ``num_pairs`` synthetic patches nearest to a training patch, each with
    ``synthetic`` and ``train`` (indices into the inputs), ``orientation`` (0–7, ``dihedral``'s
    order) and ``distance``."""
    train_images = np.asarray(train_images)
    n = len(train_images) if train_features is None else train_features.shape[-2]
    if n < 2:
        raise ValueError("the memorisation check needs at least 2 training patches")
    if train_features is None:
        views = dihedral(train_images) if orientations else train_images[None]
        ref = np.concatenate([blur_features(v, sigma, size) for v in views])
        feature = f"pixels (Gaussian blur sigma {sigma:g} px, area-downsampled to <= {size}x{size})"
    else:
        tf_ = np.asarray(train_features)
        ref = tf_.reshape(-1, tf_.shape[-1])
        feature = "given features"
    k = len(ref) // n
    owner = np.tile(np.arange(n), k)            # ref row r belongs to training patch r % n
    orient = np.repeat(np.arange(k), n)
    base = ref[:n]                              # orientation 0: the patches as they are
    loo, _ = nearest(base, ref, owner, exclude_owner=np.arange(n))
    syn = (blur_features(synthetic_images, sigma, size) if synthetic_features is None
           else np.asarray(synthetic_features))
    d, j = nearest(syn, ref, owner)
    thr = float(np.percentile(loo, PERCENTILE))
    order = np.argsort(d, kind="stable")[:num_pairs]
    pct = (1, 5, 50)
    return {
        "feature": feature, "orientations": int(k), "n_train": int(n), "n_synthetic": int(len(syn)),
        "percentile": PERCENTILE, "threshold": thr,
        "share": float(np.mean(d < thr)) if len(d) else float("nan"),
        "train_loo_percentiles": {str(p): float(np.percentile(loo, p)) for p in pct},
        "synthetic_nn_percentiles": {str(p): float(np.percentile(d, p)) for p in pct},
        "closest": [{"synthetic": int(i), "train": int(owner[j[i]]),
                     "orientation": int(orient[j[i]]), "distance": float(d[i])} for i in order],
    }
