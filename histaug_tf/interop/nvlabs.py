"""Import NVlabs StyleGAN2-ADA network pickles (TF1 or PyTorch) as histaug_tf Keras networks.

    from histaug_tf.interop.nvlabs import load_network_pkl
    nets = load_network_pkl('network-snapshot-001000.pkl')
    img = nets['G_ema'](z, c, truncation_psi=0.7, noise_mode='const')   # NHWC in [-1, 1]
    logits = nets['D'](img, c)

The pickle is read by :mod:`histaug_tf.torchfile.safe_pickle` (only the globals these formats need;
embedded source code is never executed; torch is not needed). The configuration (resolution,
channels, mapping layers, c_dim, channel base/max, architecture, num_fp16_res, conv_clamp, ...)
comes from the pickle's ``init_kwargs`` (PyTorch) or ``static_kwargs`` (TF1); the weights are
assigned through the name table of :mod:`histaug_tf.interop.nvlabs_names` (PyTorch names; TF1 files are
first put in the PyTorch layout by :mod:`histaug_tf.interop.nvlabs_format`). Every variable of our
networks must receive a value and every array of the pickle must land in a variable.

:func:`import_network_pkl` additionally writes a ``.keras`` snapshot
(:func:`histaug_tf.gan.snapshot.save_snapshot`) that ``generate`` and ``train_gan --resume`` read.
"""
from __future__ import annotations

import inspect
import os
import re

from histaug_tf.common import UserError, file_sha256
from histaug_tf.interop.nvlabs_format import NetworkWeights, read_network_pkl

__all__ = ["load_network_pkl", "import_network_pkl", "build_network", "keras_kwargs"]

# NVlabs arguments our constructors do not take, whose value does not change what the network
# computes (memory layout; which layers were frozen during training).
_NO_EFFECT = {"fp16_channels_last", "freeze_layers"}
# NVlabs arguments our constructors do not take, accepted only at this (NVlabs default) value.
_ONLY_DEFAULT = {"kernel_size": 3}


