"""Generator / Discriminator: structure, parameter counts (NVlabs), jit, mapping, truncation."""
import numpy as np
import pytest
import tensorflow as tf

from histaug_tf.gan.layers import noise_seed
from histaug_tf.gan.networks import Generator, Discriminator, count_params
from histaug_tf.gan.presets import get_preset

RNG = np.random.default_rng(7)


def tiny_G(res=16, c_dim=0, img_channels=3, **syn):
    syn = dict(dict(channel_base=8 * res, channel_max=8), **syn)
    return Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=img_channels,
                     mapping_kwargs=dict(num_layers=2), synthesis_kwargs=syn)


def tiny_D(res=16, c_dim=0, img_channels=3, **kw):
    kw = dict(dict(channel_base=8 * res, channel_max=8, mapping_kwargs=dict(num_layers=2),
                   epilogue_kwargs=dict(mbstd_group_size=2)), **kw)
    return Discriminator(c_dim=c_dim, img_resolution=res, img_channels=img_channels, **kw)


def inputs(n, z_dim, c_dim):
    z = tf.constant(RNG.standard_normal([n, z_dim]), tf.float32)
    c = tf.one_hot(np.arange(n) % max(c_dim, 1), c_dim) if c_dim else None
    return z, c


# ------------------------------------------------------------------ parameter counts vs NVlabs
# Counts of sum(p.numel() for p in G.parameters()) of NVlabs/stylegan2-ada-pytorch
# training/networks.py (github.com/NVlabs/stylegan2-ada-pytorch at commit d72cc7d041b4,
# built on CPU with torch 2.13.0) with the
# train.py cfg_specs of each preset (z_dim = w_dim = 512, channel_max 512, G mapping layers
# = map, D defaults; cifar: architecture='orig').
NVLABS_COUNTS = [
    # cfg, resolution, c_dim, G params, D params
    ("paper256", 256, 0, 24767458, 24001089),
    ("paper256", 256, 2, 25031138, 26366016),
    ("cifar", 32, 0, 19947539, 20720641),
    ("cifar", 32, 10, 20215315, 23089664),
    ("auto", 64, 0, 22243608, 23407361),
    ("demo", 32, 0, 3860243, 1346305),
    ("demo", 32, 2, 4123923, 1495168),
    ("tiny", 16, 0, 57614, 65153),
    ("tiny", 32, 2, 67843, 82128),
]


@pytest.mark.parametrize("cfg,res,c_dim,g_count,d_count", NVLABS_COUNTS)
def test_parameter_counts_equal_nvlabs(cfg, res, c_dim, g_count, d_count):
    p = get_preset(cfg, res, c_dim=c_dim, mixed_precision=False)
    assert count_params(Generator(**p["G_kwargs"])) == g_count
    assert count_params(Discriminator(**p["D_kwargs"])) == d_count


@pytest.mark.slow
def test_parameter_counts_stylegan2_1024():
    p = get_preset("stylegan2", 1024, mixed_precision=True)
    assert count_params(Generator(**p["G_kwargs"])) == 30370060
    assert count_params(Discriminator(**p["D_kwargs"])) == 29012513


# ------------------------------------------------------------------ structure
def test_generator_structure_and_contract():
    G = tiny_G(32, c_dim=3, img_channels=1)
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (8, 3, 8, 32, 1)
    assert G.num_ws == 2 * 5 - 2
    assert tuple(G.mapping.w_avg.shape) == (8,)
    z, c = inputs(4, 8, 3)
    img = G(z, c)
    assert img.shape == (4, 32, 32, 1) and img.dtype == tf.float32
    ws = G.mapping(z, c)
    assert ws.shape == (4, G.num_ws, 8)
    img2 = G.synthesis(ws, noise_mode="const")
    with pytest.raises(ValueError):
        G.synthesis(ws[:, 1:])
    np.testing.assert_allclose(G(z, c, noise_mode="const").numpy(), img2.numpy(), atol=1e-6)
    # every ws row is the same w before truncation
    np.testing.assert_allclose(ws.numpy()[:, 0], ws.numpy()[:, -1])
    D = tiny_D(32, c_dim=3, img_channels=1)
    assert D(img, c).shape == (4, 1)


