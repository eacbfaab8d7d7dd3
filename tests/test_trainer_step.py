"""The XLA-compiled step (one replica, ``jit=True``): every phase is one XLA program including
its Adam update, and it computes the reference's update, checked against an independent
computation — the tiny models' losses written out with plain ``tf.GradientTape`` (no code of
``gan/loss.py``) and one Adam step in NumPy."""
import numpy as np
import tensorflow as tf

from _training_tiny import make_tiny_trainer


def _adam_first_step(p0, g, lr, b1=0.0, b2=0.99, eps=1e-8):
    """Keras Adam, step 1: m = (1-b1) g, v = (1-b2) g^2, alpha = lr sqrt(1-b2) / (1-b1),
    p -= alpha m / (sqrt(v) + eps)."""
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    return p0 - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)


def _grads(tape, loss, variables):
    return [np.zeros(v.shape, np.float32) if g is None else g.numpy()
            for g, v in zip(tape.gradient(loss, variables), variables)]


def test_fused_step_matches_numpy_adam_for_G_and_D(tmp_path):
    """Step 0 with jit=True on one replica (Gmain then Dmain, no regularisers): G and D after the
    step equal one NumPy Adam step on the gradients of mean softplus(-D(G(z))) and of
    mean softplus(D(G'(z'))) + mean softplus(-D(real)) (G' = G after its update)."""
    batch, lr_g, lr_d = 4, 0.01, 0.02
    t = make_tiny_trainer(str(tmp_path / "run"), batch=batch, jit=True, G_reg_interval=None,
                          D_reg_interval=None, pl_weight=0.0, gamma=0.0, G_lr=lr_g, D_lr=lr_d)
    assert t.fused_phases
    assert t.phases_at(0) == ["Gmain", "Dmain"]
    G, D = t.G, t.D
    G0 = [v.numpy().copy() for v in G.trainable_variables]
    D0 = [v.numpy().copy() for v in D.trainable_variables]
    step0 = tf.constant(0, tf.int64)
    z_g, c_g, _, _ = t._gen_inputs(step0, "Gmain", batch)
    z_d, c_d, _, _ = t._gen_inputs(step0, "Dmain", batch)
    t._pending_batch = t._next_batch()
    real, real_c = t._pending_batch

    with tf.GradientTape() as tape:
        logits = tf.reshape(D(G(z_g, c_g, noise_mode="const"), c_g), [-1])
        loss_g = tf.reduce_mean(tf.nn.softplus(-logits))
    g_grads = _grads(tape, loss_g, G.trainable_variables)
    G1 = [_adam_first_step(p, g, lr_g) for p, g in zip(G0, g_grads)]

    t.train_step()

    for want, v in zip(G1, G.trainable_variables):
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=v.path)
    # D's gradient with the updated G (Dmain runs after Gmain), at D's weights before its update
    Dvars = D.trainable_variables
    D1 = [v.numpy().copy() for v in Dvars]
    for v, x in zip(Dvars, D0):
        v.assign(x)
    with tf.GradientTape() as tape:
        fake = tf.reshape(D(G(z_d, c_d, noise_mode="const"), c_d), [-1])
        real_l = tf.reshape(D(real, real_c), [-1])
        loss_d = tf.reduce_mean(tf.nn.softplus(fake)) + tf.reduce_mean(tf.nn.softplus(-real_l))
    d_grads = _grads(tape, loss_d, Dvars)
    assert max(float(np.abs(g).max()) for g in d_grads) > 0
    for got, p, g, v in zip(D1, D0, d_grads, Dvars):
        np.testing.assert_allclose(got, _adam_first_step(p, g, lr_d), rtol=1e-5, atol=1e-7,
                                   err_msg=v.path)
    assert int(t.G_opt.iterations.numpy()) == 1 and int(t.D_opt.iterations.numpy()) == 1


def test_each_phase_is_one_xla_program_with_its_adam_update(tmp_path):
    """Around the XLA program a phase function holds only its random draws: no variable is
    written outside it; inside it, Adam updates the network's weights (``ResourceApplyAdam``)."""
    t = make_tiny_trainer(str(tmp_path / "run"), batch=4, jit=True, jit_phases="all")
    assert t.fused_phases == ("Dboth", "Dmain", "Dreg", "Gboth", "Gmain", "Greg")
    step0 = tf.constant(0, tf.int64)
    t._pending_batch = t._next_batch()
    real, real_c = t._pending_batch
    t.train_step()  # step 0: Gmain, Greg, Dmain, Dreg
    for name, args in (("Gmain", (step0,)), ("Greg", (step0,)), ("Dmain", (real, real_c, step0)),
                       ("Dreg", (real, real_c, step0))):
        fn = t._phase_fns[name]
        ops = fn.get_concrete_function(*args).graph.get_operations()
        writes = [op.type for op in ops if "Assign" in op.type or "Apply" in op.type]
        assert not writes, (name, writes)
        calls = [op for op in ops if op.type in ("StatefulPartitionedCall", "PartitionedCall")]
        assert len(calls) == 1 and calls[0].get_attr("_XlaMustCompile"), name
        inner = fn.xla_update._list_all_concrete_functions_for_serialization()
        assert len(inner) == 1
        adam = [op for op in inner[0].graph.get_operations() if op.type == "ResourceApplyAdam"]
        assert adam, name