def _named_params(cls, exclude=()):
    sig = inspect.signature(cls.__init__)
    return {n for n, p in sig.parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - set(exclude)


def _fit(given, accepted, where, path):
    out = {}
    for k, v in given.items():
        if k in accepted:
            out[k] = v
        elif k in _NO_EFFECT:
            continue
        elif k in _ONLY_DEFAULT and v == _ONLY_DEFAULT[k]:
            continue
        else:
            raise UserError(f"{path}: {where}.{k}={v!r} is not supported by histaug_tf's networks")
    return out


def keras_kwargs(weights: NetworkWeights, path="<pickle>", force_fp32=False):
    """Constructor kwargs of our ``Generator`` / ``Discriminator`` for a pickle's network."""
    from histaug_tf.gan import networks as N

    kw = weights.kwargs
    if weights.kind == "generator":
        out = _fit({k: v for k, v in kw.items() if k not in ("mapping_kwargs", "synthesis_kwargs")},
                   _named_params(N.Generator), "G", path)
        out["mapping_kwargs"] = _fit(kw["mapping_kwargs"], _named_params(
            N.MappingNetwork, ("z_dim", "c_dim", "w_dim", "num_ws")), "mapping_kwargs", path)
        syn = dict(kw["synthesis_kwargs"])
        if force_fp32:
            syn["num_fp16_res"] = 0
        out["synthesis_kwargs"] = _fit(syn, _named_params(
            N.SynthesisNetwork, ("w_dim", "img_resolution", "img_channels")),
            "synthesis_kwargs", path)
        arch = kw["synthesis_kwargs"].get("architecture", "skip")
        if arch != "skip":
            raise UserError(f"{path}: generator architecture {arch!r} is not supported "
                            "(only StyleGAN2 'skip')")
        return out
    top = {k: v for k, v in kw.items()
           if k not in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs")}
    if force_fp32:
        top["num_fp16_res"] = 0
    out = _fit(top, _named_params(N.Discriminator), "D", path)
    out["block_kwargs"] = _fit(kw["block_kwargs"], _named_params(
        N.DiscriminatorBlock, ("in_channels", "tmp_channels", "out_channels", "resolution",
                               "img_channels", "architecture", "conv_clamp", "use_fp16")),
        "block_kwargs", path)
    out["mapping_kwargs"] = _fit(kw["mapping_kwargs"], _named_params(
        N.MappingNetwork, ("z_dim", "c_dim", "w_dim", "num_ws", "w_avg_beta")),
        "D.mapping_kwargs", path)
    out["epilogue_kwargs"] = _fit(kw["epilogue_kwargs"], _named_params(
        N.DiscriminatorEpilogue, ("in_channels", "cmap_dim", "resolution", "img_channels",
                                  "conv_clamp")), "epilogue_kwargs", path)
    if kw.get("architecture", "resnet") != "resnet":
        raise UserError(f"{path}: discriminator architecture {kw.get('architecture')!r} is not "
                        "supported (only StyleGAN2-ADA 'resnet')")
    return out


def build_network(weights: NetworkWeights, path="<pickle>", force_fp32=False, name=None):
    """Build our network for ``weights`` and assign every array (strict both ways)."""
    from histaug_tf.gan import networks as N
    from histaug_tf.interop import nvlabs_names

    kwargs = keras_kwargs(weights, path, force_fp32)
    cls = N.Generator if weights.kind == "generator" else N.Discriminator
    if name:
        kwargs["name"] = name
    try:
        net = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: cannot build the {weights.kind} {kwargs}: {e}") from None
    table = nvlabs_names.name_table(net, "torch")
    wanted = {nv for nv, _t in table.values()}
    extra = sorted(set(weights.params) - wanted)
    if extra:
        raise UserError(f"{path}: {weights.kind} arrays with no place in our network: "
                        f"{', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
    missing = sorted(wanted - set(weights.params))
    if missing:
        raise UserError(f"{path}: {weights.kind} arrays missing from the pickle: "
                        f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    try:
        nvlabs_names.assign_from_nvlabs(net, weights.params, flavour="torch", strict=True)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return net


def load_network_pkl(path, force_fp32=False):
    """Read a NVlabs network pickle (TF1 or PyTorch) safely and build our networks.

    Args:
        path: the ``.pkl`` file (``network-snapshot-*.pkl`` of either NVlabs implementation).
        force_fp32: build the networks with ``num_fp16_res=0`` (same weights; float32 everywhere).
    Returns:
        ``{'G': Generator, 'G_ema': Generator, 'D': Discriminator, 'metadata': dict}``; our
        networks with the call contract of :mod:`histaug_tf.gan.networks`.
    Raises:
        UserError: the file is not a supported network pickle, or refers to anything not allowed
            (one line naming the file and the problem). Nothing in the pickle is ever executed.
    """
    path = os.fspath(path)
    data = read_network_pkl(path)
    nets = {
        # default names, as train_gan builds them (its snapshot loader matches variable paths)
        "G": build_network(data["G"], path, force_fp32),
        "G_ema": build_network(data["G_ema"], path, force_fp32),
        "D": build_network(data["D"], path, force_fp32),
    }
    m = re.search(r"network-snapshot-(\d+)", os.path.basename(path))
    g = data["G_ema"].kwargs
    nets["metadata"] = {
        "imported_from": os.path.abspath(path),
        "source_sha256": file_sha256(path),
        "source_format": "nvlabs-" + data["format"],
        "kimg": int(m.group(1)) if m else None,
        "resolution": int(g["img_resolution"]),
        "img_channels": int(g["img_channels"]),
        "c_dim": int(g["c_dim"]),
        "augment_p": data["augment_p"],
        "nvlabs_kwargs": {"G": data["G"].kwargs, "G_ema": data["G_ema"].kwargs,
                          "D": data["D"].kwargs},
        "training_set_kwargs": data["training_set_kwargs"],
        "force_fp32": bool(force_fp32),
    }
    return nets


def import_network_pkl(src, out_dir, overwrite=False, force_fp32=False, name=None):
    """Convert a NVlabs pickle into ``<out_dir>/<name>.keras`` (G_ema, G, D + metadata).

    ``name`` defaults to the pickle's file name without ``.pkl``. The snapshot is written
    atomically by :func:`histaug_tf.gan.snapshot.save_snapshot`; an existing one is refused
    unless ``overwrite``. Returns the snapshot path.
    """
    src = os.fspath(src)
    stem = name or re.sub(r"\.pkl$", "", os.path.basename(src)) or "imported"
    out_path = os.path.join(os.fspath(out_dir), stem + ".keras")
    if os.path.exists(out_path) and not overwrite:
        raise UserError(f"{out_path}: exists (pass --overwrite to replace it)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a directory")
    # all checks before anything is written; TF is imported only once the file has passed the
    # reader's checks (so a refused file costs no TF import)
    nets = load_network_pkl(src, force_fp32=force_fp32)
    from histaug_tf.gan.snapshot import save_snapshot

    os.makedirs(out_dir, exist_ok=True)
    save_snapshot(out_path, nets["G_ema"], G=nets["G"], D=nets["D"], metadata=nets["metadata"])
    return out_path

