"""``calc_metrics``: resolve the command line's networks / datasets, then ``compute_metrics``."""
from __future__ import annotations

import os
import time

import numpy as np

from histaug_tf.common import UserError
from histaug_tf.metrics.compute import compute_metrics, parse_metrics


def _check_network_labels(real: dict, meta: dict, path: str) -> None:
    """A snapshot that recorded its label names must have the real dataset's."""
    from histaug_tf.data.manifest import check_same_labels, manifest_path
    from histaug_tf.apps.generate import label_names_from_metadata

    names = label_names_from_metadata(meta or {})
    if names is not None:
        check_same_labels(real["label_names"], names, manifest_path(real["data_dir"]),
                          f"{path} (label names recorded in the snapshot)")


MEMORIZATION_NAMES = ("memorization", "memorisation")


def split_memorization(metrics):
    """(whether ``memorization`` is asked for, the other metric names)."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics or [])
    names = [n.strip() for n in names if n.strip()]
    return (any(n.lower() in MEMORIZATION_NAMES for n in names),
            [n for n in names if n.lower() not in MEMORIZATION_NAMES])


def memorization_metric(data_dir, *, generator=None, gen_data_dir=None, split="train",
                        gen_split="train", num_gen=None, resolution=None, resize_mode="crop",
                        seed=0, inception_weights=None, batch_size=64) -> dict:
    """``metrics.memorization`` of generated images (``generator``: ``num_gen`` images, default
    5,000, seeds ``seed, seed + 1, ...``, classes in turn; or the first ``num_gen`` of
    ``gen_data_dir``) against every image of ``data_dir/split`` (give the GAN's own training
    set). Blurred pixels, or FID Inception features when ``inception_weights`` is given."""
    from histaug_tf.data.pipeline import read_images
    from histaug_tf.metrics import memorization as mem
    num = int(num_gen or 5000)
    if generator is not None:
        res = resolution or generator.resolution
        seeds = np.arange(seed, seed + num, dtype=np.int64)
        classes = generator.classes
        labels = None if classes is None else np.asarray(classes)[np.arange(num) % len(classes)]
        syn = np.concatenate([generator(seeds[i:i + 256], None if labels is None
                                        else labels[i:i + 256]) for i in range(0, num, 256)])
    else:
        syn = read_images(gen_data_dir, gen_split, resolution=resolution, resize_mode=resize_mode,
                          limit=num)
        res = resolution or syn.shape[1]
    real = read_images(data_dir, split, resolution=res, resize_mode=resize_mode)
    if real.shape[1:] != syn.shape[1:]:
        raise UserError(f"{data_dir}: real images {real.shape[1:]} and generated images "
                        f"{syn.shape[1:]} differ; pass --resolution")
    if not inception_weights:
        return mem.memorization(real, syn)
    from histaug_tf.metrics.inception import get_inception
    ext = get_inception(inception_weights, batch_size=batch_size)
    views = mem.dihedral(real)
    r = mem.memorization(real, syn, train_features=np.stack([ext.features_uint8(v) for v in views]),
                         synthetic_features=ext.features_uint8(syn))
    r["feature"] = f"FID Inception pool features ({inception_weights})"
    return r


def calc_metrics(metrics, data_dir, network=None, networks=None, gen_data_dir=None,
                 inception_weights=None, vgg16_weights=None, inception_seed=0,
                 inception_resolution=299, batch_size=64, jit_compile=False, verify=False,
                 truncation_psi=1.0, truncation_cutoff=None, noise_mode="random",
                 **kwargs) -> dict:
    """Returns ``{'metrics': {...}, 'network'|'networks'|'gen_data': ..., 'data': ..., details}``.

    The real and generated sides must have the same label names (a generated dataset's manifest,
    or the label names a snapshot recorded); ``verify`` checks every shard's sha256 first. A
    damaged shard met while reading is named in the ``UserError``.
    """
    from histaug_tf.data.manifest import (check_same_label_names, explain_read_error,
                                          is_read_error, load_manifest)
    from histaug_tf.apps.generate import Synthesizer, load_generator, parse_networks_map
    from histaug_tf.metrics.compute import check_metric_options

    if not data_dir:
        raise UserError("--data (the real dataset directory) is required")
    want_mem, metrics = split_memorization(metrics)
    wanted = parse_metrics(metrics)
    if not wanted and not want_mem:
        raise UserError("--metrics: nothing to compute")
    given = [x for x in (network, networks, gen_data_dir) if x]
    if len(given) != 1:
        raise UserError("give exactly one of --network, --networks and --gen_data")
    weights = (check_metric_options(metrics, inception_weights, vgg16_weights) if wanted
               else {"inception_weights": inception_weights})
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: dataset directory does not exist")
    # ---- every input is checked before any feature is computed or cached
    check = "sha256" if verify else "size"
    real = load_manifest(data_dir, check=check)
    out = {"data": os.path.abspath(data_dir)}
    G = None
    if network:
        G, meta, path = load_generator(network)
        _check_network_labels(real, meta, path)
        out["network"] = os.path.abspath(path)
    elif networks:
        G = {}
        out["networks"] = {}
        for c, p in sorted(parse_networks_map(networks).items()):
            G[c], meta, path = load_generator(p)
            _check_network_labels(real, meta, path)
            out["networks"][str(c)] = os.path.abspath(path)
    else:
        check_same_label_names(real, load_manifest(gen_data_dir, check=check))
        out["gen_data"] = os.path.abspath(gen_data_dir)
    generator = None
    if G is not None:
        generator = Synthesizer(G=None if isinstance(G, dict) else G,
                                per_class=G if isinstance(G, dict) else None,
                                truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                noise_mode=noise_mode, batch_size=batch_size,
                                jit_compile=jit_compile)
    details = {}
    t0 = time.monotonic()
    out["metrics"] = {}
    try:
        if want_mem:
            out["memorization"] = memorization_metric(
                data_dir, generator=generator, gen_data_dir=gen_data_dir,
                inception_weights=inception_weights, batch_size=batch_size, **{
                    k: v for k, v in kwargs.items()
                    if k in ("split", "gen_split", "num_gen", "resolution", "resize_mode", "seed")})
            out["metrics"]["memorization"] = out["memorization"]["share"]
        if not wanted:
            out["seconds"] = time.monotonic() - t0
            return out
        out["metrics"].update(compute_metrics(metrics, data_dir=data_dir, generator=generator,
                                         gen_data_dir=gen_data_dir,
                                         inception_weights=weights["inception_weights"],
                                         vgg16_weights=weights["vgg16_weights"],
                                         inception_seed=inception_seed,
                                         inception_resolution=inception_resolution,
                                         batch_size=batch_size, jit_compile=jit_compile,
                                         details=details, **kwargs))
    except Exception as e:  # noqa: BLE001 - only read errors are translated, the rest re-raised
        if is_read_error(e):
            raise explain_read_error([data_dir, gen_data_dir], e) from None
        raise
    out["seconds"] = time.monotonic() - t0
    out.update(details)
    return out
