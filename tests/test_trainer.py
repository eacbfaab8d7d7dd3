"""The training loop on tiny closed-form models: run directory contract, TensorBoard, ADA control,
non-finite losses, and one optimisation step checked against a NumPy reimplementation."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from _training_tiny import make_tiny_trainer
from histaug_tf.gan.config import TrainingConfig
from histaug_tf.gan.loop import NonFiniteLossError


def test_run_dir_contract_and_tensorboard(tmp_path):
    run = str(tmp_path / "run")
    t = make_tiny_trainer(run, kimg=0.12, tick=0.04, pipe=True, target=0.6, cfg="tiny-test")
    t.run()
    files = set(os.listdir(run))
    assert {"training_options.json", "stats.jsonl", "checkpoints", "fakes_init.png"} <= files
    # the typed config, written whole and read back equal (sections, tuples, None)
    opts = json.load(open(os.path.join(run, "training_options.json")))
    assert opts["networks"]["cfg"] == "tiny-test" and opts["augment"]["target"] == 0.6
    assert TrainingConfig.from_dict(opts) == t.config
    # ticks: tick 0 after the first step, then every 0.04 kimg = 5 steps of 8, until 120 images
    lines = [json.loads(x) for x in open(os.path.join(run, "stats.jsonl"))]
    assert [r["tick"] for r in lines] == list(range(len(lines)))
    assert [r["nimg"] for r in lines] == [8, 48, 88, 120]
    for key in ("kimg", "Timing/sec_per_kimg", "Timing/images_per_sec", "Loss/G/loss",
                "Loss/D/loss", "Loss/r1_penalty", "Loss/pl_penalty", "Progress/augment",
                "Progress/rt", "Resources/peak_rss_gb"):
        assert key in lines[-1], key
        assert np.isfinite(lines[-1][key])
    # fakes grids at snapshot ticks (every 2 ticks and at the end)
    assert {"fakes000000.png"} <= files
    # checkpoint holds the whole state
    ckpt = tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))
    names = [n for n, _ in tf.train.list_variables(ckpt)]
    for part in ("G/", "D/", "G_ema/", "G_opt/", "D_opt/", "ada/p/", "ada/sign_sum/", "ada/sign_count/", "step/", "nimg/",
                 "pl_mean/", "tick/", "w_avg/"):
        assert any(n.startswith(part) for n in names), part
    assert tf.train.load_variable(ckpt, "nimg/.ATTRIBUTES/VARIABLE_VALUE") == 120
    # the G_ema weights stored are the final EMA weights, bit for bit, and not G's
    reader = tf.train.load_checkpoint(ckpt)
    stored = [reader.get_tensor(n) for n in names
              if n.startswith("G_ema/") and n.endswith("VARIABLE_VALUE")]
    ema = [v.numpy() for v in t.G_ema.variables]
    assert len(stored) == len(ema)
    for v in ema:
        assert any(s.shape == v.shape and np.array_equal(s, v) for s in stored)
    differ = [(e, g.numpy()) for e, g in zip(ema, t.G.variables) if not np.array_equal(e, g.numpy())]
    assert differ  # the EMA has not caught up with G after 120 images
    for e, g in differ:
        assert not any(s.shape == g.shape and np.array_equal(s, g) for s in stored)
    # TensorBoard: read the event files back
    from tensorboard.backend.event_processing import event_accumulator
    ea = event_accumulator.EventAccumulator(run, size_guidance={"images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    scalar_tags = set(tags.get("scalars", [])) | set(tags.get("tensors", []))
    assert "Loss/G/loss" in scalar_tags and "Progress/augment" in scalar_tags
    ev = ea.Tensors("Loss/D/loss")
    assert [e.step for e in ev] == [8, 48, 88, 120]
    np.testing.assert_allclose(float(tf.make_ndarray(ev[-1].tensor_proto)),
                               lines[-1]["Loss/D/loss"], rtol=1e-5)
    img_tags = set(tags.get("images", [])) | set(tags.get("tensors", []))
    assert "fakes" in img_tags
    img_ev = ea.Tensors("fakes") if "fakes" in tags.get("tensors", []) else ea.Images("fakes")
    assert len(img_ev) >= 1


def test_ada_p_rises_when_overconfident_and_falls_otherwise(tmp_path):
    B, ada_kimg = 8, 0.5
    t = make_tiny_trainer(str(tmp_path / "run"), batch=B, pipe=True, target=0.6,
                          ada_kimg=ada_kimg, D_lr=0.0, gamma=0.0, kimg=10)
    step_adjust = B * 4 / (ada_kimg * 1000)  # reference: sign(r_t - target) * B * interval / (ada_kimg*1000)
    t.D.b.assign(20.0)  # D(real) > 0 always: r_t = 1 > 0.6
    for _ in range(12):
        t.train_step()
    np.testing.assert_allclose(float(t.augment_pipe.p.numpy()), 3 * step_adjust, rtol=1e-6)
    t.D.b.assign(-20.0)  # r_t = -1 < 0.6: p falls at the same speed, clamped at 0
    for _ in range(4):
        t.train_step()
    np.testing.assert_allclose(float(t.augment_pipe.p.numpy()), 2 * step_adjust, rtol=1e-6)
    for _ in range(16):
        t.train_step()
    assert float(t.augment_pipe.p.numpy()) == 0.0


def test_nonfinite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    make_tiny_trainer(run, kimg=0.048, tick=0.04).run()
    ckdir = os.path.join(run, "checkpoints")
    good = tf.train.latest_checkpoint(ckdir)
    before = sorted(os.listdir(ckdir))
    t = make_tiny_trainer(run, kimg=0.2, tick=0.04)
    assert t.resumed_from == good
    t.D.b.assign(float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*last good checkpoint"):
        t.run()
    assert tf.train.latest_checkpoint(ckdir) == good
    assert sorted(os.listdir(ckdir)) == before
    reader = tf.train.load_checkpoint(good)
    assert reader.get_tensor("nimg/.ATTRIBUTES/VARIABLE_VALUE") == 48


def test_one_step_matches_numpy_adam(tmp_path):
    """Step 0 (Gmain + Greg + Dmain + Dreg) on the tiny models vs. a NumPy reimplementation of the
    G update for Gmain: Adam(beta1 0) with lazy-reg rescaled lr/betas, loss = mean softplus(-D(G(z))).
    (No lazy regularisation and pl_weight 0: the G phase is Gmain alone, lr/betas unscaled.)"""
    from histaug_tf.gan import loss as L
    t = make_tiny_trainer(str(tmp_path / "run"), batch=4, G_reg_interval=None,
                          D_reg_interval=None, G_lr=0.01, pl_weight=0.0)
    G0 = [v.numpy().copy() for v in t.G.trainable_variables]
    # reproduce the trainer's latents for step 0 (stateless, keyed by (seed, step, phase))
    z, c, _, _ = t._gen_inputs(tf.constant(0, tf.int64), "Gmain", 4)
    with tf.GradientTape() as tape:
        loss, _, _ = t.loss.G_main(z, c)
        total = tf.reduce_mean(loss)
    grads = [np.zeros(v.shape, np.float32) if g is None else g.numpy()
             for g, v in zip(tape.gradient(total, t.G.trainable_variables), t.G.trainable_variables)]
    t.train_step()
    lr, (b1, b2) = L.lazy_regularization(0.01, (0.0, 0.99), None)
    for p0, g, v in zip(G0, grads, t.G.trainable_variables):
        # Keras Adam, step 1: m = (1-b1) g, v = (1-b2) g^2, alpha = lr sqrt(1-b2) / (1-b1),
        # p -= alpha m / (sqrt(v) + eps). (torch puts eps after the bias correction; the two
        # differ only for |g| ~ eps.)
        m = (1 - b1) * g
        vv = (1 - b2) * g * g
        alpha = lr * np.sqrt(1 - b2) / (1 - b1)
        expect = p0 - alpha * m / (np.sqrt(vv) + 1e-8)
        np.testing.assert_allclose(v.numpy(), expect, rtol=1e-5, atol=1e-7)


def test_jit_compiled_phases_match_eager_graph(tmp_path):
    """jit=True (XLA per-replica computation) gives the same weights as jit=False."""
    res = []
    for jit in (False, True):
        t = make_tiny_trainer(str(tmp_path / f"run{jit}"), jit=jit, batch=4)
        for _ in range(3):  # Gmain+Greg+Dmain+Dreg, Gmain+Dmain, Gmain+Dmain+Dreg
            t.train_step()
        res.append([v.numpy() for v in t.G.variables + t.D.variables + t.G_ema.variables]
                   + [t.pl_mean.numpy()])
    for a, b in zip(*res):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_checkpoint_is_read_back_when_written(tmp_path):
    """A checkpoint that does not read back right after the write (here: its data file truncated
    as the write returns) stops the run with one line naming the file."""
    from histaug_tf.common import UserError
    t = make_tiny_trainer(str(tmp_path / "run"), kimg=0.2, tick=0.04)
    save = t.ckpt_manager.save

    def damaged_save(**kw):
        path = save(**kw)
        data = glob.glob(path + ".data-*")[0]
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        return path

    t.ckpt_manager.save = damaged_save
    t.train_step()
    with pytest.raises(UserError, match=r"checkpoint written at step 1 does not read back: "
                       r".*ckpt-1\.data-00000-of-00001: cannot be read"):
        t.save_checkpoint()


def test_rerun_with_another_seed_goes_on_with_the_runs_seed(tmp_path):
    """The seed is part of a run's state (its random streams are keyed by it): a rerun with
    another --seed says so in one warning line and goes on with the run's seed, so its next step
    is the uninterrupted run's."""
    run = str(tmp_path / "run")
    kw = dict(noise_mode="random", style_mixing=0.9)
    t = make_tiny_trainer(run, seed=3, **kw)
    t.train_step()
    t.save_checkpoint()
    ref = make_tiny_trainer(str(tmp_path / "ref"), seed=3, **kw)
    ref.train_step()
    ref.train_step()
    lines = []
    t2 = make_tiny_trainer(run, seed=5, log=lines.append, **kw)
    warn = [ln for ln in lines if ln.startswith("warning:")]
    assert warn == [f"warning: {t2.resumed_from}: the run was started with --seed=3; it goes on "
                    "with that seed, not 5"], lines
    assert t2.seed == 3
    t2.train_step()
    for a, b in zip(t2.G.variables + t2.D.variables, ref.G.variables + ref.D.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
