"""ADA as one object (histaug_tf/gan/ada.py): the update rule against hand-computed values, and
checkpoints of the layout before it (ADA's state at the top level) read into it on resume."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from _training_tiny import make_tiny_trainer
from histaug_tf.gan.ada import Ada


def _signs(pos, neg):
    s = np.array([1.0] * pos + [-1.0] * neg)
    return s.sum(), s.size


def test_update_rule_by_hand():
    p = tf.Variable(0.0, trainable=False)
    ada = Ada(p, batch_size=32, target=0.6, interval=4, kimg=500)
    step = 32 * 4 / 500e3  # the reference: batch * interval / (ada_kimg * 1000)
    assert ada.step_size == pytest.approx(step)
    assert [ada.due(k) for k in range(1, 9)] == [False, False, False, True] * 2
    for _ in range(4):  # r_t = (7 - 3) / 10 = 0.4 < 0.6: p would fall, clamped at 0
        ada.accumulate(*_signs(7, 3))
    assert ada.adjust() == pytest.approx(0.4) and float(p.numpy()) == 0.0
    assert float(ada.sign_sum.numpy()) == 0.0 and float(ada.sign_count.numpy()) == 0.0
    for _ in range(4):  # r_t = 0.8 > 0.6: p rises by one step
        ada.accumulate(*_signs(9, 1))
    assert ada.adjust() == pytest.approx(0.8)
    assert float(p.numpy()) == pytest.approx(step, rel=1e-6)
    assert math.isnan(ada.adjust()) and float(p.numpy()) == pytest.approx(step, rel=1e-6)
    p.assign(0.5)  # from 0.5, r_t below the target: exactly one step down
    ada.accumulate(*_signs(1, 3))
    ada.adjust()
    assert float(p.numpy()) == pytest.approx(0.5 - step, rel=1e-6)


def test_fixed_p_never_moves_and_no_pipe_means_p_zero():
    p = tf.Variable(0.3, trainable=False)
    fixed = Ada(p, batch_size=8, target=None)
    assert not any(fixed.due(k) for k in range(1, 20))
    fixed.accumulate(*_signs(10, 0))
    fixed.adjust()
    assert float(p.numpy()) == pytest.approx(0.3)
    none = Ada(None, batch_size=8, target=0.6)  # no augment pipe: nothing to adapt
    assert not none.adaptive and float(none.p.numpy()) == 0.0


def _write_old_layout(t, step):
    """A checkpoint as the trainer wrote it before gan/ada.py: ADA's state at the top level as
    ``ada_sum``, ``ada_num`` and ``augment_p`` (names as they were), with its input state."""
    objs = dict(G=t.G, D=t.D, G_ema=t.G_ema, G_opt=t.G_opt, D_opt=t.D_opt, pl_mean=t.pl_mean,
                step=t.step_var, nimg=t.nimg_var, tick=t.tick_var, seed=t.seed_var,
                ada_sum=t.ada.sign_sum, ada_num=t.ada.sign_count, augment_p=t.augment_pipe.p)
    w_avg = getattr(getattr(t.G, "mapping", None), "w_avg", None)
    if w_avg is not None:
        objs["w_avg"] = w_avg
    ck = os.path.join(t.run_dir, "checkpoints")
    tf.train.Checkpoint(iterator=t.iterator).write(
        os.path.join(ck, "input-worker000", f"ckpt-{step}"))
    tf.train.CheckpointManager(tf.train.Checkpoint(**objs), ck, max_to_keep=2).save(
        checkpoint_number=step)


def test_checkpoint_of_the_old_layout_is_converted_on_resume(tmp_path):
    run = str(tmp_path / "run")
    opts = dict(batch=8, kimg=10, pipe=True, p=0.3, target=0.6, ada_kimg=1.0)
    old = make_tiny_trainer(run, **opts)
    for _ in range(6):  # an adjustment after step 4, then two steps of sums pending
        old.train_step()
    p, s, n = (float(v.numpy()) for v in (old.ada.p, old.ada.sign_sum, old.ada.sign_count))
    assert p != pytest.approx(0.3) and n == 24  # steps 4, 5: Dmain 2 x 8 + Dreg (interval 2) 8
    _write_old_layout(old, 6)
    new = make_tiny_trainer(run, **opts)  # resumes from ckpt-6
    assert int(new.step_var.numpy()) == 6
    assert float(new.ada.p.numpy()) == p and float(new.augment_pipe.p.numpy()) == p
    assert float(new.ada.sign_sum.numpy()) == s and float(new.ada.sign_count.numpy()) == n
    for a, b in zip(old.G_ema.variables + old.D_opt.variables,
                    new.G_ema.variables + new.D_opt.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # both go on identically (same input position, same ADA sums): step 8 adjusts p
    for t in (old, new):
        t.train_step()
        t.train_step()
    assert float(new.ada.p.numpy()) == float(old.ada.p.numpy()) != p
    new.save_checkpoint()  # written in the current layout
    names = [k for k, _ in tf.train.list_variables(os.path.join(run, "checkpoints", "ckpt-8"))]
    assert any(k.startswith("ada/sign_sum/") for k in names)
    assert not any(k.startswith(("ada_sum/", "ada_num/", "augment_p/")) for k in names)
