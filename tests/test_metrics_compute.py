"""compute_metrics end to end (datasets written with the data writer, streamed through the pipeline)
against references computed here directly from the image arrays: SciPy FID, a NumPy unbiased MMD,
brute-force k-NN precision/recall. A tiny NumPy feature extractor stands in for Inception so the
reference can apply it to the arrays; the Inception extractor itself is tested separately."""
import os

import numpy as np
import pytest
import scipy.linalg

from histaug_tf.common import UserError
from histaug_tf.data.writer import DatasetWriter
from histaug_tf.metrics import compute_metrics


class QuadrantMeans:
    """Features: per-channel means of the 4 image quadrants plus their squares (24-d)."""

    identity = "test-quadrant-means"
    dim = 24

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return quadrant_features(np.asarray(images, np.float64)).astype(np.float32)


def quadrant_features(x):
    h, w = x.shape[1] // 2, x.shape[2] // 2
    q = [x[:, :h, :w], x[:, :h, w:], x[:, h:, :w], x[:, h:, w:]]
    m = np.concatenate([a.mean((1, 2)) for a in q], 1)
    return np.concatenate([m, m ** 2], 1)


def write_set(path, images, labels, name="set"):
    with DatasetWriter(str(path), name, images.shape[1:], label_names=("normal", "tumour"),
                       shard_size=7) as w:  # several shards: exercises interleaving
        for i, (img, lab) in enumerate(zip(images, labels)):
            w.add("train", img, int(lab), key=f"{name}/{i}", group="g")
    return str(path)


def make_images(rng, n, shift):
    labels = rng.integers(0, 2, size=n)
    base = rng.normal(128 + 40 * labels[:, None, None, None] + shift, 30, size=(n, 8, 8, 3))
    return np.clip(base, 0, 255).astype(np.uint8), labels


def to_float(u8):
    return u8.astype(np.float64) / 127.5 - 1


def fid_ref(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))))


def mmd2_ref(x, y):
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.sum() / (m * n))


