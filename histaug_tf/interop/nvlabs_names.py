"""Our variable paths <-> NVlabs StyleGAN2-ADA names, with the layout transforms.

Our paths are the Keras variable paths without the model's own name, e.g.
``synthesis/b64/conv0/weight`` (``G.variables[i].path == 'generator/synthesis/b64/conv0/weight'``);
see :func:`variable_paths`.

Two NVlabs namings are covered:

* PyTorch (stylegan2-ada-pytorch ``state_dict()`` of ``Generator`` / ``Discriminator``), e.g.
  ``synthesis.b64.conv0.weight`` ``[out, in, kh, kw]``, ``mapping.fc0.weight`` ``[out, in]``.
* TF1 (stylegan2-ada, ``training/networks.py``), as NVlabs' ``legacy.py`` collects them from a
  pickle: the network's own variables plus ``<component>/<name>``, e.g.
  ``synthesis/64x64/Conv0_up/weight``, ``mapping/Dense0/weight``, ``dlatent_avg``; in the TF1 graph
  the component scopes are ``G_mapping`` / ``G_synthesis`` (:func:`tf1_scoped_name`).

Transforms (``ours = f(theirs)``; facts from NVlabs ``legacy.py`` and ``training/networks.py``):

============  ==================================================================================
kind          meaning
============  ==================================================================================
identity      same array
dense_t       PyTorch dense ``[out, in]`` -> ours ``[in, out]`` (transpose)
conv_t        PyTorch conv ``[out, in, kh, kw]`` -> ours ``[kh, kw, in, out]`` (transpose 2,3,1,0)
const_t       PyTorch const ``[C, 4, 4]`` -> ours ``[4, 4, C]`` (transpose 1,2,0)
tf1_flip      TF1 ``Conv0_up`` weight (stored for ``conv2d_transpose``): ``w[::-1, ::-1]``
tf1_const     TF1 const ``[1, C, 4, 4]`` -> ``[0].transpose(1, 2, 0)``
tf1_noise     TF1 noise buffer ``[1, 1, R, R]`` -> ``[0, 0]``
tf1_mod_bias  TF1 ``mod_bias`` is stored minus 1 (TF1 adds 1 at run time): ``b + 1``
============  ==================================================================================

Caveat: the TF1 code's discriminator defaults differ (``mapping_layers=0``, ``mapping_lrmul=0.1``
for the label mapping, ``mbstd_group_size`` from the pickle); build our D with the pickle's
settings before copying weights.
"""
from __future__ import annotations

import re

import numpy as np