def test_variable_shapes_are_nvlabs_layout():
    G = tiny_G(16, c_dim=2)
    shapes = {v.path.split("/", 1)[1]: tuple(v.shape) for v in G.variables}
    # channels: min(128 // res, 8) = 8 everywhere
    assert shapes["synthesis/b4/const"] == (4, 4, 8)
    assert shapes["synthesis/b8/conv0/weight"] == (3, 3, 8, 8)
    assert shapes["synthesis/b16/torgb/weight"] == (1, 1, 8, 3)
    assert shapes["synthesis/b16/conv1/noise_const"] == (16, 16)
    assert shapes["synthesis/b16/conv1/noise_strength"] == ()
    assert shapes["mapping/embed/weight"] == (2, 8)
    assert shapes["mapping/fc0/weight"] == (16, 8)  # z_dim + embed
    assert shapes["mapping/w_avg"] == (8,)
    non_trainable = {v.path.split("/", 1)[1] for v in G.non_trainable_variables}
    assert non_trainable == {"mapping/w_avg"} | {
        f"synthesis/b{r}/conv{i}/noise_const" for r in (4, 8, 16) for i in (0, 1)
        if not (r == 4 and i == 0)}
    D = tiny_D(16, c_dim=2)
    dshapes = {v.path.split("/", 1)[1]: tuple(v.shape) for v in D.variables}
    assert dshapes["b16/fromrgb/weight"] == (1, 1, 3, 8)
    assert dshapes["b16/skip/weight"] == (1, 1, 8, 8) and "b16/skip/bias" not in dshapes
    assert dshapes["b4/conv/weight"] == (3, 3, 9, 8)  # + 1 mbstd channel
    assert dshapes["b4/fc/weight"] == (8 * 16, 8)
    assert dshapes["b4/out/weight"] == (8, 8)  # cmap_dim = channels at 4x4


# ------------------------------------------------------------------ mapping vs NumPy
def test_mapping_matches_numpy_and_truncation():
    G = tiny_G(16, c_dim=2)
    m = G.mapping
    z, c = inputs(3, 8, 2)
    for v in m.trainable_variables:
        v.assign(RNG.standard_normal(v.shape).astype(np.float32))
    w_avg = RNG.standard_normal([8]).astype(np.float32)
    m.w_avg.assign(w_avg)

    def norm(x):
        return x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 1e-8)

    zz, cc = z.numpy().astype(np.float64), c.numpy().astype(np.float64)
    y = cc @ (m.embed.weight.numpy() / np.sqrt(2)) + m.embed.bias.numpy()
    x = np.concatenate([norm(zz), norm(y)], axis=1)
    for fc in m.fcs:
        x = x @ (fc.weight.numpy() * 0.01 / np.sqrt(fc.in_features)) + fc.bias.numpy() * 0.01
        x = np.where(x >= 0, x, 0.2 * x) * np.sqrt(2)
    ws = m(z, c).numpy()
    np.testing.assert_allclose(ws, np.repeat(x[:, None], G.num_ws, axis=1), rtol=1e-4, atol=1e-5)

    t = m(z, c, truncation_psi=0.5).numpy()
    np.testing.assert_allclose(t, w_avg + 0.5 * (ws - w_avg), rtol=1e-4, atol=1e-5)
    t0 = m(z, c, truncation_psi=0.0).numpy()
    np.testing.assert_allclose(t0, np.broadcast_to(w_avg, t0.shape), atol=1e-6)
    tc = m(z, c, truncation_psi=0.5, truncation_cutoff=2).numpy()
    np.testing.assert_allclose(tc[:, :2], t[:, :2], atol=1e-5)
    np.testing.assert_allclose(tc[:, 2:], ws[:, 2:], atol=1e-5)


def test_w_avg_update_is_ema_beta_0995():
    G = tiny_G(8)
    z, _ = inputs(5, 8, 0)
    before = G.mapping.w_avg.numpy().copy()
    G.mapping(z, None)  # update_emas defaults to False
    np.testing.assert_array_equal(G.mapping.w_avg.numpy(), before)
    w = G.mapping(z, None).numpy()[:, 0]
    G.mapping(z, None, update_emas=True)
    np.testing.assert_allclose(G.mapping.w_avg.numpy(),
                               0.995 * before + 0.005 * w.mean(axis=0), atol=1e-6)


def test_conditional_requires_c_and_unconditional_ignores_it():
    G = tiny_G(8, c_dim=2)
    z, _ = inputs(2, 8, 0)
    with pytest.raises(ValueError):
        G.mapping(z, None)
    Gu = tiny_G(8, c_dim=0)
    a = Gu(z, None, noise_mode="const").numpy()
    b = Gu(z, tf.zeros([2, 0]), noise_mode="const").numpy()
    np.testing.assert_array_equal(a, b)


