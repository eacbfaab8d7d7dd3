"""Checkpoints hold the real networks whole: every variable of G, D and G_ema, also those of the
sublayers the networks keep in lists (``layers.CheckpointedLists``), and a resumed run gets them
back bit for bit. Before, a checkpoint reached only what attributes and the optimizers reached:
G_ema's weights and the constant noise buffers were missing and a resumed run silently restarted
them from the networks' initialisation. Checkpoints of that older layout still resume."""
import numpy as np
import tensorflow as tf

from _training_tiny import tiny_input_fn
from histaug_tf.gan.layers import CheckpointedLists


def _build(seed, res=16):
    from histaug_tf.apps.train_gan import networks_builder
    from histaug_tf.gan.presets import get_preset
    import keras
    keras.utils.set_random_seed(seed)
    return networks_builder(get_preset("tiny", res, mixed_precision=False))()


def _trainer(run, seed, log=None):
    from histaug_tf.gan.config import TrainingConfig
    from histaug_tf.gan.trainer import Trainer
    config = TrainingConfig.from_flat(outdir=str(run), batch=4, G_reg_interval=2, D_reg_interval=2,
                                      kimg=1, ema_kimg=0.01, noise_mode="const", seed=0)
    return Trainer(config, strategy=tf.distribute.get_strategy(),
                   build_networks=lambda: _build(seed), input_fn=tiny_input_fn(res=16),
                   log=(log.append if log is not None else (lambda *a, **k: None)))


def _values(model):
    return {v.path: v.numpy() for v in model.variables}


def _stored(path):
    return [n for n, _ in tf.train.list_variables(path) if n.endswith("VARIABLE_VALUE")]


def test_network_checkpoint_holds_and_restores_every_variable(tmp_path):
    src, dst = _build(3), _build(4)
    for a, b in zip(src, dst):
        path = tf.train.Checkpoint(net=a).write(str(tmp_path / a.name))
        assert len(_stored(path)) == len(a.variables), a.name
        want = _values(a)
        assert any(not np.array_equal(want[p], v) for p, v in _values(b).items())
        tf.train.Checkpoint(net=b).read(path).assert_consumed()
        got = _values(b)
        assert got.keys() == want.keys()
        for p in want:
            np.testing.assert_array_equal(got[p], want[p], err_msg=f"{a.name}: {p}")


def test_resume_restores_G_D_and_G_ema_bit_for_bit(tmp_path):
    t = _trainer(tmp_path / "run", seed=3)
    for _ in range(3):
        t.train_step()
    t.save_checkpoint()
    want = {n: _values(m) for n, m in (("G", t.G), ("D", t.D), ("G_ema", t.G_ema))}
    # the test means something: G_ema has not caught up with G
    assert any(not np.array_equal(want["G"][p], v) for p, v in want["G_ema"].items())
    t2 = _trainer(tmp_path / "run", seed=4)  # networks built from another initialisation
    assert t2.resumed_from is not None
    for n, m in (("G", t2.G), ("D", t2.D), ("G_ema", t2.G_ema)):
        got = _values(m)
        for p in want[n]:
            np.testing.assert_array_equal(got[p], want[n][p], err_msg=f"{n}: {p}")


def test_checkpoint_without_the_lists_resumes_with_G_ema_from_G(tmp_path):
    t = _trainer(tmp_path / "run", seed=3)
    for _ in range(2):
        t.train_step()
    with CheckpointedLists.lists_in_checkpoints(False):  # the layout written before the fix
        t.save_checkpoint()
    old = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert sum(n.startswith("G_ema/") for n in _stored(old)) < len(t.G_ema.variables)
    G_trainable = {v.path: v.numpy() for v in t.G.trainable_variables}
    D_all = _values(t.D)
    log = []
    t2 = _trainer(tmp_path / "run", seed=4, log=log)
    assert t2.resumed_from == old
    assert any("G_ema restarts from G" in str(m) for m in log), log
    for v in t2.G.trainable_variables:
        np.testing.assert_array_equal(v.numpy(), G_trainable[v.path], err_msg=v.path)
    for p, v in _values(t2.D).items():
        np.testing.assert_array_equal(v, D_all[p], err_msg=p)
    G2 = _values(t2.G)
    for p, v in _values(t2.G_ema).items():
        np.testing.assert_array_equal(v, G2[p], err_msg=p)
    t2.train_step()
    t2.save_checkpoint()  # in the current layout
    new = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert sum(n.startswith("G_ema/") for n in _stored(new)) == len(t2.G_ema.variables)