def pr_ref(real, gen, k=3):
    def radii(s):
        d = np.linalg.norm(s[:, None] - s[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def cov(p, m):
        return float((np.linalg.norm(p[:, None] - m[None], axis=-1) <= radii(m)[None]).any(1).mean())

    return cov(gen, real), cov(real, gen)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("sets")
    real, rl = make_images(rng, 60, 0)
    gen, gl = make_images(rng, 45, 3)
    return (write_set(root / "real", real, rl, "real"), real, rl,
            write_set(root / "gen", gen, gl, "gen"), gen, gl)


def test_dataset_vs_dataset_matches_references(two_sets, tmp_path):
    real_dir, real, rl, gen_dir, gen, gl = two_sets
    details = {}
    # _full: every real image (60 < the caps); the precision/recall extractor is its own one.
    res = compute_metrics(["fid_full", "kid_full", "pr_full"], data_dir=real_dir,
                          gen_data_dir=gen_dir, extractor=QuadrantMeans(), pr_extractor=QuadrantMeans(),
                          cache_dir=str(tmp_path), batch_size=16,
                          kid_subsets=3, kid_subset_size=10 ** 6, details=details)
    fr, fg = quadrant_features(to_float(real)), quadrant_features(to_float(gen))
    assert res["fid_full"] == pytest.approx(fid_ref(fg, fr), rel=1e-6)
    for c, name in enumerate(["normal", "tumour"]):
        assert res[f"fid_full/{name}"] == pytest.approx(fid_ref(fg[gl == c], fr[rl == c]), rel=1e-6)
    assert details["num_real"] == 60 and details["num_gen"] == 45
    assert (res["pr_full_precision"], res["pr_full_recall"]) == pytest.approx(pr_ref(fr, fg), abs=1e-9)
    assert 0 < res["pr_full_precision"] < 1 and 0 < res["pr_full_recall"] < 1
    assert set(res) == {"fid_full", "fid_full/normal", "fid_full/tumour", "kid_full",
                        "pr_full_precision", "pr_full_recall"}
    # Subsets as large as both sets: KID is the plain unbiased MMD of the two sets.
    res2 = compute_metrics(["kid"], data_dir=real_dir, gen_data_dir=real_dir,
                           extractor=QuadrantMeans(), cache_dir=str(tmp_path), kid_subsets=2)
    assert res2["kid"] == pytest.approx(mmd2_ref(fr, fr), rel=1e-6)


def one_shard_reals(tmp_path, n=70):
    rng = np.random.default_rng(5)
    real, rl = make_images(rng, n, 0)
    real_dir = str(tmp_path / "one_shard")
    with DatasetWriter(real_dir, "r", real.shape[1:], shard_size=1000) as w:  # file order = order
        for i, (img, lab) in enumerate(zip(real, rl)):
            w.add("train", img, int(lab), key=f"r/{i}", group="g")
    return real_dir, real, rl


def test_kept_real_subset_for_kid(two_sets, tmp_path):
    _, _, _, gen_dir, gen, _ = two_sets
    real_dir, real, rl = one_shard_reals(tmp_path)
    details = {}
    res = compute_metrics(["kid", "fid", "fid_full"], data_dir=real_dir, gen_data_dir=gen_dir,
                          extractor=QuadrantMeans(), cache_dir=str(tmp_path), kid_subsets=2,
                          seed=3, details=details)
    # As NVlabs' max_real: without _full as many reals as generated images (45 of 70), drawn as
    # documented, default_rng(seed).choice(n_real, 45); fid_full uses every real image.
    kept = np.random.default_rng(3).choice(70, 45, replace=False)
    fr, fg = quadrant_features(to_float(real)), quadrant_features(to_float(gen))
    assert details["num_real_used"] == {"kid": 45, "fid": 45, "fid_full": 70}
    assert details["num_real"] == 70
    assert res["kid"] == pytest.approx(mmd2_ref(fg, fr[kept]), rel=1e-6)
    assert res["fid"] == pytest.approx(fid_ref(fg, fr[kept]), rel=1e-6)
    assert res["fid_full"] == pytest.approx(fid_ref(fg, fr), rel=1e-6)
    # --max_real_features overrides the KID / precision-recall cap (not FID's).
    details = {}
    compute_metrics(["kid"], data_dir=real_dir, gen_data_dir=gen_dir, max_real_features=30,
                    extractor=QuadrantMeans(), cache_dir=str(tmp_path), kid_subsets=2, seed=3,
                    details=details)
    assert details["num_real_used"] == {"kid": 30}


def test_real_statistics_cache(two_sets, tmp_path):
    real_dir, _, _, gen_dir, _, _ = two_sets
    ex = QuadrantMeans()
    d1, d2 = {}, {}
    r1 = compute_metrics("fid", data_dir=real_dir, gen_data_dir=gen_dir, extractor=ex,
                         cache_dir=str(tmp_path), details=d1)
    calls = ex.calls
    r2 = compute_metrics("fid", data_dir=real_dir, gen_data_dir=gen_dir, extractor=ex,
                         cache_dir=str(tmp_path), details=d2)
    assert not d1["real_cache"]["cached"] and d2["real_cache"]["cached"]
    assert d1["real_cache"]["cache_file"] == d2["real_cache"]["cache_file"]
    assert os.path.isfile(d1["real_cache"]["cache_file"])
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    assert r1 == pytest.approx(r2, rel=1e-9)
    # Both sides were cached on the second call: no features computed at all.
    assert ex.calls == calls

    class Other(QuadrantMeans):
        identity = "test-other"

    d3 = {}
    compute_metrics("fid", data_dir=real_dir, gen_data_dir=gen_dir, extractor=Other(),
                    cache_dir=str(tmp_path), details=d3)
    assert d3["real_cache"]["cache_file"] != d1["real_cache"]["cache_file"]
    # A different resolution is another key too.
    d4 = {}
    compute_metrics("fid", data_dir=real_dir, gen_data_dir=gen_dir, extractor=ex, resolution=4,
                    cache_dir=str(tmp_path), details=d4)
    assert d4["real_cache"]["cache_file"] != d1["real_cache"]["cache_file"]


def test_cache_key_follows_shard_checksums(tmp_path):
    rng = np.random.default_rng(1)
    a, al = make_images(rng, 20, 0)
    b = a.copy()
    b[0, 0, 0, 0] ^= 1  # one pixel differs → other shard bytes → other sha256
    da = write_set(tmp_path / "a", a, al, "x")
    db = write_set(tmp_path / "b", b, al, "x")
    k1, k2 = {}, {}
    compute_metrics("fid", data_dir=da, gen_data_dir=da, extractor=QuadrantMeans(),
                    cache_dir=str(tmp_path / "c"), details=k1)
    compute_metrics("fid", data_dir=db, gen_data_dir=da, extractor=QuadrantMeans(),
                    cache_dir=str(tmp_path / "c"), details=k2)
    assert k1["real_cache"]["cache_file"] != k2["real_cache"]["cache_file"]


class FakeG:
    """Stands in for the Generator: a fixed NumPy-expressible function of (z, c)."""

    def __init__(self, c_dim=0, res=8):
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels = 5, c_dim, res, 3

    def __call__(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode="random"):
        import tensorflow as tf

        return tf.numpy_function(lambda z_, c_: fake_images(z_, c_, self.img_resolution),
                                 [z, c], tf.float32)


def fake_images(z, c, res):
    z = np.asarray(z, np.float64)
    c = np.asarray(c, np.float64)
    shift = c @ np.arange(c.shape[1]) * 0.5 if c.shape[1] else 0.0
    yy = np.linspace(-1, 1, res)
    img = np.tanh(z[:, None, None, :3] * 0.4 + yy[None, :, None, None] * z[:, None, None, 3:4] * 0.3
                  + np.reshape(shift, (-1, 1, 1, 1)) - 0.2)
    return np.broadcast_to(img, (z.shape[0], res, res, 3)).astype(np.float32)


def expected_gen_images(G, seeds, labels=None):
    z = np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds])
    c = np.zeros([len(seeds), G.c_dim])
    if labels is not None:
        c[np.arange(len(seeds)), labels] = 1
    x = fake_images(z, c, G.img_resolution)
    return np.clip(np.floor(x * 127.5 + 128), 0, 255).astype(np.uint8)


