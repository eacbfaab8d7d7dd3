"""Hard limits for importing NVlabs network pickles, checked before anything large is allocated.

A network pickle is untrusted input. Besides never running its code and the byte limits of reading
it (:mod:`histaug_tf.torchfile.safe_pickle`, :mod:`histaug_tf.torchfile.limits`: zip entry sizes,
``MAX_PICKLE_BYTES``, ``MAX_ARRAY_BYTES``), the importer must not let a small hostile file make it
build huge networks. Every limit here is checked *before* the allocation it guards:

* the plain-object conversion of kwargs / ``training_set_kwargs`` (:func:`plain`) counts every
  reference — a shared object converted once (memoised) still counts its full size each time it is
  referenced, because the result is later written out as JSON, where sharing is expanded — and
  refuses more than :data:`MAX_PLAIN_OBJECTS` objects or nesting deeper than
  :data:`MAX_PLAIN_DEPTH`;
  likewise a network's module tree (PyTorch ``_modules``, TF1 ``components``) may reach at most
  :data:`MAX_STATE_ENTRIES` modules and arrays, shared ones counted each time they are reached;
* network kwargs (:func:`check_generator_kwargs`, :func:`check_discriminator_kwargs`): types and
  ranges (resolution <= 1024, channels <= 2048, z/w/c dims <= 2048, mapping layers <= 32, ...);
* array shapes (:func:`check_shapes`): the arrays a network of these kwargs has, computed by
  arithmetic from the kwargs, must be exactly the arrays in the file — so the memory a network
  build takes is bounded by what the file actually holds, and no network is built otherwise.

Each violation raises :class:`LimitError` (a ``UserError``, the one class of both modules) whose
one-line message names the file and the limit.
"""
from __future__ import annotations

import math

import numpy as np

from histaug_tf.torchfile.limits import LimitError, short_repr  # noqa: F401 (this module's API too)

MAX_PLAIN_OBJECTS = 100_000      # objects of one plain conversion, every reference counted
MAX_PLAIN_DEPTH = 16             # nesting depth of one plain conversion
MAX_STATE_ENTRIES = 100_000      # modules + arrays of one network's tree, every reference counted
MAX_RESOLUTION = 1024
MAX_CHANNELS = 2048              # feature maps of any layer
MAX_DIM = 2048                   # z_dim, w_dim, c_dim, embed/layer features, cmap_dim
MAX_MAPPING_LAYERS = 32
MAX_IMG_CHANNELS = 16


# ---------------------------------------------------------------------------------------------
# Plain conversion (NumPy scalars, EasyDicts, tuples -> plain Python), bounded.

def plain(v, path, what):
    """NumPy scalars / dict subclasses / tuples -> plain Python values, within the limits above.

    ``what`` names the field in the error message. Shared sub-objects are converted once; their
    size counts once per reference (the result is expanded when written as JSON).
    """
    memo = {}      # id -> (converted, size)
    keep = []      # keeps the ids in memo alive
    active = set()

    def conv(x, depth):
        if isinstance(x, np.generic):
            return x.item(), 1
        if not isinstance(x, (dict, list, tuple)):
            return x, 1
        key = id(x)
        if key in memo:
            return memo[key]
        if depth >= MAX_PLAIN_DEPTH or key in active:
            raise LimitError(f"{path}: {what} is nested deeper than {MAX_PLAIN_DEPTH} levels "
                             f"(limit MAX_PLAIN_DEPTH={MAX_PLAIN_DEPTH})")
        active.add(key)
        size = 1
        if isinstance(x, dict):
            out = {}
            for k, item in x.items():
                ck, sk = conv(k, depth + 1)
                cv, sv = conv(item, depth + 1)
                size += sk + sv
                _check_count(size, path, what)
                out[ck] = cv
        else:
            out = []
            for item in x:
                cv, sv = conv(item, depth + 1)
                size += sv
                _check_count(size, path, what)
                out.append(cv)
        active.discard(key)
        memo[key] = (out, size)
        keep.append(x)
        return out, size

    try:
        return conv(v, 0)[0]
    except TypeError as e:  # an unhashable converted key
        raise LimitError(f"{path}: {what}: malformed ({e})") from None