def test_noise_modes_on_generator():
    G = tiny_G(16)
    for v in G.trainable_variables:
        if v.path.endswith("noise_strength"):
            v.assign(0.3)
    z, _ = inputs(2, 8, 0)
    c1 = G(z, None, noise_mode="const").numpy()
    np.testing.assert_array_equal(c1, G(z, None, noise_mode="const").numpy())
    assert np.abs(G(z, None, noise_mode="random").numpy() - c1).max() > 1e-4
    assert np.abs(G(z, None, noise_mode="none").numpy() - c1).max() > 1e-4


@pytest.mark.parametrize("seeded", [True, False])
def test_synthesis_draws_all_layers_noise_at_once(seeded):
    """In an XLA program each random draw is compiled on its own: the synthesis network draws
    the random noise of all its layers in one draw (stateless under ``noise_seed``, else
    TensorFlow's global RNG), as many values per image as its layers' noise maps hold (each
    layer's slice: ``tests/test_layers.py``)."""
    G = tiny_G(16)
    ws = tf.constant(RNG.standard_normal([2, G.num_ws, 8]), tf.float32)

    def synth(ws):
        with noise_seed(tf.constant([1, 2], tf.int64) if seeded else None):
            return G.synthesis(ws, noise_mode="random")

    graph = tf.function(synth).get_concrete_function(ws).graph
    normal = [op for op in graph.get_operations()
              if op.type in ("StatelessRandomNormalV2", "RandomStandardNormal")]
    assert len(normal) == 1, [op.type for op in normal]
    assert normal[0].outputs[0].shape[1] == sum(G.synthesis._noise_sizes()) == 16 + 2 * 64 + 2 * 256


def test_fused_modconv_generator_agrees():
    G = tiny_G(16, c_dim=2)
    z, c = inputs(3, 8, 2)
    a = G(z, c, noise_mode="const", fused_modconv=False).numpy()
    b = G(z, c, noise_mode="const", fused_modconv=True).numpy()
    np.testing.assert_allclose(a, b, atol=1e-4)


def _record_block_dtypes(blocks):
    """Patch each block's call to record the dtype of the features it returns, by resolution."""
    seen = {}
    for blk in blocks:
        def spy(*a, _orig=blk.call, _res=blk.resolution, **k):
            out = _orig(*a, **k)
            seen[_res] = out[0].dtype.name
            return out
        blk.call = spy
    return seen


# float16 unit roundoff u = 2^-11. At seed 0 below the fp16 top-2 resolutions differ from fp32 by
# 2.28 u (G) and 0.95 u (D) of the output's max (measured; 0.9 .. 3.7 u over 6 other random
# inits). Tolerances 3 u (G) and 2 u (D): 1.3x and 2.1x the measurement. An fp32 path (0) fails,
# and so does rounding the fp16 blocks' features through bfloat16 (G: 3.73 u).
FP16_U = 2.0 ** -11


def test_mixed_precision_uses_float16_and_is_close_to_fp32():
    import keras
    keras.utils.set_random_seed(0)
    z = tf.constant(np.random.default_rng(0).standard_normal([2, 8]), tf.float32)
    G = tiny_G(32, num_fp16_res=2, conv_clamp=256)
    seen = _record_block_dtypes(G.synthesis.blocks)
    a = G(z, None, noise_mode="const").numpy()
    # the top 2 resolutions compute in float16, the others in float32
    assert seen == {4: "float32", 8: "float32", 16: "float16", 32: "float16"}, seen
    seen.clear()
    b = G(z, None, noise_mode="const", force_fp32=True).numpy()
    assert set(seen.values()) == {"float32"}, seen
    assert a.dtype == np.float32
    err, scale = np.abs(a - b).max(), np.abs(b).max()
    assert 0 < err <= 3 * FP16_U * scale, (err, scale, err / scale / FP16_U)

    D = tiny_D(32, num_fp16_res=2, conv_clamp=256)
    seen = _record_block_dtypes(D.blocks)
    la = D(b, None).numpy()
    assert seen == {32: "float16", 16: "float16", 8: "float32"}, seen
    lb = D(b, None, force_fp32=True).numpy()
    err, scale = np.abs(la - lb).max(), np.abs(lb).max()
    assert 0 < err <= 2 * FP16_U * scale, (err, scale, err / scale / FP16_U)


def test_discriminator_orig_architecture_and_mbstd_grouping():
    D = tiny_D(16, architecture="orig")
    assert not any("skip" in v.path for v in D.variables)
    x = tf.constant(RNG.standard_normal([4, 16, 16, 3]), tf.float32)
    assert D(x, None).shape == (4, 1)
    with pytest.raises(ValueError):
        tiny_D(4)