def gen(G, noise_mode="random"):
    """The generated side as the callers build it: a Synthesizer over one network or {class: net}."""
    from histaug_tf.apps.generate import Synthesizer
    return Synthesizer(G=None if isinstance(G, dict) else G,
                       per_class=G if isinstance(G, dict) else None, noise_mode=noise_mode,
                       batch_size=16)


def test_network_side_unconditional_and_conditional(two_sets, tmp_path):
    real_dir, real, rl, _, _, _ = two_sets
    fr = quadrant_features(to_float(real))
    G = FakeG(c_dim=0)
    res = compute_metrics(["fid", "kid"], data_dir=real_dir, generator=gen(G), num_gen=60, seed=100,
                          extractor=QuadrantMeans(), cache_dir=str(tmp_path), batch_size=16,
                          kid_subsets=2)
    fg = quadrant_features(to_float(expected_gen_images(G, range(100, 160))))
    assert res["fid"] == pytest.approx(fid_ref(fg, fr), rel=1e-6)
    assert "fid/normal" not in res  # unconditional: no labels on the generated side
    # 60 generated, 60 real: every KID subset holds both whole sets, so KID is their unbiased MMD.
    assert res["kid"] == pytest.approx(mmd2_ref(fg, fr), rel=1e-6)

    Gc = FakeG(c_dim=2)
    res = compute_metrics(["fid_full"], data_dir=real_dir, generator=gen(Gc), num_gen=40, seed=7,
                          extractor=QuadrantMeans(), cache_dir=str(tmp_path), batch_size=16)
    # Documented: labels ~ real class frequencies, drawn with default_rng(seed).
    counts = np.bincount(rl, minlength=2)
    labels = np.random.default_rng(7).choice(2, size=40, p=counts / counts.sum())
    fg = quadrant_features(to_float(expected_gen_images(Gc, range(7, 47), labels)))
    assert res["fid_full"] == pytest.approx(fid_ref(fg, fr), rel=1e-6)
    for c, name in enumerate(["normal", "tumour"]):
        assert res[f"fid_full/{name}"] == pytest.approx(fid_ref(fg[labels == c], fr[rl == c]), rel=1e-6)

    # One network per class: class k from network k.
    per = {0: FakeG(c_dim=0), 1: FakeG(c_dim=2)}
    res = compute_metrics(["fid_full"], data_dir=real_dir, generator=gen(per), num_gen=40, seed=7,
                          extractor=QuadrantMeans(), cache_dir=str(tmp_path), batch_size=16)
    imgs = np.zeros([40, 8, 8, 3], np.uint8)
    seeds = np.arange(7, 47)
    imgs[labels == 0] = expected_gen_images(per[0], seeds[labels == 0])
    imgs[labels == 1] = expected_gen_images(per[1], seeds[labels == 1], labels[labels == 1])
    fg = quadrant_features(to_float(imgs))
    assert res["fid_full"] == pytest.approx(fid_ref(fg, fr), rel=1e-6)

    with pytest.raises(UserError, match="no network for class"):
        compute_metrics(["fid"], data_dir=real_dir, generator=gen({1: FakeG()}), num_gen=10,
                        extractor=QuadrantMeans(), cache_dir=str(tmp_path))
    with pytest.raises(UserError, match="c_dim=3"):
        compute_metrics(["fid"], data_dir=real_dir, generator=gen(FakeG(c_dim=3)), num_gen=10,
                        extractor=QuadrantMeans(), cache_dir=str(tmp_path))
    with pytest.raises(UserError, match="unknown metric"):
        compute_metrics(["fid", "is"], data_dir=real_dir, generator=gen(G), extractor=QuadrantMeans())