def _check_count(size, path, what):
    if size > MAX_PLAIN_OBJECTS:
        raise LimitError(f"{path}: {what} has more than {MAX_PLAIN_OBJECTS} objects (shared "
                         f"references counted each time; limit MAX_PLAIN_OBJECTS="
                         f"{MAX_PLAIN_OBJECTS})")


# ---------------------------------------------------------------------------------------------
# Kwargs: types and ranges.

_ACTIVATIONS = {"linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo, hi, limit=None):
    def check(v):
        if not _is_int(v):
            return "an integer"
        if not lo <= v <= hi:
            return f"an integer in [{lo}, {hi}]" + (f" (limit {limit})" if limit else "")
        return None
    return check


def _num(lo, hi):
    def check(v):
        if not _is_num(v) or not lo <= v <= hi:
            return f"a number in [{lo}, {hi}]"
        return None
    return check


def _opt(fn):
    return lambda v: None if v is None else fn(v)


def _bool(v):
    return None if isinstance(v, bool) or (_is_int(v) and v in (0, 1)) else "a boolean"


def _choice(*values):
    return lambda v: None if isinstance(v, str) and v in values else f"one of {sorted(values)}"


def _taps(v):
    if not isinstance(v, list) or not 1 <= len(v) <= 16 or not all(_is_num(t) for t in v) \
            or sum(v) == 0:
        return "a list of 1 to 16 numbers with a non-zero sum"
    return None


def _pow2(v):
    if not _is_int(v) or v < 4 or v > MAX_RESOLUTION or v & (v - 1):
        return f"a power of two in [4, {MAX_RESOLUTION}] (limit MAX_RESOLUTION={MAX_RESOLUTION})"
    return None


_DIM = _int(0, MAX_DIM, f"MAX_DIM={MAX_DIM}")
_DIM1 = _int(1, MAX_DIM, f"MAX_DIM={MAX_DIM}")
_ACT = _choice(*_ACTIVATIONS)
_BASE = _int(1, 1 << 30)

_MAPPING = {"num_layers": _int(0, MAX_MAPPING_LAYERS, f"MAX_MAPPING_LAYERS={MAX_MAPPING_LAYERS}"),
            "embed_features": _opt(_DIM1), "layer_features": _opt(_DIM1), "activation": _ACT,
            "lr_multiplier": _num(1e-8, 1e3), "w_avg_beta": _opt(_num(0, 1))}
_G_SCHEMA = {
    "z_dim": _DIM1, "c_dim": _DIM, "w_dim": _DIM1, "img_resolution": _pow2,
    "img_channels": _int(1, MAX_IMG_CHANNELS), "mapping_kwargs": _MAPPING,
    "synthesis_kwargs": {
        "channel_base": _BASE, "channel_max": _BASE, "num_fp16_res": _int(0, 16),
        "architecture": _choice("orig", "skip", "resnet"), "resample_filter": _taps,
        "conv_clamp": _opt(_num(1e-8, 1e9)), "use_noise": _bool, "activation": _ACT,
        "fp16_channels_last": _bool, "kernel_size": _int(1, 7)},
}
_D_SCHEMA = {
    "c_dim": _DIM, "img_resolution": _pow2, "img_channels": _int(1, MAX_IMG_CHANNELS),
    "architecture": _choice("orig", "skip", "resnet"), "channel_base": _BASE,
    "channel_max": _BASE, "num_fp16_res": _int(0, 16), "conv_clamp": _opt(_num(1e-8, 1e9)),
    "cmap_dim": _opt(_DIM1),
    "block_kwargs": {"activation": _ACT, "resample_filter": _taps, "fp16_channels_last": _bool,
                     "freeze_layers": _int(0, 32)},
    "mapping_kwargs": {k: v for k, v in _MAPPING.items() if k != "w_avg_beta"},
    "epilogue_kwargs": {"mbstd_group_size": _opt(_int(1, 1 << 16)),
                        "mbstd_num_channels": _int(0, 64), "activation": _ACT},
}


def _check_schema(kw, schema, path, where):
    if not isinstance(kw, dict):
        raise LimitError(f"{path}: {where} is {type(kw).__name__}, expected a dict")
    for name, rule in schema.items():
        if name not in kw:
            continue
        v = kw[name]
        if isinstance(rule, dict):
            _check_schema(v, rule, path, f"{where}.{name}")
            continue
        want = rule(v)
        if want:
            raise LimitError(f"{path}: {where}.{name}={short_repr(v)}: expected {want}")


def _channels(base, cmax, res):
    return min(base // res, cmax)


def _check_channels(base, cmax, img_resolution, path, where):
    per_res = [_channels(base, cmax, 2 ** i) for i in range(2, int(img_resolution).bit_length())]
    top = max(per_res)
    if top > MAX_CHANNELS:
        raise LimitError(f"{path}: {where}: channel_base={base}, channel_max={cmax} give {top} "
                         f"channels, more than {MAX_CHANNELS} (limit MAX_CHANNELS={MAX_CHANNELS})")
    if min(per_res) < 1:
        raise LimitError(f"{path}: {where}: channel_base={base} gives 0 channels at "
                         f"{img_resolution}x{img_resolution}")


def check_generator_kwargs(kw, path, where="G"):
    """Types and ranges of NVlabs ``Generator`` kwargs (defaults filled in)."""
    _check_schema(kw, _G_SCHEMA, path, where)
    syn = kw["synthesis_kwargs"]
    _check_channels(syn["channel_base"], syn["channel_max"], kw["img_resolution"], path, where)


def check_discriminator_kwargs(kw, path, where="D"):
    """Types and ranges of NVlabs ``Discriminator`` kwargs (defaults filled in)."""
    _check_schema(kw, _D_SCHEMA, path, where)
    _check_channels(kw["channel_base"], kw["channel_max"], kw["img_resolution"], path, where)


# ---------------------------------------------------------------------------------------------
# Array shapes implied by the kwargs (NVlabs PyTorch names and layout), by arithmetic only.

def _mapping_shapes(s, prefix, z_dim, c_dim, w_dim, mk, with_w_avg):
    embed = w_dim if mk["embed_features"] is None else mk["embed_features"]
    if c_dim == 0:
        embed = 0
    layer = w_dim if mk["layer_features"] is None else mk["layer_features"]
    n = mk["num_layers"]
    feats = [z_dim + embed] + [layer] * (n - 1) + [w_dim]
    if c_dim:
        s[f"{prefix}embed.weight"], s[f"{prefix}embed.bias"] = (embed, c_dim), (embed,)
    for i in range(n):
        s[f"{prefix}fc{i}.weight"] = (feats[i + 1], feats[i])
        s[f"{prefix}fc{i}.bias"] = (feats[i + 1],)
    if with_w_avg:
        s[f"{prefix}w_avg"] = (w_dim,)


def generator_shapes(kw):
    """``state_dict`` name -> shape of a StyleGAN2-ADA ``skip`` Generator (no resample filters)."""
    s = {}
    mk, syn = kw["mapping_kwargs"], kw["synthesis_kwargs"]
    w = kw["w_dim"]
    _mapping_shapes(s, "mapping.", kw["z_dim"], kw["c_dim"], w, mk, mk["w_avg_beta"] is not None)
    base, cmax, k = syn["channel_base"], syn["channel_max"], syn["kernel_size"]
    res_top = kw["img_resolution"]
    for i in range(2, res_top.bit_length()):
        r = 2 ** i
        cout = _channels(base, cmax, r)
        b = f"synthesis.b{r}"
        if r == 4:
            s[f"{b}.const"] = (cout, 4, 4)
            layers = [("conv1", cout)]
        else:
            layers = [("conv0", _channels(base, cmax, r // 2)), ("conv1", cout)]
        for name, cin in layers:
            s[f"{b}.{name}.weight"] = (cout, cin, k, k)
            s[f"{b}.{name}.bias"] = (cout,)
            s[f"{b}.{name}.affine.weight"] = (cin, w)
            s[f"{b}.{name}.affine.bias"] = (cin,)
            if syn["use_noise"]:
                s[f"{b}.{name}.noise_strength"] = ()
                s[f"{b}.{name}.noise_const"] = (r, r)
        if syn["architecture"] == "skip" or r == res_top:
            s[f"{b}.torgb.weight"] = (kw["img_channels"], cout, 1, 1)
            s[f"{b}.torgb.bias"] = (kw["img_channels"],)
            s[f"{b}.torgb.affine.weight"] = (cout, w)
            s[f"{b}.torgb.affine.bias"] = (cout,)
    return s


def discriminator_shapes(kw):
    """``state_dict`` name -> shape of a StyleGAN2-ADA ``resnet`` Discriminator (no filters)."""
    s = {}
    base, cmax, res_top = kw["channel_base"], kw["channel_max"], kw["img_resolution"]
    for i in range(res_top.bit_length() - 1, 2, -1):
        r = 2 ** i
        tmp, out = _channels(base, cmax, r), _channels(base, cmax, r // 2)
        if r == res_top:
            s[f"b{r}.fromrgb.weight"] = (tmp, kw["img_channels"], 1, 1)
            s[f"b{r}.fromrgb.bias"] = (tmp,)
        s[f"b{r}.conv0.weight"], s[f"b{r}.conv0.bias"] = (tmp, tmp, 3, 3), (tmp,)
        s[f"b{r}.conv1.weight"], s[f"b{r}.conv1.bias"] = (out, tmp, 3, 3), (out,)
        s[f"b{r}.skip.weight"] = (out, tmp, 1, 1)
    c4 = _channels(base, cmax, 4)
    cmap = (c4 if kw["cmap_dim"] is None else kw["cmap_dim"]) if kw["c_dim"] else 0
    if kw["c_dim"]:
        _mapping_shapes(s, "mapping.", 0, kw["c_dim"], cmap, kw["mapping_kwargs"], False)
    mbstd = kw["epilogue_kwargs"]["mbstd_num_channels"]
    s["b4.conv.weight"], s["b4.conv.bias"] = (c4, c4 + mbstd, 3, 3), (c4,)
    s["b4.fc.weight"], s["b4.fc.bias"] = (c4, c4 * 16), (c4,)
    s["b4.out.weight"], s["b4.out.bias"] = (cmap or 1, c4), (cmap or 1,)
    return s


def check_shapes(kind, kw, params, path, where):
    """The arrays of ``params`` must be exactly those a network of ``kw`` has, shape for shape.

    Only for the architectures the importer builds (``skip`` G, ``resnet`` D); others are refused
    later by the builder, before anything is built.
    """
    if kind == "generator":
        if kw["synthesis_kwargs"]["architecture"] != "skip":
            return
        want = generator_shapes(kw)
    else:
        if kw["architecture"] != "resnet":
            return
        want = discriminator_shapes(kw)
    missing = sorted(set(want) - set(params))
    if missing:
        raise LimitError(f"{path}: {where} arrays missing for its kwargs: "
                         f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    extra = sorted(set(params) - set(want))
    if extra:
        raise LimitError(f"{path}: {where} arrays with no place in a network of its kwargs: "
                         f"{', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
    for name in sorted(want):
        if tuple(params[name].shape) != tuple(want[name]):
            raise LimitError(f"{path}: {where} array {name} has shape {tuple(params[name].shape)}"
                             f", but its kwargs imply {tuple(want[name])}")
