"""The trainer against the reference's training semantics (NVlabs stylegan2-ada-pytorch
``training_loop.py`` / ``loss.py``), each checked by an independent computation with plain
``tf.GradientTape`` on the networks (no code of ``gan/loss.py``):

* ``--batch_gpu`` rounds: a phase over batch 8 as 4 rounds of 2 applies the SUM of the 4 rounds'
  gradients of their mean loss (own minibatch-std groups per round), updates ``pl_mean`` 4 times
  in sequence and ``w_avg`` once per mapping call;
* no lazy regularisation (interval None): Gboth/Dboth every step, main loss + regulariser in one
  optimizer step with gain 1 and lr/betas not rescaled;
* ADA's r_t averages sign(D(real)) of both the Dmain and the Dreg phases;
* ``--mirror`` is x-flips only; ``--flips=all`` gives the 8 dihedral transforms.

The applied gradient is read from Adam's first moment: with beta1 = 0 (the StyleGAN2 setting,
also after the lazy-regularisation rescaling 0**c = 0) and the moment zeroed before the phase,
``m`` after the step IS the gradient that was applied.
"""
import numpy as np
import pytest
import tensorflow as tf

from _training_tiny import build_tiny, tiny_input_fn
from histaug_tf.common import UserError
from histaug_tf.gan.trainer import Trainer

R1_GAMMA, PL_WEIGHT, PL_DECAY = 0.5, 2.0, 0.01


def _real_networks(res=16):
    """The real G/D (tiny preset at 16 px, mbstd group 4), G_ema a copy."""
    from histaug_tf.apps.train_gan import networks_builder
    from histaug_tf.gan.presets import get_preset
    import keras
    keras.utils.set_random_seed(3)
    return networks_builder(get_preset("tiny", res, mixed_precision=False))


def _trainer(tmp_path, build, batch=8, batch_gpu=None, res=16, **kw):
    kw.setdefault("G_reg_interval", 4)
    kw.setdefault("D_reg_interval", 16)
    from histaug_tf.gan.config import TrainingConfig
    pipe = kw.pop("make_augment_pipe", None)
    config = TrainingConfig.from_flat(
        outdir=str(tmp_path / "run"), batch=batch, batch_gpu=batch_gpu, gamma=R1_GAMMA,
        pl_weight=PL_WEIGHT, pl_decay=PL_DECAY, pl_batch_shrink=2, style_mixing=0.0,
        noise_mode="const", G_lr=0.002, D_lr=0.002, kimg=1, **kw)
    return Trainer(config, strategy=tf.distribute.get_strategy(), build_networks=build,
                   input_fn=tiny_input_fn(res=res), make_augment_pipe=pipe,
                   log=lambda *a, **k: None)


def _applied_gradient(opt, variables, fn):
    """Run ``fn`` (one phase) with Adam's first moments zeroed; return them (= the gradient)."""
    moms = [opt._momentums[opt._get_variable_index(v)] for v in variables]
    for m in moms:
        m.assign(tf.zeros_like(m))
    fn()
    return [m.numpy() for m in moms]


def _grads(tape, loss, variables):
    return [np.zeros(v.shape, np.float32) if g is None else g.numpy()
            for g, v in zip(tape.gradient(loss, variables), variables)]


def _assert_grads(got, want, what):
    scale = max(float(np.abs(w).max()) for w in want)
    assert scale > 0
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5 * scale, err_msg=what)


def _G_img(G, z, c):
    return G.synthesis(G.mapping(z, c), noise_mode="const")


def _D_logits(D, img, c):
    return tf.cast(D(img, c), tf.float32)[:, 0]


def _path_lengths(G, z, c, noise):
    """Reference Gpl: pl_lengths = sqrt(mean_ws(sum_w (d sum(img * noise/sqrt(HW)) / d ws)^2))."""
    with tf.GradientTape(watch_accessed_variables=False) as inner:
        ws = G.mapping(z, c)
        inner.watch(ws)
        img = G.synthesis(ws, noise_mode="const")
        out = tf.reduce_sum(img * noise / np.sqrt(img.shape[1] * img.shape[2]))
    g = inner.gradient(out, ws)
    return tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(g), axis=2), axis=1)), ws[:, 0]


def _r1(D, x, c):
    with tf.GradientTape(watch_accessed_variables=False) as inner:
        inner.watch(x)
        logits = _D_logits(D, x, c)
        out = tf.reduce_sum(logits)
    g = inner.gradient(out, x)
    return logits, tf.reduce_sum(tf.square(g), axis=[1, 2, 3])


