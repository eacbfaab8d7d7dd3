"""Hostile and damaged NVlabs pickles: the real CLI refuses them in one line, within bounded memory.

Every hostile file is built here with our own writers (tests/test_import_fixtures.py): zip bombs
(in a tensor storage, in data.pkl), a "billion laughs" of shared lists, kwargs that would make the
networks huge (z_dim=2**26; channel_base=2**20 with channel_max 4096; 2048 channels with arrays that
do not have them), malformed fields, and a BUILD that tries to change the importer's stand-ins.

Each CLI run goes through tests/_rss_run.py, a wrapper whose only child is the CLI, so its
``RUSAGE_CHILDREN`` peak RSS is that run's alone; the wrapper also kills the child past
``KILL_MB`` (a safety net, so a regression cannot take the shared machine's memory). A hostile run
must: exit 1, end stderr with one ``error: <file>: ...`` line naming the limit, leave no --out,
and peak within 300 MB of a valid small import measured the same way.
"""
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from histaug_tf.common import UserError

import test_import_fixtures as fx

RES, Z, W, NMAP, BASE, CMAX = 16, 6, 8, 2, 128, 16
BOMB_MB = 1536          # what each zip bomb inflates to
SLACK_MB = 300          # allowed peak RSS over a valid small import
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# Writers of hostile files.

def _weights(seed=0, base=BASE, cmax=CMAX):
    rng = np.random.default_rng(seed)
    G = fx.random_weights(fx.pt_param_shapes_G(Z, 0, W, RES, 3, NMAP, base, cmax), rng)
    D = fx.random_weights(fx.pt_param_shapes_D(0, RES, 3, base, cmax, 0, 0), rng)
    return G, D


def _g_kwargs(**over):
    gk = dict(z_dim=Z, c_dim=0, w_dim=W, img_resolution=RES, img_channels=3,
              mapping_kwargs=dict(num_layers=NMAP),
              synthesis_kwargs=dict(channel_base=BASE, channel_max=CMAX))
    gk.update(over)
    return gk


def _d_kwargs(**over):
    dk = dict(c_dim=0, img_resolution=RES, img_channels=3, channel_base=BASE, channel_max=CMAX)
    dk.update(over)
    return dk


def write_pt(path, gk=None, dk=None, training_set_kwargs=None, G_sd=None, D_sd=None, edit=None):
    """A PyTorch-structure network pickle (as fx.write_pytorch_pkl), with hooks for damage."""
    G, D = _weights()
    G = G if G_sd is None else G_sd
    D = D if D_sd is None else D_sd
    data = dict(training_set_kwargs=training_set_kwargs or dict(path="x.zip", resolution=RES),
                G=fx.module_tree(G, "Generator", gk or _g_kwargs()),
                D=fx.module_tree(D, "Discriminator", dk or _d_kwargs()),
                G_ema=fx.module_tree(G, "Generator", gk or _g_kwargs()))
    if edit:
        edit(data)
    with open(path, "wb") as f:
        f.write(fx.dumps(data, protocol=4))