# (our path regex, PyTorch template, PyTorch transform, TF1 template, TF1 transform)
# Templates use the regex groups: {r} = resolution, {i} = index.
_G_TABLE = [
    (r"mapping/w_avg", "mapping.w_avg", "identity", "dlatent_avg", "identity"),
    (r"mapping/embed/weight", "mapping.embed.weight", "dense_t", "mapping/LabelEmbed/weight", "identity"),
    (r"mapping/embed/bias", "mapping.embed.bias", "identity", "mapping/LabelEmbed/bias", "identity"),
    (r"mapping/fc(?P<i>\d+)/weight", "mapping.fc{i}.weight", "dense_t", "mapping/Dense{i}/weight", "identity"),
    (r"mapping/fc(?P<i>\d+)/bias", "mapping.fc{i}.bias", "identity", "mapping/Dense{i}/bias", "identity"),
    (r"synthesis/b4/const", "synthesis.b4.const", "const_t", "synthesis/4x4/Const/const", "tf1_const"),
    (r"synthesis/b4/conv1/weight", "synthesis.b4.conv1.weight", "conv_t", "synthesis/4x4/Conv/weight", "identity"),
    (r"synthesis/b4/conv1/bias", "synthesis.b4.conv1.bias", "identity", "synthesis/4x4/Conv/bias", "identity"),
    (r"synthesis/b4/conv1/noise_const", "synthesis.b4.conv1.noise_const", "identity", "synthesis/noise0", "tf1_noise"),
    (r"synthesis/b4/conv1/noise_strength", "synthesis.b4.conv1.noise_strength", "identity", "synthesis/4x4/Conv/noise_strength", "identity"),
    (r"synthesis/b4/conv1/affine/weight", "synthesis.b4.conv1.affine.weight", "dense_t", "synthesis/4x4/Conv/mod_weight", "identity"),
    (r"synthesis/b4/conv1/affine/bias", "synthesis.b4.conv1.affine.bias", "identity", "synthesis/4x4/Conv/mod_bias", "tf1_mod_bias"),
    (r"synthesis/b(?P<r>\d+)/conv0/weight", "synthesis.b{r}.conv0.weight", "conv_t", "synthesis/{r}x{r}/Conv0_up/weight", "tf1_flip"),
    (r"synthesis/b(?P<r>\d+)/conv0/bias", "synthesis.b{r}.conv0.bias", "identity", "synthesis/{r}x{r}/Conv0_up/bias", "identity"),
    (r"synthesis/b(?P<r>\d+)/conv0/noise_const", "synthesis.b{r}.conv0.noise_const", "identity", "synthesis/noise{n0}", "tf1_noise"),
    (r"synthesis/b(?P<r>\d+)/conv0/noise_strength", "synthesis.b{r}.conv0.noise_strength", "identity", "synthesis/{r}x{r}/Conv0_up/noise_strength", "identity"),
    (r"synthesis/b(?P<r>\d+)/conv0/affine/weight", "synthesis.b{r}.conv0.affine.weight", "dense_t", "synthesis/{r}x{r}/Conv0_up/mod_weight", "identity"),
    (r"synthesis/b(?P<r>\d+)/conv0/affine/bias", "synthesis.b{r}.conv0.affine.bias", "identity", "synthesis/{r}x{r}/Conv0_up/mod_bias", "tf1_mod_bias"),
    (r"synthesis/b(?P<r>\d+)/conv1/weight", "synthesis.b{r}.conv1.weight", "conv_t", "synthesis/{r}x{r}/Conv1/weight", "identity"),
    (r"synthesis/b(?P<r>\d+)/conv1/bias", "synthesis.b{r}.conv1.bias", "identity", "synthesis/{r}x{r}/Conv1/bias", "identity"),
    (r"synthesis/b(?P<r>\d+)/conv1/noise_const", "synthesis.b{r}.conv1.noise_const", "identity", "synthesis/noise{n1}", "tf1_noise"),
    (r"synthesis/b(?P<r>\d+)/conv1/noise_strength", "synthesis.b{r}.conv1.noise_strength", "identity", "synthesis/{r}x{r}/Conv1/noise_strength", "identity"),
    (r"synthesis/b(?P<r>\d+)/conv1/affine/weight", "synthesis.b{r}.conv1.affine.weight", "dense_t", "synthesis/{r}x{r}/Conv1/mod_weight", "identity"),
    (r"synthesis/b(?P<r>\d+)/conv1/affine/bias", "synthesis.b{r}.conv1.affine.bias", "identity", "synthesis/{r}x{r}/Conv1/mod_bias", "tf1_mod_bias"),
    (r"synthesis/b(?P<r>\d+)/torgb/weight", "synthesis.b{r}.torgb.weight", "conv_t", "synthesis/{r}x{r}/ToRGB/weight", "identity"),
    (r"synthesis/b(?P<r>\d+)/torgb/bias", "synthesis.b{r}.torgb.bias", "identity", "synthesis/{r}x{r}/ToRGB/bias", "identity"),
    (r"synthesis/b(?P<r>\d+)/torgb/affine/weight", "synthesis.b{r}.torgb.affine.weight", "dense_t", "synthesis/{r}x{r}/ToRGB/mod_weight", "identity"),
    (r"synthesis/b(?P<r>\d+)/torgb/affine/bias", "synthesis.b{r}.torgb.affine.bias", "identity", "synthesis/{r}x{r}/ToRGB/mod_bias", "tf1_mod_bias"),
]