def _lerp_w_avg(w, ws0_rounds, beta=0.995):
    for w0 in ws0_rounds:
        m = np.mean(np.asarray(w0), axis=0)
        w = m + (w - m) * beta
    return w


@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True])
def test_batch_gpu_rounds_equal_summed_per_round_gradients(tmp_path, jit):
    """Batch 8 as 4 rounds of 2 on the real networks (mbstd group 4 -> groups of 2 per round):
    each phase of step 0 (Gmain, Greg, Dmain, Dreg) applies the sum of the 4 per-round gradients
    computed separately; pl_mean after 4 sequential lerps; w_avg after one lerp per round.
    With jit, every phase is an XLA program (``all``: on the CPU ``auto`` leaves the
    regularisers to TensorFlow, which the run without jit checks)."""
    R, g = 4, 2
    t = _trainer(tmp_path, _real_networks(), batch=8, batch_gpu=g, jit=jit,
                 jit_phases="all" if jit else "auto")
    assert t.rounds == R and t.phases_at(0) == ["Gmain", "Greg", "Dmain", "Dreg"]
    G, D = t.G, t.D
    Gv, Dv = t._G_tf, t._D_tf
    step = tf.constant(0, tf.int64)
    c0 = tf.zeros([g, 0])
    w_avg = G.mapping.w_avg.numpy().copy()

    # --- Gmain: sum over rounds of grad mean_round softplus(-D(G(z))) ----------------------
    z = t._gen_inputs(step, "Gmain", 8)[0]
    want, ws0 = None, []
    for k in range(R):
        zk = z[k * g:(k + 1) * g]
        with tf.GradientTape() as tape:
            img = _G_img(G, zk, c0)
            loss = tf.reduce_mean(tf.nn.softplus(-_D_logits(D, img, c0)))
        gk = _grads(tape, loss, Gv)
        want = gk if want is None else [a + b for a, b in zip(want, gk)]
        ws0.append(G.mapping(zk, c0)[:, 0])
    with tf.GradientTape() as tape:  # one round of 8: what the test must tell apart
        one = _grads(tape, tf.reduce_mean(tf.nn.softplus(-_D_logits(D, _G_img(G, z, c0), c0))),
                     Gv)
    got = _applied_gradient(t.G_opt, Gv, lambda: t._phase_fns["Gmain"](step))
    _assert_grads(got, want, "Gmain")
    assert max(np.abs(a - b).max() for a, b in zip(got, one)) > 0.1 * max(
        np.abs(b).max() for b in one)
    w_avg = _lerp_w_avg(w_avg, ws0)
    np.testing.assert_allclose(G.mapping.w_avg.numpy(), w_avg, rtol=1e-5, atol=1e-6)

    # --- Greg: gpl = 1 sample per round, pl_mean lerped after each round, gain 4 -------------
    zp = t._gen_inputs(step, "Greg", 8)[0][:R]
    noise = tf.random.stateless_normal([4, 16, 16, 3], t._seed(step, "Greg", 4), alg="philox")
    pl_mean = float(t.pl_mean.numpy())
    assert pl_mean == 0.0
    want, ws0 = None, []
    for k in range(R):
        with tf.GradientTape() as tape:
            lengths, w0 = _path_lengths(G, zp[k:k + 1], tf.zeros([1, 0]), noise[k:k + 1])
            new_mean = pl_mean + (tf.reduce_mean(lengths) - pl_mean) * PL_DECAY
            loss = tf.reduce_mean(tf.square(lengths - new_mean)) * PL_WEIGHT * 4
        gk = _grads(tape, loss, Gv)
        want = gk if want is None else [a + b for a, b in zip(want, gk)]
        pl_mean = float(new_mean)
        ws0.append(w0)
    got = _applied_gradient(t.G_opt, Gv, lambda: t._phase_fns["Greg"](step))
    _assert_grads(got, want, "Greg")
    np.testing.assert_allclose(t.pl_mean.numpy(), pl_mean, rtol=1e-5)
    w_avg = _lerp_w_avg(w_avg, ws0)
    np.testing.assert_allclose(G.mapping.w_avg.numpy(), w_avg, rtol=1e-5, atol=1e-6)

    # --- Dmain: sum over rounds of grad mean_round softplus(D(G(z))) + softplus(-D(x)) -------
    real, real_c = t._next_batch()
    z = t._gen_inputs(step, "Dmain", 8)[0]
    want, ws0, signs = None, [], []
    for k in range(R):
        zk, xk = z[k * g:(k + 1) * g], real[k * g:(k + 1) * g]
        fake = _G_img(G, zk, c0)
        with tf.GradientTape() as tape:
            real_logits = _D_logits(D, xk, c0)
            loss = tf.reduce_mean(tf.nn.softplus(_D_logits(D, fake, c0))
                                  + tf.nn.softplus(-real_logits))
        gk = _grads(tape, loss, Dv)
        want = gk if want is None else [a + b for a, b in zip(want, gk)]
        ws0.append(G.mapping(zk, c0)[:, 0])
        signs.append(np.sign(real_logits.numpy()))
    got = _applied_gradient(t.D_opt, Dv, lambda: t._phase_fns["Dmain"](real, real_c, step))
    _assert_grads(got, want, "Dmain")
    w_avg = _lerp_w_avg(w_avg, ws0)
    np.testing.assert_allclose(G.mapping.w_avg.numpy(), w_avg, rtol=1e-5, atol=1e-6)

    # --- Dreg: sum over rounds of grad mean_round gamma/2 ||dD(x)/dx||^2 * 16 ----------------
    want = None
    for k in range(R):
        xk = real[k * g:(k + 1) * g]
        with tf.GradientTape() as tape:
            logits, penalty = _r1(D, xk, c0)
            loss = tf.reduce_mean(penalty) * (R1_GAMMA / 2) * 16
        gk = _grads(tape, loss, Dv)
        want = gk if want is None else [a + b for a, b in zip(want, gk)]
        signs.append(np.sign(logits.numpy()))
    got = _applied_gradient(t.D_opt, Dv, lambda: t._phase_fns["Dreg"](real, real_c, step))
    _assert_grads(got, want, "Dreg")
    # ADA's sign statistics: the 8 reals of Dmain and the 8 of Dreg
    signs = np.concatenate(signs)
    assert t.ada.sign_count.numpy() == 16
    assert t.ada.sign_sum.numpy() == signs.sum()