def test_nan_to_num_matches_numpy_eagerly_and_under_xla():
    """The gradient scrub is the reference's ``torch.nan_to_num(g, nan=0, posinf=1e5,
    neginf=-1e5)``: NaN -> 0, +-inf -> +-1e5, every finite value unchanged (also beyond 1e5,
    -0.0 and subnormals) -- against ``np.nan_to_num``, eagerly and in an XLA program."""
    from histaug_tf.gan.trainer import _nan_to_num

    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.5, 2e5, -3e38, 3.4e38, 1e-45,
                  -np.nan, 1e5, -1e5], np.float32).reshape(2, 7)
    want = np.nan_to_num(x, nan=0.0, posinf=1e5, neginf=-1e5)
    xla = tf.function(_nan_to_num, jit_compile=True, autograph=False)
    for got in (_nan_to_num(tf.constant(x)).numpy(), xla(tf.constant(x)).numpy()):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    assert _nan_to_num(None) is None


def _xla_calls(fn, args):
    ops = fn.get_concrete_function(*args).graph.get_operations()
    return [op for op in ops if op.type in ("StatefulPartitionedCall", "PartitionedCall")
            and op.get_attr("_XlaMustCompile")]


def test_jit_phases_auto_leaves_the_regularisers_to_tensorflow_on_cpu(tmp_path):
    """``--jit_phases=auto`` on one CPU replica: Gmain and Dmain are XLA programs, the lazy
    regularisers Greg and Dreg are not (no XLA call in their graphs; they still apply Adam and
    move their network). An explicit list compiles just those phases, and without --jit none is
    compiled."""
    from histaug_tf.gan.config import jit_phase_set

    assert not tf.config.list_logical_devices("GPU")
    t = make_tiny_trainer(str(tmp_path / "auto"), batch=4, jit=True)
    assert t.jit_phases == ("Dboth", "Dmain", "Gboth", "Gmain")
    step0 = tf.constant(0, tf.int64)
    t._pending_batch = t._next_batch()
    real, real_c = t._pending_batch
    G0 = [v.numpy().copy() for v in t.G.trainable_variables]
    D0 = [v.numpy().copy() for v in t.D.trainable_variables]
    t._phase_fns["Greg"](step0)
    t._phase_fns["Dreg"](real, real_c, step0)
    assert any(np.any(v.numpy() != g) for v, g in zip(t.G.trainable_variables, G0))
    assert any(np.any(v.numpy() != d) for v, d in zip(t.D.trainable_variables, D0))
    assert not _xla_calls(t._phase_fns["Greg"], (step0,))
    assert not _xla_calls(t._phase_fns["Dreg"], (real, real_c, step0))
    assert _xla_calls(t._phase_fns["Gmain"], (step0,))
    assert _xla_calls(t._phase_fns["Dmain"], (real, real_c, step0))
    t2 = make_tiny_trainer(str(tmp_path / "list"), batch=4, jit=True, jit_phases="Greg,Dmain")
    assert t2.jit_phases == ("Dboth", "Dmain", "Greg")
    assert jit_phase_set("all", jit=False) == frozenset()
    assert jit_phase_set("auto", one_cpu_replica=False) == frozenset(
        ["Gmain", "Greg", "Dmain", "Dreg", "Gboth", "Dboth"])


def test_grappler_off_inside_and_on_again_outside():
    """``_grappler_off``: Grappler folds ``(x + 3) + 3`` into ``x + 6``, which rounds differently
    in float32 at 1e8 (spacing 8). Against NumPy's float32: two roundings inside the context
    (Grappler off), one outside it, before and after (on); the options are restored after an
    exception too."""
    from histaug_tf.gan.trainer import _grappler_off

    x = np.float32(1e8)
    two_roundings = (x + np.float32(3)) + np.float32(3)
    one_rounding = x + np.float32(6)
    assert two_roundings != one_rounding

    def fresh():
        return tf.function(lambda v: (v + 3.0) + 3.0)

    assert fresh()(tf.constant(x)).numpy() == one_rounding
    with _grappler_off():
        assert fresh()(tf.constant(x)).numpy() == two_roundings
    assert fresh()(tf.constant(x)).numpy() == one_rounding
    try:
        with _grappler_off():
            raise KeyError("x")
    except KeyError:
        pass
    assert fresh()(tf.constant(x)).numpy() == one_rounding


def test_only_the_xla_phases_run_without_grappler(tmp_path):
    """With jit on one CPU replica the XLA phases (and the G EMA update) are wrapped in
    ``_grappler_off``; the regularisers TensorFlow runs are not; without jit nothing is."""
    from histaug_tf.gan.trainer import _WithoutGrappler

    t = make_tiny_trainer(str(tmp_path / "jit"), batch=4, jit=True)
    wrapped = {n for n, f in t._phase_fns.items() if isinstance(f, _WithoutGrappler)}
    assert wrapped == {"Gmain", "Gboth", "Dmain", "Dboth"} == set(t.fused_phases)
    assert isinstance(t._ema_step, _WithoutGrappler)
    t.train_step()  # runs through the wrappers
    t0 = make_tiny_trainer(str(tmp_path / "nojit"), batch=4, jit=False)
    assert not any(isinstance(f, _WithoutGrappler) for f in t0._phase_fns.values())
    assert not isinstance(t0._ema_step, _WithoutGrappler)
