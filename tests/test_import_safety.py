"""A network pickle must never run code: refused globals, embedded sources never executed."""
import builtins
import contextlib
import pickle

import numpy as np
import pytest

from histaug_tf.common import UserError
from histaug_tf.torchfile import safe_pickle
from histaug_tf.interop.nvlabs_format import read_network_pkl

import test_import_fixtures as fx


@contextlib.contextmanager
def no_exec():
    """exec/eval/compile fail loudly (and are recorded) while a pickle is read."""
    calls = []
    saved = {n: getattr(builtins, n) for n in ("exec", "eval", "compile")}

    def trap(name):
        def f(*a, **k):
            calls.append(name)
            raise AssertionError(f"{name} called while reading a pickle")
        return f

    for name in saved:
        setattr(builtins, name, trap(name))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(builtins, name, fn)


def _crafted(module, name, arg_path):
    """A pickle that would create ``arg_path`` if its global were resolved and called."""
    if (module, name) == ("os", "system"):
        args = (f"touch {arg_path}",)
    elif (module, name) == ("builtins", "eval"):
        args = (f"open({str(arg_path)!r}, 'w').close()",)
    elif (module, name) == ("builtins", "exec"):
        args = (f"open({str(arg_path)!r}, 'w').close()",)
    elif (module, name) == ("subprocess", "Popen"):
        args = (["touch", str(arg_path)],)
    else:
        args = (str(arg_path), "w")
    return fx.dumps(fx.Reduce(fx.GlobalRef(module, name), args), protocol=2)


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"),
                                         ("builtins", "exec"), ("subprocess", "Popen"),
                                         ("builtins", "open"), ("posix", "system")])
def test_disallowed_global_is_refused_and_nothing_runs(tmp_path, module, name):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(_crafted(module, name, marker))
    # sanity: the crafted pickle really would create the file with an ordinary unpickler
    if (module, name) == ("builtins", "open"):
        pickle.loads(pkl.read_bytes()).close()
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UserError) as e:
        read_network_pkl(pkl)
    msg = str(e.value)
    assert str(pkl) in msg and f"'{module}.{name}'" in msg and "refusing" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_disallowed_global_nested_in_a_valid_looking_pickle(tmp_path):
    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)
    G = fx.random_weights(fx.pt_param_shapes_G(4, 0, 4, 4, 3, 1, 32, 8), rng)
    tree = fx.module_tree(G, "Generator", dict(z_dim=4, c_dim=0, w_dim=4, img_resolution=4,
                                               img_channels=3))
    evil = fx.Reduce(fx.GlobalRef("os", "system"), (f"touch {marker}",))
    data = {"G": tree, "G_ema": tree, "D": tree, "training_set_kwargs": {"path": evil}}
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(fx.dumps(data))
    with no_exec() as calls, pytest.raises(UserError, match=r"refusing to load global 'os\.system'"):
        read_network_pkl(pkl)
    assert not marker.exists() and not calls


def _small_pt_pickle(path, module_src=None, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    gk = dict(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3,
              mapping_kwargs=dict(num_layers=1),
              synthesis_kwargs=dict(channel_base=32, channel_max=8))
    dk = dict(c_dim=0, img_resolution=8, img_channels=3, channel_base=32, channel_max=8)
    G = fx.random_weights(fx.pt_param_shapes_G(4, 0, 4, 8, 3, 1, 32, 8), rng)
    D = fx.random_weights(fx.pt_param_shapes_D(0, 8, 3, 32, 8, 0, 0), rng)
    fx.write_pytorch_pkl(path, G, gk, D, dk, module_src=module_src)
    return G, D


def test_embedded_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    src = f"open({str(marker)!r}, 'w').write('ran')\nimport os\nos.system('touch {marker}')\n"
    pkl = tmp_path / "net.pkl"
    G, _ = _small_pt_pickle(pkl, module_src=src)
    with no_exec() as calls:
        data = read_network_pkl(pkl)  # weights are read; the source is only hashed
    assert not marker.exists() and not calls
    np.testing.assert_array_equal(data["G"].params["synthesis.b4.const"], G["synthesis.b4.const"])
    raw = safe_pickle.safe_load(open(pkl, "rb"))
    assert raw["G"].module_src_len == len(src) and not hasattr(raw["G"], "module_src")


def test_unknown_persistent_class_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    src = f"class Evil:\n    def __setstate__(self, s):\n        open({str(marker)!r}, 'w')\n"
    obj = fx.persistent_module("Evil", module_src=src)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(fx.dumps({"G": obj, "G_ema": obj, "D": obj}))
    with no_exec() as calls, pytest.raises(UserError, match="not a StyleGAN2-ADA"):
        read_network_pkl(pkl)
    assert not marker.exists() and not calls


def test_tf1_build_module_src_is_never_executed(tmp_path):
    # tf1_network embeds "raise SystemExit('must never run')" as build_module_src
    net = fx.tf1_network("G", "G_main", {"resolution": 4}, {"dlatent_avg": np.zeros(4, np.float32)})
    data = fx.dumps((net, net, net), protocol=3)
    with no_exec() as calls:
        raw = safe_pickle.safe_loads(data)
    assert raw[0].build_func_name == "G_main" and raw[0].module_src_len > 0
    assert not calls


def test_object_arrays_are_refused():
    arr = np.array([1, None], dtype=object)
    with pytest.raises(safe_pickle.UnsafePickleError):
        safe_pickle.safe_loads(pickle.dumps(arr, protocol=2))
    dt = fx.Reduce(fx.GlobalRef("numpy", "dtype"), ("O8", False, True), None)
    with pytest.raises(safe_pickle.UnsafePickleError, match="numeric"):
        safe_pickle.safe_loads(fx.dumps(dt, protocol=2))


def test_numpy_arrays_of_both_numpy_generations_load():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    # numpy 2 writes numpy._core.multiarray._reconstruct, numpy 1.x numpy.core.multiarray
    np.testing.assert_array_equal(safe_pickle.safe_loads(pickle.dumps(a, protocol=2)), a)
    np.testing.assert_array_equal(safe_pickle.safe_loads(fx.dumps(fx._np_array(a), protocol=3)), a)
    s = safe_pickle.safe_loads(pickle.dumps(np.float64(0.125), protocol=2))
    assert s == 0.125


def test_garbage_and_truncated_files_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(UserError, match="bad.pkl"):
        read_network_pkl(bad)
    good = tmp_path / "good.pkl"
    _small_pt_pickle(good)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UserError, match="cut.pkl"):
        read_network_pkl(cut)
    with pytest.raises(UserError, match="no such file"):
        read_network_pkl(tmp_path / "missing.pkl")