def test_batch_gpu_default_is_one_round_and_bad_values_are_one_line_errors(tmp_path):
    from histaug_tf.apps.train_gan import _resolve_batch_gpu
    from histaug_tf.gan.presets import get_preset
    t = _trainer(tmp_path, lambda: build_tiny(res=16), batch=8)
    assert (t.batch_gpu, t.rounds) == (8, 1)
    for bad in (3, 0, 16):
        with pytest.raises(UserError, match=f"--batch_gpu={bad}: must divide the per-replica "
                                            "batch 8"):
            _trainer(tmp_path, lambda: build_tiny(res=16), batch=8, batch_gpu=bad)
    with pytest.raises(UserError, match="too small for the path length batch"):
        _trainer(tmp_path, lambda: build_tiny(res=16), batch=8, batch_gpu=1)
    # launch: the reference's defaults (train.py: batch_gpu = mb // ref_gpus; --batch: per GPU)
    p = get_preset("paper256", 64, gpus=1, mixed_precision=False)
    assert _resolve_batch_gpu(p, None, None, 1) == 8          # 8 rounds of 8 on one replica
    assert _resolve_batch_gpu(p, None, None, 2) == 8          # 4 rounds on each of 2
    assert _resolve_batch_gpu(p, None, None, 16) == 4         # capped at the replica batch
    assert _resolve_batch_gpu(get_preset("auto", 64, gpus=2), None, None, 2) == 32  # mb 64
    p64 = dict(p, batch=64)
    assert _resolve_batch_gpu(p64, 64, None, 2) == 32         # --batch given: one round
    assert _resolve_batch_gpu(p64, 64, 16, 2) == 16
    with pytest.raises(UserError, match="--batch_gpu=12: must divide the per-replica batch 32"):
        _resolve_batch_gpu(p64, 64, 12, 2)
    with pytest.raises(UserError, match="--batch_gpu=12 .*not a multiple of the minibatch-std "
                                        "group size 8"):
        _resolve_batch_gpu(dict(p, batch=48), 48, 12, 1)