_D_TABLE = [
    (r"b(?P<r>\d+)/fromrgb/weight", "b{r}.fromrgb.weight", "conv_t", "{r}x{r}/FromRGB/weight", "identity"),
    (r"b(?P<r>\d+)/fromrgb/bias", "b{r}.fromrgb.bias", "identity", "{r}x{r}/FromRGB/bias", "identity"),
    (r"b(?P<r>\d+)/conv0/weight", "b{r}.conv0.weight", "conv_t", "{r}x{r}/Conv0/weight", "identity"),
    (r"b(?P<r>\d+)/conv0/bias", "b{r}.conv0.bias", "identity", "{r}x{r}/Conv0/bias", "identity"),
    (r"b(?P<r>\d+)/conv1/weight", "b{r}.conv1.weight", "conv_t", "{r}x{r}/Conv1_down/weight", "identity"),
    (r"b(?P<r>\d+)/conv1/bias", "b{r}.conv1.bias", "identity", "{r}x{r}/Conv1_down/bias", "identity"),
    (r"b(?P<r>\d+)/skip/weight", "b{r}.skip.weight", "conv_t", "{r}x{r}/Skip/weight", "identity"),
    (r"mapping/embed/weight", "mapping.embed.weight", "dense_t", "LabelEmbed/weight", "identity"),
    (r"mapping/embed/bias", "mapping.embed.bias", "identity", "LabelEmbed/bias", "identity"),
    (r"mapping/fc(?P<i>\d+)/weight", "mapping.fc{i}.weight", "dense_t", "Mapping{i}/weight", "identity"),
    (r"mapping/fc(?P<i>\d+)/bias", "mapping.fc{i}.bias", "identity", "Mapping{i}/bias", "identity"),
    (r"b4/conv/weight", "b4.conv.weight", "conv_t", "4x4/Conv/weight", "identity"),
    (r"b4/conv/bias", "b4.conv.bias", "identity", "4x4/Conv/bias", "identity"),
    (r"b4/fc/weight", "b4.fc.weight", "dense_t", "4x4/Dense0/weight", "identity"),
    (r"b4/fc/bias", "b4.fc.bias", "identity", "4x4/Dense0/bias", "identity"),
    (r"b4/out/weight", "b4.out.weight", "dense_t", "Output/weight", "identity"),
    (r"b4/out/bias", "b4.out.bias", "identity", "Output/bias", "identity"),
]

TABLES = {"generator": _G_TABLE, "discriminator": _D_TABLE}

# ours = _TO_OURS[kind](theirs); theirs = _FROM_OURS[kind](ours)
_TO_OURS = {
    "identity": lambda a: a,
    "dense_t": lambda a: a.T,
    "conv_t": lambda a: a.transpose(2, 3, 1, 0),
    "const_t": lambda a: a.transpose(1, 2, 0),
    "tf1_flip": lambda a: a[::-1, ::-1],
    "tf1_const": lambda a: a[0].transpose(1, 2, 0),
    "tf1_noise": lambda a: a[0, 0],
    "tf1_mod_bias": lambda a: a + 1,
}
_FROM_OURS = {
    "identity": lambda a: a,
    "dense_t": lambda a: a.T,
    "conv_t": lambda a: a.transpose(3, 2, 0, 1),
    "const_t": lambda a: a.transpose(2, 0, 1),
    "tf1_flip": lambda a: a[::-1, ::-1],
    "tf1_const": lambda a: a.transpose(2, 0, 1)[None],
    "tf1_noise": lambda a: a[None, None],
    "tf1_mod_bias": lambda a: a - 1,
}


def _kind_of(model_or_kind):
    if isinstance(model_or_kind, str):
        if model_or_kind not in TABLES:
            raise ValueError(f"kind must be 'generator' or 'discriminator', got {model_or_kind!r}")
        return model_or_kind
    from histaug_tf.gan.networks import Discriminator  # local: avoid an import cycle
    return "discriminator" if isinstance(model_or_kind, Discriminator) else "generator"


