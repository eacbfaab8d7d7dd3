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
    from histaug_tf.gan.launch import networks_builder
    from histaug_tf.gan.presets import get_preset
    import keras
    keras.utils.set_random_seed(3)
    return networks_builder(get_preset("tiny", res, mixed_precision=False))


def _trainer(tmp_path, build, batch=8, batch_gpu=None, res=16, **kw):
    kw.setdefault("G_reg_interval", 4)
    kw.setdefault("D_reg_interval", 16)
    return Trainer(strategy=tf.distribute.get_strategy(), build_networks=build,
                   input_fn=tiny_input_fn(res=res), run_dir=str(tmp_path / "run"), batch=batch,
                   batch_gpu=batch_gpu, r1_gamma=R1_GAMMA, pl_weight=PL_WEIGHT, pl_decay=PL_DECAY,
                   pl_batch_shrink=2, style_mixing_prob=0.0, noise_mode="const",
                   G_lr=0.002, D_lr=0.002, total_kimg=1, log=lambda *a, **k: None, **kw)


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
    computed separately; pl_mean after 4 sequential lerps; w_avg after one lerp per round."""
    R, g = 4, 2
    t = _trainer(tmp_path, _real_networks(), batch=8, batch_gpu=g, jit=jit)
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
    assert t.ada_num.numpy() == 16
    assert t.ada_sum.numpy() == signs.sum()


def test_batch_gpu_default_is_one_round_and_bad_values_are_one_line_errors(tmp_path):
    from histaug_tf.gan.launch import _resolve_batch_gpu
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
