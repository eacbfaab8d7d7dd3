"""Parse NVlabs StyleGAN2-ADA network pickles (TF1 or PyTorch) into a neutral structure.

The neutral structure is, per network, the *NVlabs PyTorch* view of it — whichever format the file
is in:

* ``kwargs``: the constructor arguments of ``training.networks.Generator`` / ``Discriminator`` of
  NVlabs/stylegan2-ada-pytorch, with every default filled in (so the configuration is explicit);
* ``params``: ``state_dict`` name -> float32 NumPy array in PyTorch layout (dense ``[out, in]``,
  conv ``[out, in, kh, kw]``), the ``resample_filter`` buffers left out (they are constants of
  the configuration, checked against it).

TF1 pickles are converted to that view with the correspondences NVlabs documents in
``legacy.py`` of stylegan2-ada-pytorch (``fmap_base * 2 = channel_base``; TF ``[kh, kw, in, out]``
-> ``[out, in, kh, kw]``; the transposed-conv kernels of ``Conv0_up`` / ``Skip`` flipped in space;
the TF modulation bias stored without the ``+1`` of its initialisation; per-layer ``noise<i>``
buffers). Nothing here builds a network; :mod:`histaug_tf.interop.nvlabs` does that.

Hostile input: kwargs are converted with bounded size and depth, checked for types and ranges, and
the arrays are checked against the shapes the kwargs imply (:mod:`histaug_tf.interop.limits`), so
what :func:`read_network_pkl` returns can be built without surprises; any malformed field is one
``UserError`` line naming the file.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re

import numpy as np

from histaug_tf.common import UserError
from histaug_tf.interop import limits
from histaug_tf.interop.limits import short_repr
from histaug_tf.torchfile.safe_pickle import (PersistentObjectStub, TFNetworkStub,
                                              UnsafePickleError, safe_load)

__all__ = ["NetworkWeights", "read_network_pkl", "generator_defaults", "discriminator_defaults",
           "filter_taps", "KNOWN_PERSISTENT_CLASSES"]


@dataclasses.dataclass
class NetworkWeights:
    """One network of a pickle, in the NVlabs PyTorch view (see module docstring)."""

    kind: str                  # 'generator' or 'discriminator'
    kwargs: dict               # NVlabs PyTorch constructor kwargs, defaults filled in
    params: dict               # PyTorch state_dict name -> np.float32 array (PyTorch layout)
    source_format: str         # 'pytorch' or 'tf1'
    source_names: dict         # PyTorch name -> the name (path) in the file


# Classes of NVlabs/stylegan2-ada-pytorch training/networks.py and training/augment.py.
KNOWN_PERSISTENT_CLASSES = {
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
    "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock",
    "DiscriminatorEpilogue", "MinibatchStdLayer", "AugmentPipe",
}


# ---------------------------------------------------------------------------------------------
# Defaults of the NVlabs PyTorch constructors (training/networks.py).

def generator_defaults():
    return dict(
        z_dim=512, c_dim=0, w_dim=512, img_resolution=None, img_channels=3,
        mapping_kwargs=dict(num_layers=8, embed_features=None, layer_features=None,
                            activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995),
        synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=0,
                              architecture="skip", resample_filter=[1, 3, 3, 1], conv_clamp=None,
                              use_noise=True, activation="lrelu", fp16_channels_last=False,
                              kernel_size=3),
    )


def discriminator_defaults():
    return dict(
        c_dim=0, img_resolution=None, img_channels=3, architecture="resnet", channel_base=32768,
        channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None,
        block_kwargs=dict(activation="lrelu", resample_filter=[1, 3, 3, 1],
                          fp16_channels_last=False, freeze_layers=0),
        mapping_kwargs=dict(num_layers=8, embed_features=None, layer_features=None,
                            activation="lrelu", lr_multiplier=0.01),
        epilogue_kwargs=dict(mbstd_group_size=4, mbstd_num_channels=1, activation="lrelu"),
    )


def _merge(defaults, given, where, path):
    """``given`` (already plain) over a deep copy of ``defaults``; unknown names refused."""
    out = copy.deepcopy(defaults)
    if given is None:
        return out
    if not isinstance(given, dict):
        raise UserError(f"{path}: {where} is {type(given).__name__}, expected a dict")
    for k, v in given.items():
        if k not in defaults:
            raise UserError(f"{path}: {where}: unknown NVlabs argument {short_repr(k)}")
        if isinstance(defaults[k], dict):
            out[k] = _merge(defaults[k], v, f"{where}.{k}", path)
        else:
            out[k] = v
    return out


def _plain(v, path, what):
    """NumPy scalars / EasyDicts / tuples -> plain Python values, bounded (see limits.plain)."""
    return limits.plain(v, path, what)


def _dict_field(st, name, path, where):
    v = st.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise UserError(f"{path}: {where}: {name} is {type(v).__name__}, expected a dict")
    return v


def filter_taps(f):
    """The 2D filter NVlabs ``upfirdn2d.setup_filter`` builds from 1D taps: outer product, sum 1."""
    f = np.asarray(f, dtype=np.float32)
    if f.ndim == 1:
        f = np.outer(f, f)
    return f / f.sum()


# ---------------------------------------------------------------------------------------------
# PyTorch pickles.

_G_ARGS = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
           "synthesis_kwargs"]
_D_ARGS = ["c_dim", "img_resolution", "img_channels", "architecture", "channel_base",
           "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs",
           "mapping_kwargs", "epilogue_kwargs"]


def _count_entry(budget, path, key):
    """One more module / array reached (a shared one counts each time: the tree is expanded)."""
    budget[0] += 1
    if budget[0] > limits.MAX_STATE_ENTRIES:
        raise limits.LimitError(
            f"{path}: {key} has more than {limits.MAX_STATE_ENTRIES} modules and arrays (shared "
            f"ones counted each time; limit MAX_STATE_ENTRIES={limits.MAX_STATE_ENTRIES})")


def _state_dict(obj, path, prefix="", key="network", budget=None):
    """Flatten a persistent module tree into ``name -> array`` like ``state_dict``."""
    budget = [0] if budget is None else budget
    _count_entry(budget, path, key)
    if not isinstance(obj, PersistentObjectStub):
        raise UserError(f"{path}: {prefix or 'network'} is not a NVlabs persistent module")
    if obj.class_name not in KNOWN_PERSISTENT_CLASSES:
        raise UserError(f"{path}: {prefix or 'network'} is of class {obj.class_name!r}, which is "
                        "not a StyleGAN2-ADA network class (its embedded source is not executed)")
    st = obj.state
    where = prefix[:-1] or "network"
    out = {}
    skip = st.get("_non_persistent_buffers_set") or ()
    if not isinstance(skip, (set, frozenset, list, tuple)):
        raise UserError(f"{path}: {where}: _non_persistent_buffers_set is "
                        f"{type(skip).__name__}, expected a set")
    for group in ("_parameters", "_buffers"):
        for name, value in _dict_field(st, group, path, where).items():
            if not isinstance(name, str):
                raise UserError(f"{path}: {where}: {group} has a non-string key "
                                f"{short_repr(name)}")
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, np.ndarray):
                raise UserError(f"{path}: {prefix}{name} is not a tensor")
            _count_entry(budget, path, key)
            out[prefix + name] = value
    for name, child in _dict_field(st, "_modules", path, where).items():
        if child is None:
            continue
        if not isinstance(name, str) or "." in name:
            raise UserError(f"{path}: {where}: malformed module name {short_repr(name)}")
        if prefix.count(".") >= 8:
            raise UserError(f"{path}: {where}: modules nested deeper than 8 levels")
        out.update(_state_dict(child, path, prefix + name + ".", key, budget))
    return out


def _init_kwargs(obj, names, path, key):
    st = obj.state
    args = st.get("_init_args") or ()
    if not isinstance(args, (list, tuple)):
        raise UserError(f"{path}: {key}: _init_args is {type(args).__name__}, expected a tuple")
    kwargs = _dict_field(st, "_init_kwargs", path, key)
    if len(args) > len(names):
        raise UserError(f"{path}: {obj.class_name} has {len(args)} positional arguments")
    kwargs = dict(kwargs)
    for name, value in zip(names, args):
        kwargs[name] = value
    if not kwargs:  # very old pickles without init kwargs: use the stored attributes
        kwargs = {k: st[k] for k in names if k in st and not isinstance(st[k], dict)}
    return _plain(kwargs, path, f"{key} kwargs")


def _pt_network(obj, kind, path, key):
    want = "Generator" if kind == "generator" else "Discriminator"
    if not isinstance(obj, PersistentObjectStub) or obj.class_name != want:
        raise UserError(f"{path}: '{key}' is not a StyleGAN2-ADA {want} "
                        f"(got {getattr(obj, 'class_name', type(obj).__name__)})")
    names = _G_ARGS if kind == "generator" else _D_ARGS
    kw = _init_kwargs(obj, names, path, key)
    if kind == "generator":
        kw = _merge(generator_defaults(), kw, f"{key} kwargs", path)
        limits.check_generator_kwargs(kw, path, key)
    else:
        kw = _merge(discriminator_defaults(), kw, f"{key} kwargs", path)
        limits.check_discriminator_kwargs(kw, path, key)
    sd = _state_dict(obj, path, key=key)
    params, names_map = {}, {}
    for name, value in sd.items():
        if name.endswith("resample_filter"):
            _check_filter(value, kw, name, path)
            continue
        params[name] = value
        names_map[name] = name
    limits.check_shapes(kind, kw, params, path, key)  # before any float32 copy is made
    params = {name: _as_float32(value, name, path) for name, value in params.items()}
    return NetworkWeights(kind, kw, params, "pytorch", names_map)


def _check_filter(value, kw, name, path):
    taps = (kw["synthesis_kwargs"] if "synthesis_kwargs" in kw else kw["block_kwargs"])[
        "resample_filter"]
    if value.shape != filter_taps(taps).shape or not np.allclose(value, filter_taps(taps),
                                                                 atol=1e-6):
        raise UserError(f"{path}: {name} does not match resample_filter={taps}")


def _as_float32(value, name, path):
    if value.dtype.kind not in "fiub":
        raise UserError(f"{path}: {name} has dtype {value.dtype}")
    out = np.asarray(value, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise UserError(f"{path}: {name} contains NaN or Inf")
    return out



class _TF1Renamer:
    """Collects TF1 variables under their PyTorch names: ``put(pt_name, tf_name, fn)`` converts one
    (``fn`` = layout change or None); ``finish(kind, kw)`` refuses leftovers and returns weights."""

    def __init__(self, tf_vars, path, key):
        self.tf, self.path, self.key = tf_vars, path, key
        self.out, self.src, self.used = {}, {}, set()

    def put(self, pt_name, tf_name, fn):
        if tf_name not in self.tf:
            raise UserError(f"{self.path}: {self.key}: TF1 variable {tf_name!r} is missing")
        self.used.add(tf_name)
        v = self.tf[tf_name]
        try:
            v = fn(v) if fn else v
        except (ValueError, IndexError):
            raise UserError(f"{self.path}: {self.key}: TF1 variable {tf_name!r} has shape "
                            f"{v.shape}, not the layout of such a variable") from None
        self.out[pt_name] = v
        self.src[pt_name] = tf_name

    def finish(self, kind, kw):
        unused = sorted(set(self.tf) - self.used)
        if unused:
            raise UserError(f"{self.path}: {self.key}: unexpected TF1 variables {unused[:5]}")
        if kind == "generator":
            limits.check_generator_kwargs(kw, self.path, self.key)
        else:
            limits.check_discriminator_kwargs(kw, self.path, self.key)
        limits.check_shapes(kind, kw, self.out, self.path, self.key)
        out = {k: _as_float32(np.array(v, order="C"), self.src[k], self.path)
               for k, v in self.out.items()}
        return NetworkWeights(kind, kw, out, "tf1", self.src)

def _read_pytorch(data, path):
    missing = [k for k in ("G", "D", "G_ema") if k not in data]
    if missing:
        raise UserError(f"{path}: not a StyleGAN2-ADA network pickle (missing {missing})")
    out = {
        "format": "pytorch",
        "G": _pt_network(data["G"], "generator", path, "G"),
        "G_ema": _pt_network(data["G_ema"], "generator", path, "G_ema"),
        "D": _pt_network(data["D"], "discriminator", path, "D"),
        "training_set_kwargs": _plain(data.get("training_set_kwargs"), path,
                                      "training_set_kwargs"),
        "augment_p": None,
    }
    pipe = data.get("augment_pipe")
    if isinstance(pipe, PersistentObjectStub):
        p = (pipe.state.get("_buffers") or {}).get("p")
        if isinstance(p, np.ndarray) and p.size == 1:
            out["augment_p"] = float(p.reshape(()))
    return out


# ---------------------------------------------------------------------------------------------
# TF1 pickles.

_TF_G_KWARGS = {  # TF static kwarg -> (section, PyTorch name); None section = top level
    "latent_size": (None, "z_dim"), "label_size": (None, "c_dim"),
    "dlatent_size": (None, "w_dim"), "resolution": (None, "img_resolution"),
    "num_channels": (None, "img_channels"),
    "mapping_layers": ("mapping_kwargs", "num_layers"),
    "label_fmaps": ("mapping_kwargs", "embed_features"),
    "mapping_fmaps": ("mapping_kwargs", "layer_features"),
    "mapping_nonlinearity": ("mapping_kwargs", "activation"),
    "mapping_lrmul": ("mapping_kwargs", "lr_multiplier"),
    "w_avg_beta": ("mapping_kwargs", "w_avg_beta"),
    "dlatent_avg_beta": ("mapping_kwargs", "w_avg_beta"),
    "fmap_max": ("synthesis_kwargs", "channel_max"),
    "num_fp16_res": ("synthesis_kwargs", "num_fp16_res"),
    "conv_clamp": ("synthesis_kwargs", "conv_clamp"),
    "architecture": ("synthesis_kwargs", "architecture"),
    "resample_kernel": ("synthesis_kwargs", "resample_filter"),
    "use_noise": ("synthesis_kwargs", "use_noise"),
    "nonlinearity": ("synthesis_kwargs", "activation"),
}
# Static kwargs that do not change the network's function or weights at inference.
_TF_G_IGNORED = {"truncation_psi", "truncation_cutoff", "truncation_psi_val",
                 "truncation_cutoff_val", "style_mixing_prob", "structure", "randomize_noise",
                 "fused_modconv", "dtype", "mapping_func", "synthesis_func", "is_template_graph",
                 "normalize_latents", "fmap_base", "fmap_decay", "fmap_min", "fmap_const"}

_TF_D_KWARGS = {
    "label_size": (None, "c_dim"), "resolution": (None, "img_resolution"),
    "num_channels": (None, "img_channels"), "architecture": (None, "architecture"),
    "fmap_max": (None, "channel_max"), "num_fp16_res": (None, "num_fp16_res"),
    "conv_clamp": (None, "conv_clamp"), "mapping_fmaps": (None, "cmap_dim"),
    "nonlinearity": ("block_kwargs", "activation"),
    "resample_kernel": ("block_kwargs", "resample_filter"),
    "freeze_layers": ("block_kwargs", "freeze_layers"),
    "mapping_layers": ("mapping_kwargs", "num_layers"),
    "mapping_lrmul": ("mapping_kwargs", "lr_multiplier"),
    "mbstd_group_size": ("epilogue_kwargs", "mbstd_group_size"),
    "mbstd_num_features": ("epilogue_kwargs", "mbstd_num_channels"),
}
_TF_D_IGNORED = {"structure", "dtype", "fmap_base", "fmap_decay", "fmap_min",
                 "augment_strength", "score_size", "score_max"}
# Comparison-method switches that change D; refused unless off.
_TF_D_OFF = {"use_pagan": False, "use_spectral_norm": False, "adaptive_dropout": 0}


def _tf_params(net, prefix="", depth=0, path="<pickle>", key="network", budget=None):
    budget = [0] if budget is None else budget
    _count_entry(budget, path, key)
    out = {}
    if not isinstance(net.variables, (list, tuple)) or not isinstance(net.components, dict):
        raise UnsafePickleError(f"TF1 network {prefix or net.name!r}: variables/components are "
                                f"{type(net.variables).__name__}/{type(net.components).__name__}"
                                ", expected a list and a dict")
    for item in net.variables:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise UnsafePickleError(f"TF1 network {prefix or net.name!r}: a variable is "
                                    f"{short_repr(item)}, expected a (name, array) pair")
        name, value = item
        if not isinstance(value, np.ndarray):
            raise UnsafePickleError(f"TF1 variable {prefix}{name} is not an array")
        _count_entry(budget, path, key)
        out[prefix + name] = value
    if depth >= 4 and net.components:
        raise UnsafePickleError(f"TF1 components {prefix!r} nested deeper than 4 levels")
    for name, comp in net.components.items():
        if not isinstance(name, str) or not isinstance(comp, TFNetworkStub):
            raise UnsafePickleError(f"TF1 component {prefix}{short_repr(name)} is not a Network")
        out.update(_tf_params(comp, prefix + name + "/", depth + 1, path, key, budget))
    return out


def _tf_kwargs(net, table, ignored, off, defaults, path, key):
    kw = copy.deepcopy(defaults)
    sk = _plain(net.static_kwargs, path, f"{key} static_kwargs")
    for name, value in sk.items():
        if name in ignored:
            continue
        if name in off:
            if value != off[name]:
                raise UserError(f"{path}: {key} uses {name}={short_repr(value)} (a comparison "
                                "method of the ADA paper), which this port does not implement")
            continue
        if name not in table:
            raise UserError(f"{path}: {key} has an unknown TF1 argument "
                            f"{short_repr(name)}={short_repr(value)}")
        section, pt = table[name]
        if value is None and pt not in ("conv_clamp", "cmap_dim", "embed_features",
                                        "layer_features", "mbstd_group_size", "w_avg_beta"):
            continue
        (kw if section is None else kw[section])[pt] = value
    fmap_base = sk.get("fmap_base", 16384)
    if not isinstance(fmap_base, int) or isinstance(fmap_base, bool) \
            or not 1 <= fmap_base <= 1 << 29:
        raise UserError(f"{path}: {key}.fmap_base={short_repr(fmap_base)}: expected an integer "
                        f"in [1, {1 << 29}]")
    for name, expect in (("fmap_decay", 1), ("fmap_min", 1)):
        if sk.get(name, expect) != expect:
            raise UserError(f"{path}: {key} uses {name}={short_repr(sk[name])}; only {expect} is "
                            "supported")
    return kw, fmap_base


def _tf_generator(net, path, key):
    if not isinstance(net, TFNetworkStub):
        raise UserError(f"{path}: {key} is not a dnnlib.tflib.network.Network")
    if not isinstance(net.version, int) or net.version < 4:
        raise UserError(f"{path}: {key}: TF1 network pickle version {short_repr(net.version)} is "
                        "not supported (needs 4 or 5, StyleGAN2 / StyleGAN2-ADA)")
    if set(net.components) != {"mapping", "synthesis"}:
        raise UserError(f"{path}: {key} does not have mapping and synthesis components")
    kw, fmap_base = _tf_kwargs(net, _TF_G_KWARGS, _TF_G_IGNORED, {}, generator_defaults(),
                               path, key)
    kw["synthesis_kwargs"]["channel_base"] = int(fmap_base) * 2
    if kw["mapping_kwargs"]["w_avg_beta"] is None:
        kw["mapping_kwargs"]["w_avg_beta"] = 1
    if net.static_kwargs.get("fmap_const") is not None:
        raise UserError(f"{path}: {key} uses fmap_const, which is not supported")
    limits.check_generator_kwargs(kw, path, key)  # before the kwargs drive any loop
    tf = _tf_params(net, path=path, key=key)
    if any(re.fullmatch(r"synthesis/ToRGB_lod\d+/.*", n) for n in tf):
        raise UserError(f"{path}: {key} uses the 'orig' architecture (ToRGB_lod); only StyleGAN2 "
                        "'skip' generators are supported")
    conv = lambda w: np.transpose(w, (3, 2, 0, 1))            # [kh,kw,in,out] -> [out,in,kh,kw]
    flip = lambda w: np.transpose(w[::-1, ::-1], (3, 2, 0, 1))  # transposed-conv kernels
    renamer = _TF1Renamer(tf, path, key)
    put = renamer.put

    dense = lambda p: (lambda w: w.T) if p == "weight" else None
    put("mapping.w_avg", "dlatent_avg", None)
    c_dim = kw["c_dim"]
    if c_dim:
        for p in ("weight", "bias"):
            put(f"mapping.embed.{p}", f"mapping/LabelEmbed/{p}", dense(p))
    for i in range(int(kw["mapping_kwargs"]["num_layers"])):
        for p in ("weight", "bias"):
            put(f"mapping.fc{i}.{p}", f"mapping/Dense{i}/{p}", dense(p))
    res_log2 = int(np.log2(kw["img_resolution"]))
    use_noise = kw["synthesis_kwargs"]["use_noise"]
    arch = kw["synthesis_kwargs"]["architecture"]

    def layer(pt, tfs, noise_idx, weight_fn):
        put(f"{pt}.weight", f"{tfs}/weight", weight_fn)
        put(f"{pt}.bias", f"{tfs}/bias", None)
        put(f"{pt}.affine.weight", f"{tfs}/mod_weight", lambda w: w.T)
        put(f"{pt}.affine.bias", f"{tfs}/mod_bias", lambda b: b + 1)  # TF adds the 1 at run time
        if noise_idx is not None and use_noise:
            put(f"{pt}.noise_strength", f"{tfs}/noise_strength", None)
            put(f"{pt}.noise_const", f"synthesis/noise{noise_idx}", lambda n: n[0, 0])

    put("synthesis.b4.const", "synthesis/4x4/Const/const", lambda w: w[0])
    layer("synthesis.b4.conv1", "synthesis/4x4/Conv", 0, conv)
    layer("synthesis.b4.torgb", "synthesis/4x4/ToRGB", None, conv)
    for r_log2 in range(3, res_log2 + 1):
        r = 2 ** r_log2
        base = f"synthesis/{r}x{r}"
        layer(f"synthesis.b{r}.conv0", f"{base}/Conv0_up", 2 * r_log2 - 5, flip)
        layer(f"synthesis.b{r}.conv1", f"{base}/Conv1", 2 * r_log2 - 4, conv)
        if arch == "skip" or r_log2 == res_log2:
            layer(f"synthesis.b{r}.torgb", f"{base}/ToRGB", None, conv)
        if arch == "resnet":
            put(f"synthesis.b{r}.skip.weight", f"{base}/Skip/weight", flip)
    return renamer.finish("generator", kw)


def _tf_discriminator(net, path, key):
    if not isinstance(net, TFNetworkStub):
        raise UserError(f"{path}: {key} is not a dnnlib.tflib.network.Network")
    if not isinstance(net.version, int) or net.version < 4:
        raise UserError(f"{path}: {key}: TF1 network pickle version {short_repr(net.version)} is "
                        "not supported")
    d = discriminator_defaults()
    # TF1 D defaults differ from the PyTorch ones: no label mapping layers, lr 0.1, mbstd group
    # = whole minibatch (None).
    d["mapping_kwargs"]["num_layers"] = 0
    d["mapping_kwargs"]["lr_multiplier"] = 0.1
    d["epilogue_kwargs"]["mbstd_group_size"] = None
    kw, fmap_base = _tf_kwargs(net, _TF_D_KWARGS, _TF_D_IGNORED, _TF_D_OFF, d, path, key)
    kw["channel_base"] = int(fmap_base) * 2
    limits.check_discriminator_kwargs(kw, path, key)  # before the kwargs drive any loop
    tf = _tf_params(net, path=path, key=key)
    if any(re.fullmatch(r"FromRGB_lod\d+/.*", n) for n in tf):
        raise UserError(f"{path}: {key} uses the 'orig' architecture (FromRGB_lod)")
    renamer = _TF1Renamer(tf, path, key)
    put = renamer.put

    conv = lambda w: np.transpose(w, (3, 2, 0, 1))
    dense_t = lambda w: w.T
    res_log2 = int(np.log2(kw["img_resolution"]))
    arch = kw["architecture"]
    for r_log2 in range(res_log2, 2, -1):
        r = 2 ** r_log2
        if arch == "skip" or r_log2 == res_log2:
            put(f"b{r}.fromrgb.weight", f"{r}x{r}/FromRGB/weight", conv)
            put(f"b{r}.fromrgb.bias", f"{r}x{r}/FromRGB/bias", None)
        put(f"b{r}.conv0.weight", f"{r}x{r}/Conv0/weight", conv)
        put(f"b{r}.conv0.bias", f"{r}x{r}/Conv0/bias", None)
        put(f"b{r}.conv1.weight", f"{r}x{r}/Conv1_down/weight", conv)
        put(f"b{r}.conv1.bias", f"{r}x{r}/Conv1_down/bias", None)
        if arch == "resnet":
            put(f"b{r}.skip.weight", f"{r}x{r}/Skip/weight", conv)
    if arch == "skip":
        put("b4.fromrgb.weight", "4x4/FromRGB/weight", conv)
        put("b4.fromrgb.bias", "4x4/FromRGB/bias", None)
    if kw["c_dim"]:
        put("mapping.embed.weight", "LabelEmbed/weight", dense_t)
        put("mapping.embed.bias", "LabelEmbed/bias", None)
        for i in range(int(kw["mapping_kwargs"]["num_layers"])):
            put(f"mapping.fc{i}.weight", f"Mapping{i}/weight", dense_t)
            put(f"mapping.fc{i}.bias", f"Mapping{i}/bias", None)
        # cmap_dim: TF1's default (nf(0)) differs from PyTorch's (channels at 4x4); take it from
        # the weights so either way the configuration matches the file.
        out_w = tf.get("Output/weight")
        kw["cmap_dim"] = int(out_w.shape[1]) if out_w is not None and out_w.ndim == 2 else None
    put("b4.conv.weight", "4x4/Conv/weight", conv)
    put("b4.conv.bias", "4x4/Conv/bias", None)
    put("b4.fc.weight", "4x4/Dense0/weight", dense_t)
    put("b4.fc.bias", "4x4/Dense0/bias", None)
    put("b4.out.weight", "Output/weight", dense_t)
    put("b4.out.bias", "Output/bias", None)
    return renamer.finish("discriminator", kw)


def _read_tf1(data, path):
    G, D, Gs = data
    for key, net in (("G", G), ("D", D), ("Gs", Gs)):
        for attr, want, what in (("static_kwargs", dict, "dict"), ("components", dict, "dict"),
                                 ("variables", (list, tuple), "list")):
            if not isinstance(getattr(net, attr, None), want):
                raise UserError(f"{path}: {key}.{attr} is {type(getattr(net, attr, None)).__name__}"
                                f", expected a {what}")
    return {
        "format": "tf1",
        "G": _tf_generator(G, path, "G"),
        "G_ema": _tf_generator(Gs, path, "Gs"),
        "D": _tf_discriminator(D, path, "D"),
        "training_set_kwargs": None,
        "augment_p": None,
    }


# ---------------------------------------------------------------------------------------------

def read_network_pkl(path):
    """Read a NVlabs StyleGAN2-ADA network pickle safely (no code in it is ever run).

    Returns ``{'format': 'tf1'|'pytorch', 'G': NetworkWeights, 'G_ema': ..., 'D': ...,
    'training_set_kwargs': dict|None, 'augment_p': float|None}``. Raises ``UserError`` naming the
    file for anything refused or malformed (including a refused global).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except limits.LimitError as e:  # raised while unpickling: name the file
        raise limits.LimitError(f"{path}: {e}") from None
    except UnsafePickleError as e:
        raise UserError(f"{path}: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, MemoryError) as e:
        raise UserError(f"{path}: not a readable network pickle ({type(e).__name__}: {e})") \
            from None
    except Exception as e:  # pickle.UnpicklingError and friends
        raise UserError(f"{path}: not a readable network pickle ({type(e).__name__}: {e})") \
            from None
    try:
        if isinstance(data, tuple) and len(data) == 3 and all(
                isinstance(n, TFNetworkStub) for n in data):
            return _read_tf1(data, path)
        if isinstance(data, dict):
            return _read_pytorch(data, path)
    except UnsafePickleError as e:
        raise UserError(f"{path}: {e}") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
            RecursionError) as e:  # a field of an unexpected type the checks above did not name
        raise UserError(f"{path}: malformed network pickle ({type(e).__name__}: "
                        f"{short_repr(str(e), 120)})") from None
    raise UserError(f"{path}: not a StyleGAN2-ADA network pickle (top level is "
                    f"{type(data).__name__}; expected a TF1 (G, D, Gs) tuple or a PyTorch dict)")