class NoiseRecordingG(FakeG):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.noise_modes = set()

    def __call__(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode="random"):
        self.noise_modes.add(noise_mode)
        return super().__call__(z, c, truncation_psi, truncation_cutoff, noise_mode)


def test_training_metrics_generate_as_the_reference(two_sets, tmp_path):
    """Random noise, and new random latents at every snapshot drawn from a seed derived from kimg
    (the image count), so a rerun measures the same latents at the same snapshot."""
    from histaug_tf.metrics import training_metrics

    real_dir, real, rl, _, _, _ = two_sets
    fr = quadrant_features(to_float(real[rl == 1]))
    results = {}
    for kimg in (12.5, 12.5, 40.0):
        G = NoiseRecordingG(c_dim=0)
        details = {}
        # The trainer's call: a GAN of class 1 only; 30 generated images against all reals.
        res = training_metrics(["fid30_full"], generator=gen(G), data_dir=real_dir, kimg=kimg,
                               resolution=8, resize_mode="crop", class_filter=[1],
                               extractor=QuadrantMeans(), cache_dir=str(tmp_path), details=details)
        assert G.noise_modes == {"random"}
        seeds = np.random.default_rng(int(kimg * 1000)).integers(0, 2 ** 31, 30)
        fg = quadrant_features(to_float(expected_gen_images(G, seeds)))
        assert details["num_gen"] == 30 and details["num_real"] == int((rl == 1).sum())
        assert res == {"fid30_full": pytest.approx(fid_ref(fg, fr), rel=1e-6)}
        results.setdefault(kimg, []).append(res["fid30_full"])
    assert results[12.5][0] == results[12.5][1] != results[40.0][0]
    with pytest.raises(UserError, match="class 5 out of range"):
        training_metrics(["fid"], generator=gen(FakeG()), data_dir=real_dir, class_filter=5,
                         extractor=QuadrantMeans(), cache_dir=str(tmp_path))


def test_names_caps_suffixes_and_refusals(two_sets, tmp_path):
    real_dir, real, rl = one_shard_reals(tmp_path)
    fr = quadrant_features(to_float(real))
    G = FakeG(c_dim=0)

    class RandomInc(QuadrantMeans):
        identity = "test-random-inception"
        name_suffix = "_random"

    # pr20: 20 generated images, 20 of the 70 reals (default_rng(seed).choice), k = 3, VGG side.
    res = compute_metrics(["pr20", "pr20_inc", "fid20"], data_dir=real_dir, generator=gen(G), seed=4,
                          extractor=RandomInc(), pr_extractor=QuadrantMeans(),
                          cache_dir=str(tmp_path), batch_size=8)
    fg = quadrant_features(to_float(expected_gen_images(G, range(4, 24))))
    kept = np.random.default_rng(4).choice(70, 20, replace=False)
    p, r = pr_ref(fr[kept], fg)
    assert set(res) == {"pr20_precision", "pr20_recall", "pr20_inc_random_precision",
                        "pr20_inc_random_recall", "fid20_random"}
    assert (res["pr20_precision"], res["pr20_recall"]) == (p, r)
    assert (res["pr20_inc_random_precision"], res["pr20_inc_random_recall"]) == (p, r)
    assert res["fid20_random"] == pytest.approx(fid_ref(fg, fr[kept]), rel=1e-6)

    from histaug_tf.metrics.compute import parse_metric_spec
    caps = {s.name: (s.kind, s.num_gen, s.nhood, s.family, s.max_real(50000))
            for s in parse_metric_spec("fid50k_full,kid50k_full,pr50k3_full,pr50k3,pr10k5_inc")}
    assert caps == {"fid50k_full": ("fid", 50000, 3, "inception", None),
                    "kid50k_full": ("kid", 50000, 3, "inception", 1000000),
                    "pr50k3_full": ("pr", 50000, 3, "vgg16", 200000),
                    "pr50k3": ("pr", 50000, 3, "vgg16", 50000),
                    "pr10k5_inc": ("pr", 10000, 5, "inception", 50000)}

    # Refused before any work: no weights for the network a metric needs.
    ex = QuadrantMeans()
    with pytest.raises(UserError, match="pr50k3_full: precision/recall uses VGG16 .*--vgg16_weights"):
        compute_metrics(["fid50k_full", "pr50k3_full"], data_dir=real_dir, generator=gen(G), extractor=ex,
                        cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="--inception_weights is required"):
        compute_metrics(["fid50k_full"], data_dir=real_dir, generator=gen(G), cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="different numbers of generated images"):
        compute_metrics(["fid10k", "kid2k"], data_dir=real_dir, generator=gen(G), extractor=ex,
                        cache_dir=str(tmp_path / "c"))
    assert ex.calls == 0 and not os.path.exists(tmp_path / "c")