def write_tf1(path, g_extra=None, d_extra=None, edit=None):
    """A TF1-structure network pickle (as fx.write_tf1_pkl), with extra static kwargs."""
    G, D = _weights()

    def make_G(name):
        mapping, synthesis, own = fx.pt_to_tf1_G(G, RES)
        kw = dict(latent_size=Z, label_size=0, dlatent_size=W, resolution=RES, num_channels=3,
                  mapping_layers=NMAP, fmap_base=BASE // 2, fmap_max=CMAX, architecture="skip")
        kw.update(g_extra or {})
        comps = {"mapping": fx.tf1_network("G_mapping", "G_mapping", dict(kw), mapping),
                 "synthesis": fx.tf1_network("G_synthesis", "G_synthesis", dict(kw), synthesis)}
        return fx.tf1_network(name, "G_main", kw, own, comps)

    d_kw = dict(label_size=0, resolution=RES, num_channels=3, fmap_base=BASE // 2,
                fmap_max=CMAX, architecture="resnet", mbstd_group_size=4)
    d_kw.update(d_extra or {})
    data = (make_G("G"), fx.tf1_network("D", "D_main", d_kw, fx.pt_to_tf1_D(D)), make_G("Gs"))
    if edit:
        edit(data)
    with open(path, "wb") as f:
        f.write(fx.dumps(data, protocol=3))


def _zip_stream_zeros(zf, name, prefix, n_mb):
    """A zip entry of ``prefix`` + ``n_mb`` MiB of zeros, deflated while streaming."""
    chunk = bytes(1 << 20)
    with zf.open(name, "w") as e:
        e.write(prefix)
        for _ in range(n_mb):
            e.write(chunk)


def write_storage_bomb(path):
    """torch.save zip: data.pkl is a 16-float tensor of storage '0'; data/0 inflates to GBs."""
    marker = object()
    pid = ("storage", fx.GlobalRef("torch", "FloatStorage"), "0", "cpu", 16)
    tensor = fx.Reduce(fx.GlobalRef("torch._utils", "_rebuild_tensor_v2"),
                       (marker, 0, (16,), (1,), False,
                        fx.Reduce(fx.GlobalRef("collections", "OrderedDict"), ())))
    data_pkl = fx.dumps({"G": tensor}, protocol=2,
                        persistent=lambda o: pid if o is marker else None)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        _zip_stream_zeros(zf, "archive/data/0", b"", BOMB_MB)


def write_data_pkl_bomb(path):
    """torch.save zip whose data.pkl is one valid pickle of a GB-sized bytes object."""
    n = BOMB_MB << 20
    head = pickle.PROTO + b"\x04" + pickle.BINBYTES8 + struct.pack("<Q", n)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        _zip_stream_zeros(zf, "archive/data.pkl", head, BOMB_MB)
        with zf.open("archive/data.pkl", "r") as e:  # (check the writer: a valid pickle head)
            assert e.read(len(head)) == head


def laughs(depth, width=10):
    """A list of ``width**depth`` strings that pickles in a few hundred bytes (shared sublists)."""
    x = "lol"
    for _ in range(depth):
        x = [x] * width
    return x


# ---------------------------------------------------------------------------------------------
# Running the CLI under the RSS wrapper.

def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def run_cli(pkl, out, kill_mb):
    cmd = [sys.executable, os.path.join(HERE, "_rss_run.py"), str(kill_mb), sys.executable,
           "-m", "histaug_tf.import_nvlabs", f"--src={pkl}", f"--out={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    info = json.loads(r.stdout.strip().splitlines()[-1])
    return info, r.stderr


@pytest.fixture(scope="module")
def valid_peak(tmp_path_factory):
    """Peak RSS (MB) of importing a valid small pickle with the same CLI and wrapper."""
    d = tmp_path_factory.mktemp("valid")
    pkl = d / "valid.pkl"
    write_pt(pkl)
    info, err = run_cli(pkl, d / "out", 6000)
    assert info["rc"] == 0 and not info["killed"], err[-2000:]
    assert (d / "out" / "valid.keras").is_file()
    print(f"\nPEAK valid small import: {info['peak_mb']} MB")
    return info["peak_mb"]


def _kill_mb(valid_peak):
    return max(2000, valid_peak + 1200)


def check_refused(pkl, out, valid_peak, *needles, case=""):
    info, err = run_cli(pkl, out, _kill_mb(valid_peak))
    print(f"\nPEAK {case}: {info['peak_mb']} MB (valid {valid_peak} MB, killed={info['killed']})")
    assert not info["killed"], f"killed past {_kill_mb(valid_peak)} MB"
    assert info["rc"] == 1, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-2000:]
    assert lines[0].startswith(f"error: {pkl}: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not os.path.exists(out)
    assert info["peak_mb"] <= valid_peak + SLACK_MB, (info["peak_mb"], valid_peak)
    return lines[0]


# ---------------------------------------------------------------------------------------------
# The CLI on hostile files.

def test_zip_bomb_in_tensor_storage(tmp_path, valid_peak):
    pkl = tmp_path / "storage_bomb.pkl"
    write_storage_bomb(pkl)
    assert pkl.stat().st_size < 16 << 20
    check_refused(pkl, tmp_path / "out", valid_peak, "'archive/data/0' declares "
                  f"{BOMB_MB << 20} bytes", "16 x 4 = 64 bytes", "numel x itemsize",
                  case="zip bomb in a tensor storage")


def test_zip_bomb_data_pkl(tmp_path, valid_peak):
    pkl = tmp_path / "data_pkl_bomb.pkl"
    write_data_pkl_bomb(pkl)
    assert pkl.stat().st_size < 16 << 20
    check_refused(pkl, tmp_path / "out", valid_peak, "'archive/data.pkl' declares",
                  "MAX_PICKLE_BYTES", case="zip bomb data.pkl")


@pytest.mark.parametrize("where,depth", [("training_set_kwargs", 9), ("G kwargs", 8)])
def test_billion_laughs(tmp_path, valid_peak, where, depth):
    pkl = tmp_path / "laughs.pkl"
    if where == "training_set_kwargs":
        write_pt(pkl, training_set_kwargs={"path": "x.zip", "laughs": laughs(depth)})
    else:
        syn = dict(channel_base=BASE, channel_max=CMAX, resample_filter=laughs(depth))
        write_pt(pkl, gk=_g_kwargs(synthesis_kwargs=syn))
    assert pkl.stat().st_size < 1 << 20
    check_refused(pkl, tmp_path / "out", valid_peak, where, "MAX_PLAIN_OBJECTS=100000",
                  case=f"billion laughs depth {depth} in {where}")


def test_billion_laughs_tf1_static_kwargs(tmp_path, valid_peak):
    pkl = tmp_path / "laughs_tf1.pkl"
    write_tf1(pkl, g_extra={"resample_kernel": laughs(8)})
    check_refused(pkl, tmp_path / "out", valid_peak, "G static_kwargs",
                  "MAX_PLAIN_OBJECTS=100000", case="billion laughs depth 8, TF1 static_kwargs")


def _pt_module_dag(data):
    # G.synthesis: 7 levels of 10 children that are all the same module -> 10**7 paths
    m = fx.persistent_module("FullyConnectedLayer", params={"weight": np.zeros((1, 1), np.float32)})
    for _ in range(7):
        m = fx.persistent_module("SynthesisNetwork", modules={f"m{i}": m for i in range(10)})
    data["G"].args[0]["state"]["_modules"]["synthesis"] = m


def _tf1_component_dag(data):
    # G.mapping: 3 levels of 10 components that are all the same Network, 10**4 variables each
    net = fx.tf1_network("x", "x", {}, {})
    arr = fx._np_array(np.zeros(1))
    net.state["variables"] = [(f"v{i}", arr) for i in range(10 ** 4)]
    for _ in range(3):
        net = fx.tf1_network("x", "x", {}, {}, components={f"c{i}": net for i in range(10)})
    data[0].state["components"]["mapping"] = net


@pytest.mark.parametrize("fmt", ["pytorch", "tf1"])
def test_shared_module_tree(tmp_path, valid_peak, fmt):
    pkl = tmp_path / f"dag_{fmt}.pkl"
    if fmt == "pytorch":
        write_pt(pkl, edit=_pt_module_dag)
    else:
        write_tf1(pkl, edit=_tf1_component_dag)
    assert pkl.stat().st_size < 1 << 20
    check_refused(pkl, tmp_path / "out", valid_peak, "G has more than 100000 modules and arrays",
                  "MAX_STATE_ENTRIES=100000", case=f"shared module tree ({fmt})")


def test_z_dim_2_26(tmp_path, valid_peak):
    pkl = tmp_path / "zdim.pkl"
    write_pt(pkl, gk=_g_kwargs(z_dim=2 ** 26))
    check_refused(pkl, tmp_path / "out", valid_peak, "G.z_dim=67108864", "MAX_DIM=2048",
                  case="kwargs z_dim=2**26")


@pytest.mark.parametrize("fmt", ["pytorch", "tf1"])
def test_channel_base_2_20_channel_max_4096(tmp_path, valid_peak, fmt):
    pkl = tmp_path / f"channels_{fmt}.pkl"
    if fmt == "pytorch":
        write_pt(pkl, gk=_g_kwargs(synthesis_kwargs=dict(channel_base=2 ** 20, channel_max=4096)))
        key = "G: "
    else:
        write_tf1(pkl, d_extra=dict(fmap_base=2 ** 19, fmap_max=4096))
        key = "D: "
    check_refused(pkl, tmp_path / "out", valid_peak, key, "4096 channels",
                  "MAX_CHANNELS=2048", case=f"channel_base 2**20, channel_max 4096 ({fmt})")


def test_channels_within_limits_but_not_in_the_arrays(tmp_path, valid_peak):
    # 2048 channels is allowed, but this file's arrays have 16: refused before building
    pkl = tmp_path / "channels_2048.pkl"
    write_pt(pkl, gk=_g_kwargs(synthesis_kwargs=dict(channel_base=2 ** 20, channel_max=2048)))
    check_refused(pkl, tmp_path / "out", valid_peak, "G array synthesis.b16.conv0.affine.bias",
                  "has shape (16,), but its kwargs imply (2048,)",
                  case="channel_max 2048 with 16-channel arrays")


def _init_kwargs_list(data):
    data["G"].args[0]["state"]["_init_kwargs"] = [1, 2]


def _tf1_variables_dict(data):
    data[0].state["variables"] = {"dlatent_avg": "x"}


@pytest.mark.parametrize("case,writer,needles", [
    ("pytorch z_dim string", lambda p: write_pt(p, gk=_g_kwargs(z_dim="6")),
     ("G.z_dim='6': expected an integer",)),
    ("pytorch mapping_kwargs list", lambda p: write_pt(p, gk=_g_kwargs(mapping_kwargs=[1, 2])),
     ("G kwargs.mapping_kwargs is list, expected a dict",)),
    ("pytorch _init_kwargs list", lambda p: write_pt(p, edit=_init_kwargs_list),
     ("G: _init_kwargs is list, expected a dict",)),
    ("tf1 resolution string", lambda p: write_tf1(p, g_extra={"resolution": "16"}),
     ("G.img_resolution='16': expected a power of two",)),
    ("tf1 variables dict", lambda p: write_tf1(p, edit=_tf1_variables_dict),
     ("G.variables is dict, expected a list",)),
])
def test_malformed_fields(tmp_path, valid_peak, case, writer, needles):
    pkl = tmp_path / "malformed.pkl"
    writer(pkl)
    check_refused(pkl, tmp_path / "out", valid_peak, *needles, case=f"malformed: {case}")


# ---------------------------------------------------------------------------------------------
# In-process: a BUILD in one load must not change what a later load does.

def _build_on_global(module, name, state):
    """GLOBAL module.name, then BUILD state: what a hostile pickle does to a resolved global."""
    return (pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode()
            + fx.dumps(state, protocol=2)[2:-1] + pickle.BUILD + pickle.STOP)


@pytest.mark.parametrize("module,name,state", [
    ("torch", "FloatStorage", {"dtype": "<f2"}),
    ("torch", "FloatStorage", (None, {"dtype": "<f2"})),
    ("torch.storage", "_load_from_bytes", {"x": 1}),
    ("numpy", "ndarray", (None, {"x": 1})),
])
def test_build_in_hostile_load_does_not_persist(tmp_path, module, name, state):
    from histaug_tf.interop.nvlabs_format import read_network_pkl

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(_build_on_global(module, name, state))
    with pytest.raises(UserError, match=r"evil\.pkl: .*BUILD of"):
        read_network_pkl(evil)
    good = tmp_path / "good.pkl"
    G, _ = _weights()
    write_pt(good)
    data = read_network_pkl(good)
    for k, v in G.items():
        assert data["G"].params[k].dtype == np.float32
        np.testing.assert_array_equal(data["G"].params[k], v, err_msg=k)


def test_each_load_gets_its_own_stand_ins():
    # a pickle that is just a resolved global returns the stand-in itself: never the shared table
    # entry, and never the one another load got
    from histaug_tf.torchfile import safe_pickle

    for module, name in (("torch", "FloatStorage"), ("dnnlib.tflib.network", "Network"),
                         ("torch._utils", "_rebuild_tensor_v2")):
        raw = pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.STOP
        a, b = safe_pickle.safe_loads(raw), safe_pickle.safe_loads(raw)
        assert a is not b and a is not safe_pickle.ALLOWED_GLOBALS[(module, name)], name


# ---------------------------------------------------------------------------------------------
# Unit checks of the limits.

def test_array_byte_cap(tmp_path, monkeypatch):
    from histaug_tf.torchfile import limits
    from histaug_tf.interop.nvlabs_format import read_network_pkl

    pkl = tmp_path / "net.pkl"
    write_pt(pkl)
    read_network_pkl(pkl)
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 4096)  # smaller than this file's weights
    with pytest.raises(UserError, match=r"net\.pkl: .*MAX_ARRAY_BYTES=4096"):
        read_network_pkl(pkl)


def test_plain_counts_shared_references_and_matches_json_expansion():
    from histaug_tf.interop import limits

    x = laughs(3, width=7)                          # 7**3 leaves: within the limit
    y = {"a": x, "b": (x, np.float32(0.5)), "c": np.int64(3)}
    got = limits.plain(y, "p", "w")
    ref = json.loads(json.dumps({"a": x, "b": [x, 0.5], "c": 3}))
    assert got == ref
    with pytest.raises(UserError, match="MAX_PLAIN_OBJECTS"):
        limits.plain(laughs(6), "p", "w")           # 10**6 leaves
    cyc = []
    cyc.append(cyc)
    with pytest.raises(UserError, match="MAX_PLAIN_DEPTH"):
        limits.plain({"k": cyc}, "p", "w")