def lookup(path, kind="generator"):
    """Return ``dict(torch=name, torch_transform=kind, tf1=name, tf1_transform=kind)`` for ``path``.

    ``path`` is our path without the model name (``synthesis/b8/conv0/weight``). KeyError if the
    path is not a NVlabs variable.
    """
    for pat, t_name, t_kind, tf_name, tf_kind in TABLES[_kind_of(kind)]:
        m = re.fullmatch(pat, path)
        if m:
            g = m.groupdict()
            if "r" in g:
                log2 = int(np.log2(int(g["r"])))
                g["n0"] = 2 * log2 - 5  # TF1 noise index of conv0 / conv1 at this resolution
                g["n1"] = 2 * log2 - 4
            return dict(torch=t_name.format(**g), torch_transform=t_kind,
                        tf1=tf_name.format(**g), tf1_transform=tf_kind)
    raise KeyError(f"no NVlabs name for variable {path!r}")


def tf1_scoped_name(tf1_name, kind="generator"):
    """A :func:`lookup` TF1 name as it appears in the TF1 graph (``G_synthesis/64x64/...``)."""
    if _kind_of(kind) == "generator":
        for comp, scope in (("mapping/", "G_mapping/"), ("synthesis/", "G_synthesis/")):
            if tf1_name.startswith(comp):
                return scope + tf1_name[len(comp):]
        return "G/" + tf1_name
    return "D/" + tf1_name


def to_ours(value, transform):
    """Convert a NVlabs array to our layout (see the module table)."""
    return np.array(_TO_OURS[transform](np.asarray(value)), order="C", copy=True)


def from_ours(value, transform):
    """Convert one of our arrays to the NVlabs layout (inverse of :func:`to_ours`)."""
    return np.array(_FROM_OURS[transform](np.asarray(value)), order="C", copy=True)


def variable_paths(model):
    """``{path without the model name: variable}`` for every variable of ``model``."""
    out = {}
    for v in model.variables:
        path = v.path.split("/", 1)[1] if "/" in v.path else v.path
        out[path] = v
    return out


def name_table(model, flavour="torch"):
    """``{our path: (NVlabs name, transform)}`` for every variable of ``model``."""
    kind = _kind_of(model)
    table = {}
    for path in variable_paths(model):
        e = lookup(path, kind)
        table[path] = (e[flavour], e[f"{flavour}_transform"])
    return table


def assign_from_nvlabs(model, params, flavour="torch", strict=True):
    """Copy NVlabs arrays into ``model``.

    Args:
        model: our ``Generator`` or ``Discriminator`` built with the same configuration.
        params: ``{NVlabs name: array}`` (PyTorch ``state_dict`` as NumPy, or TF1 names as
            ``legacy.py`` collects them).
        flavour: ``'torch'`` or ``'tf1'``.
        strict: raise when one of our variables has no value in ``params`` or a shape differs.
    Returns:
        the list of our paths that were assigned.
    """
    assigned, missing = [], []
    for path, var in variable_paths(model).items():
        name, transform = lookup(path, _kind_of(model))[flavour], \
            lookup(path, _kind_of(model))[f"{flavour}_transform"]
        if name not in params:
            missing.append(name)
            continue
        value = to_ours(params[name], transform)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{name}: shape {tuple(value.shape)} (after {transform}) != "
                             f"{path} {tuple(var.shape)}")
        var.assign(value.astype(np.float32))
        assigned.append(path)
    if strict and missing:
        raise ValueError(f"NVlabs parameters missing for: {', '.join(missing)}")
    return assigned


def export_to_nvlabs(model, flavour="torch"):
    """``{NVlabs name: array in NVlabs layout}`` for every variable of ``model``."""
    out = {}
    for path, var in variable_paths(model).items():
        e = lookup(path, _kind_of(model))
        out[e[flavour]] = from_ours(var.numpy(), e[f"{flavour}_transform"])
    return out