@pytest.mark.parametrize("jit", [False, True])
def test_no_lazy_regularization_runs_fused_phases_every_step(tmp_path, jit):
    """G_reg_interval = D_reg_interval = None: Gboth and Dboth at every step (reference: phases
    'Gboth'/'Dboth', interval 1), each ONE optimizer step on main loss + regulariser with gain 1,
    lr and betas not rescaled; the path length runs on the first batch//2 latents of Gmain's.
    (Before: None disabled the regularisers.)"""
    B = 4
    t = _trainer(tmp_path, lambda: build_tiny(res=4), batch=B, res=4, jit=jit,
                 G_reg_interval=None, D_reg_interval=None)
    assert [t.phases_at(s) for s in range(5)] == [["Gboth", "Dboth"]] * 5
    for opt in (t.G_opt, t.D_opt):
        assert np.isclose(float(opt.learning_rate.numpy()), 0.002)
        assert (float(opt.beta_1), float(opt.beta_2)) == (0.0, 0.99)
    G, D = t.G, t.D
    step = tf.constant(0, tf.int64)
    c0 = tf.zeros([B, 0])

    z = t._gen_inputs(step, "Gmain", B)[0]
    noise = tf.random.stateless_normal([B // 2, 4, 4, 3], t._seed(step, "Greg", 4), alg="philox")
    with tf.GradientTape() as tape:
        main = tf.reduce_mean(tf.nn.softplus(-_D_logits(D, _G_img(G, z, c0), c0)))
        lengths, _ = _path_lengths(G, z[:B // 2], c0[:B // 2], noise)
        pl_mean = tf.reduce_mean(lengths) * PL_DECAY  # lerp from 0
        loss = main + tf.reduce_mean(tf.square(lengths - pl_mean)) * PL_WEIGHT
    want = _grads(tape, loss, t._G_tf)
    got = _applied_gradient(t.G_opt, t._G_tf, lambda: t._phase_fns["Gboth"](step))
    _assert_grads(got, want, "Gboth")
    np.testing.assert_allclose(t.pl_mean.numpy(), float(pl_mean), rtol=1e-5)

    real, real_c = t._next_batch()
    z = t._gen_inputs(step, "Dmain", B)[0]
    fake = _G_img(G, z, c0)
    with tf.GradientTape() as tape:
        real_logits, penalty = _r1(D, real, c0)
        loss = tf.reduce_mean(tf.nn.softplus(_D_logits(D, fake, c0))
                              + tf.nn.softplus(-real_logits) + penalty * (R1_GAMMA / 2))
    want = _grads(tape, loss, t._D_tf)
    got = _applied_gradient(t.D_opt, t._D_tf, lambda: t._phase_fns["Dboth"](real, real_c, step))
    _assert_grads(got, want, "Dboth")
    # one forward of the reals serves Dmain and R1: their signs are reported once
    assert t.ada.sign_count.numpy() == B
    assert t.ada.sign_sum.numpy() == np.sign(real_logits.numpy()).sum()
    # the regulariser runs again at step 1 (lazily it would wait for step 4)
    t.step_var.assign(1)
    before = float(t.pl_mean.numpy())
    t.train_step()
    assert float(t.pl_mean.numpy()) != before


def test_ada_rt_counts_the_signs_of_the_r1_phase(tmp_path):
    """Reference loss.py reports 'Loss/signs/real' whenever D sees the reals (Dmain and Dreg);
    ADA's r_t averages all of them. (Before: Dreg's were not counted.)"""
    from _training_tiny import StubPipe
    B = 8
    t = _trainer(tmp_path, lambda: build_tiny(res=4), batch=B, res=4, D_reg_interval=2,
                 make_augment_pipe=StubPipe, target=0.6)  # p = 0: the pipe is the identity
    step = tf.constant(0, tf.int64)
    real, real_c = t._next_batch()
    assert t.phases_at(0)[2:] == ["Dmain", "Dreg"]
    signs_main = np.sign(_D_logits(t.D, real, None).numpy())
    t._phase_fns["Dmain"](real, real_c, step)
    signs_reg = np.sign(_D_logits(t.D, real, None).numpy())  # D moved: Dreg sees new logits
    t._phase_fns["Dreg"](real, real_c, step)
    assert t.ada.sign_count.numpy() == 2 * B
    assert t.ada.sign_sum.numpy() == signs_main.sum() + signs_reg.sum()
    stats = t.stats.read()
    np.testing.assert_allclose(stats["Loss/signs/real"],
                               np.concatenate([signs_main, signs_reg]).mean(), rtol=1e-6)


def _toy_dataset(path, n=8, size=16):
    from histaug_tf.data.writer import DatasetWriter
    rnd = np.random.RandomState(0)
    imgs = rnd.randint(0, 256, (n, size, size, 3)).astype(np.uint8)
    with DatasetWriter(str(path), "toy", (size, size, 3), shard_size=8) as w:
        for i, img in enumerate(imgs):
            w.add("train", img, i % 2, f"toy/{i}", f"g{i}")
    return str(path), imgs


def _dihedral(a):
    """{name: image} for the 8 transforms of an HWC image (t = transpose, x = flip columns,
    y = flip rows)."""
    out = {}
    for tn, t in (("", a), ("t", a.transpose(1, 0, 2))):
        for xn, p in (("", t), ("x", t[:, ::-1])):
            for yn, q in (("", p), ("y", p[::-1])):
                out[tn + xn + yn or "id"] = q
    return out


@pytest.mark.parametrize("flags,expect", [
    (dict(mirror=True), {"id", "x"}),                          # the reference's --mirror
    (dict(flips="x"), {"id", "x"}),
    (dict(flips="xy"), {"id", "x", "y", "xy"}),                # what --mirror did before
    (dict(flips="all"), {"id", "x", "y", "xy", "t", "tx", "ty", "txy"}),
    (dict(), {"id"}),
])
def test_mirror_is_x_flips_and_flips_modes(tmp_path, flags, expect):
    from histaug_tf.apps.train_gan import make_input_fn, resolve_config
    data, imgs = _toy_dataset(tmp_path / "toy")
    opts = resolve_config(data=data, outdir=str(tmp_path / "o"), cfg="tiny", **flags)
    table = {}
    for a in imgs:
        for name, im in _dihedral(a).items():
            table[np.ascontiguousarray(im).tobytes()] = name
    seen = set()
    ds = make_input_fn(opts.data)(1, 0, 8, 0)
    for x, _ in ds.take(16):  # 128 draws
        u8 = np.rint((x.numpy() + 1.0) * 127.5).astype(np.uint8)
        seen.update(table[im.tobytes()] for im in u8)
    assert seen == expect


def test_flips_flag_errors(tmp_path):
    from histaug_tf.apps.train_gan import resolve_config
    data, _ = _toy_dataset(tmp_path / "toy")
    out = str(tmp_path / "o")
    with pytest.raises(UserError, match="--mirror .*conflicts with --flips=all"):
        resolve_config(data=data, outdir=out, cfg="tiny", mirror=True, flips="all")
    with pytest.raises(UserError, match="--flips=yes: expected one of none, x, xy, all"):
        resolve_config(data=data, outdir=out, cfg="tiny", flips="yes")
    assert resolve_config(data=data, outdir=out, cfg="tiny", mirror=True, flips="x").data.flips == "x"


@pytest.mark.slow
def test_regularisers_without_xla_match_the_compiled_ones(tmp_path):
    """The real networks: Greg and Dreg run by TensorFlow's executor (``auto`` on the CPU: the
    ``conv`` FIR and TensorFlow's strided convolutions) and as XLA programs (``all``: the
    ``slices`` FIR and the polyphase convolutions) from the same state apply the same gradients
    to G and D (to float32 rounding; nonzero), give the same pl_mean and the same regulariser
    statistics."""
    out = {}
    for spec in ("all", "auto"):
        t = _trainer(tmp_path / spec, _real_networks(), batch=4, jit=True, jit_phases=spec)
        assert ("Dreg" in t.jit_phases) == ("Greg" in t.jit_phases) == (spec == "all")
        step = tf.constant(0, tf.int64)
        real, real_c = t._next_batch()
        g = _applied_gradient(t.G_opt, t._G_tf, lambda: t._phase_fns["Greg"](step))
        d = _applied_gradient(t.D_opt, t._D_tf, lambda: t._phase_fns["Dreg"](real, real_c, step))
        out[spec] = (g, d, float(t.pl_mean.numpy()), t.stats.read())
    assert out["all"][2] != 0.0
    np.testing.assert_allclose(out["auto"][2], out["all"][2], rtol=1e-5)
    assert set(out["auto"][3]) == set(out["all"][3]) and "Loss/r1_penalty" in out["all"][3]
    for name, value in out["all"][3].items():
        np.testing.assert_allclose(out["auto"][3][name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    for i, net in ((0, "G"), (1, "D")):
        _assert_grads(out["auto"][i], out["all"][i], f"{net}reg without XLA")
