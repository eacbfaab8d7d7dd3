"""FID, KID and precision/recall of a generator (or a generated dataset) against a real dataset,
streaming features through an Inception-v3 extractor, with cached real statistics.

The entry point for the trainer and ``calc_metrics`` is ``compute_metrics(...) -> dict``.
Differences from NVlabs StyleGAN2-ADA (metrics/*.py), all deliberate:
  * features come from Keras' InceptionV3 (see ``inception.py``) — absolute values are not
    comparable with published FIDs;
  * precision/recall use the same Inception pool features (the reference uses VGG16 fc2);
  * the real features kept for KID and precision/recall are a seeded random subset of at most
    ``max_real_features`` (default 50,000) images; FID and its per-class variants use all of them;
  * per-class FID (``fid/<label name>``): generated images of class k against real images of
    class k, from the same pass (generated labels are drawn from the real class frequencies, as
    NVlabs draws them from the dataset). With few images per class it is biased upwards.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np

from histaug_tf.common import Progress, UserError, save_npz_atomic
from histaug_tf.metrics import stats as stats_lib

KNOWN_METRICS = ("fid", "kid", "pr")
CACHE_FORMAT = 2


def default_cache_dir() -> str:
    """``$HISTAUG_CACHE/stats``, else ``$XDG_CACHE_HOME/histaug_tf/stats``, else ``~/.cache/...``."""
    root = os.environ.get("HISTAUG_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                            "histaug_tf")
    return os.path.join(root, "stats")


def parse_metric_spec(metrics) -> tuple[list[str], int | None]:
    """``'fid,kid'`` or ``['fid2k', 'pr']`` → (['fid', 'kid' ...], num_gen or None).

    A name may carry the number of generated images as NVlabs' names do: ``fid50k``, ``kid2k``,
    ``pr500``; all metrics of one call share it (the largest given).
    """
    import re

    if isinstance(metrics, str):
        metrics = metrics.split(",")
    out, nums = [], []
    for m in metrics:
        m = m.strip().lower()
        if not m or m == "none":
            continue
        g = re.fullmatch(r"(fid|kid|pr)(?:(\d+)(k?))?", m)
        if not g:
            raise UserError(f"--metrics: unknown metric {m!r} (known: {', '.join(KNOWN_METRICS)}, "
                            "optionally with the number of generated images, e.g. fid10k)")
        if g.group(2):
            nums.append(int(g.group(2)) * (1000 if g.group(3) else 1))
        if g.group(1) not in out:
            out.append(g.group(1))
    return out, (max(nums) if nums else None)


def parse_metrics(metrics) -> list[str]:
    return parse_metric_spec(metrics)[0]


# ------------------------------------------------------------------------------------------------
# Real (dataset) statistics.
# ------------------------------------------------------------------------------------------------

def _class_filter(class_filter):
    if class_filter is None:
        return None
    if np.isscalar(class_filter):
        return [int(class_filter)]
    return sorted({int(c) for c in class_filter})


def _stats_cache_key(manifest, split, extractor_id, resolution, resize_mode, max_keep, seed,
                     class_filter=None) -> str:
    from histaug_tf.data.manifest import split_info

    info = split_info(manifest, split)
    payload = {
        "format": CACHE_FORMAT,
        "shards": [sh["sha256"] for sh in info["shards"]],
        "num_examples": info["num_examples"],
        "encoding": manifest["encoding"],
        "extractor": extractor_id,
        "resolution": resolution,
        "resize_mode": resize_mode if resolution else None,
        "max_keep": max_keep,
        "seed": seed,
        "class_filter": _class_filter(class_filter),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def dataset_feature_stats(data_dir: str, extractor, split: str = "train", *, resolution=None,
                          resize_mode: str = "crop", max_keep: int | None = 50000, seed: int = 0,
                          batch_size: int = 64, cache_dir=None, use_cache: bool = True,
                          progress: bool = False, class_filter=None
                          ) -> tuple[stats_lib.FeatureStats, dict]:
    """Features of every image of ``data_dir/split`` (per class, plus a kept subset of rows).

    Returns (FeatureStats, info) where info has ``cache_file`` and ``cached`` (bool).
    The cache key is the split's shard sha256s (from the manifest) + the extractor's identity +
    resolution/resize mode + the kept-subset size and seed (+ ``class_filter``: only those
    labels); files are written atomically.
    """
    from histaug_tf.data.manifest import load_manifest, split_info
    from histaug_tf.data.pipeline import make_dataset

    manifest = load_manifest(data_dir)
    info = split_info(manifest, split)
    class_filter = _class_filter(class_filter)
    n_total = int(info["num_examples"])
    if class_filter is not None:
        counts = info.get("class_counts") or []
        bad = [c for c in class_filter if not 0 <= c < len(counts)]
        if bad:
            raise UserError(f"{data_dir}: class {bad[0]} out of range (labels 0..{len(counts) - 1})")
        n_total = int(sum(counts[c] for c in class_filter))
    if n_total == 0:
        raise UserError(f"{data_dir}: split '{split}' has no images"
                        + (f" of classes {class_filter}" if class_filter is not None else ""))
    key = _stats_cache_key(manifest, split, extractor.identity, resolution, resize_mode, max_keep,
                           seed, class_filter)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    cache_file = os.path.join(cache_dir, f"{manifest['name']}-{split}-{key[:24]}.npz")
    if use_cache and os.path.isfile(cache_file):
        try:
            with np.load(cache_file) as z:
                return stats_lib.FeatureStats.from_arrays(z), {"cache_file": cache_file, "cached": True}
        except Exception as e:  # noqa: BLE001 — a bad cache file is recomputed
            logging.warning("ignoring unreadable statistics cache %s: %s", cache_file, e)

    if max_keep is not None and n_total > max_keep:
        keep_idx = np.zeros([n_total], bool)
        keep_idx[np.random.default_rng(seed).choice(n_total, int(max_keep), replace=False)] = True
    else:
        keep_idx = np.ones([n_total], bool)
    st = stats_lib.FeatureStats(capture_all=True)
    ds = make_dataset(data_dir, split, resolution=resolution, resize_mode=resize_mode,
                      pixel_range=(-1, 1), batch_size=batch_size, class_filter=class_filter)
    bar = Progress(n_total, label=f"features {os.path.basename(os.path.normpath(data_dir))}/{split}",
                   quiet=None if progress else True)
    pos = 0
    for images, labels in ds:
        images = images.numpy()
        labels = labels.numpy()
        k = images.shape[0]
        st.append(extractor(images), labels=labels, keep=keep_idx[pos:pos + k])
        pos += k
        bar.update(k)
    bar.close()
    if pos != n_total:
        raise UserError(f"{data_dir}: split '{split}' yielded {pos} images, manifest says {n_total}")
    if use_cache:
        try:
            save_npz_atomic(cache_file, **st.to_arrays())
        except OSError as e:
            logging.warning("could not write statistics cache %s: %s", cache_file, e)
    return st, {"cache_file": cache_file, "cached": False}


# ------------------------------------------------------------------------------------------------
# Generated statistics.
# ------------------------------------------------------------------------------------------------

def generator_feature_stats(synth, extractor, num: int, labels=None, *, seed_start: int = 0,
                            capture_all: bool = True, batch_size: int = 64,
                            progress: bool = False) -> stats_lib.FeatureStats:
    """Features of ``num`` images ``synth(seeds, labels)`` with seeds ``seed_start + i``."""
    from histaug_tf.gan.generate_lib import uint8_to_float

    st = stats_lib.FeatureStats(capture_all=capture_all)
    seeds = np.arange(seed_start, seed_start + num, dtype=np.int64)
    bar = Progress(num, label="features generated", quiet=None if progress else True)
    for i in range(0, num, batch_size):
        s = seeds[i:i + batch_size]
        lab = None if labels is None else labels[i:i + batch_size]
        images = uint8_to_float(synth(s, lab))
        st.append(extractor(images), labels=lab)
        bar.update(len(s))
    bar.close()
    return st


# ------------------------------------------------------------------------------------------------
# The entry point.
# ------------------------------------------------------------------------------------------------

def compute_metrics(metrics=("fid",), *, data_dir: str, G=None, gen_data_dir: str | None = None,
                    split: str = "train", gen_split: str = "train", num_gen: int | None = None,
                    truncation_psi: float = 1.0, truncation_cutoff=None, noise_mode: str = "random",
                    resolution: int | None = None, resize_mode: str = "crop", class_filter=None,
                    extractor=None, inception_weights=None, inception_seed: int = 0,
                    batch_size: int = 64, jit_compile: bool = False,
                    cache_dir: str | None = None, use_cache: bool = True, seed: int = 0,
                    per_class: bool = True, max_real_features: int | None = 50000,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3,
                    progress: bool = False, details: dict | None = None) -> dict:
    """Metrics of generated images against the real dataset ``data_dir/split``.

    The generated side is either ``G`` — a generator (conditional or not) or ``{class: G}`` with one
    network per class — producing ``num_gen`` images with seeds ``seed .. seed+num_gen-1``, or a
    dataset directory ``gen_data_dir`` (all of its ``gen_split``).

    metrics: any of 'fid', 'kid', 'pr' (list or comma string); a name may carry the number of
      generated images (``fid10k``), used when ``num_gen`` is None (default 50,000).
    resolution: the size real images are mapped to (``resize_mode``) before the extractor;
      default: the generator's resolution (or the generated dataset's image size).
    class_filter: only these labels of the real (and generated-dataset) images, e.g. for a GAN
      trained on one class; labels of a conditional G are then drawn among these classes.
    extractor: any callable ``images[-1,1] -> [N, D]`` with ``identity`` and ``dim`` attributes;
      default: ``InceptionFeatures(inception_weights)`` (None = seeded random weights, for tests).

    Returns a flat dict of floats: ``fid``, ``fid/<label>`` (labelled both sides, ``per_class``),
    ``kid``, ``precision``, ``recall``. ``details`` (a dict, if given) receives the counts, the
    extractor identity, cache use and timings.
    """
    from histaug_tf.data.manifest import load_manifest, split_info
    from histaug_tf.gan.generate_lib import Synthesizer
    from histaug_tf.metrics.inception import get_inception

    t0 = time.monotonic()
    wanted, spec_num = parse_metric_spec(metrics)
    if not wanted:
        return {}
    if (G is None) == (gen_data_dir is None):
        raise UserError("give exactly one of a network (--network) and a generated dataset (--gen_data)")
    num_gen = int(num_gen if num_gen is not None else (spec_num or 50000))
    class_filter = _class_filter(class_filter)
    need_rows = "kid" in wanted or "pr" in wanted
    real_manifest = load_manifest(data_dir)
    label_names = list(real_manifest["label_names"])
    real_info = split_info(real_manifest, split)

    # ---- check the generated side and settle the resolution before any heavy work ----
    synth = labels = None
    if G is not None:
        if num_gen < 2:
            raise UserError(f"--num_gen={num_gen}: must be >= 2")
        synth = Synthesizer(G=None if isinstance(G, dict) else G,
                            per_class=G if isinstance(G, dict) else None,
                            truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                            noise_mode=noise_mode, batch_size=batch_size, jit_compile=jit_compile)
        if resolution is None:
            resolution = synth.resolution
        classes = synth.classes
        if classes is not None:
            counts = np.asarray(real_info["class_counts"], np.float64)
            if len(counts) != len(label_names):
                raise UserError(f"{data_dir}: class_counts do not match label_names")
            if class_filter is not None:
                counts = np.where(np.isin(np.arange(len(counts)), class_filter), counts, 0)
            if not isinstance(G, dict) and len(classes) != len(label_names):
                raise UserError(f"the network is conditional with c_dim={len(classes)}, but "
                                f"{data_dir} has {len(label_names)} classes {label_names}")
            missing = [c for c in range(len(label_names)) if counts[c] > 0 and c not in classes]
            if missing:
                raise UserError(f"no network for class(es) {missing} of {data_dir} "
                                f"(per-class networks given for {classes})")
            if counts.sum() <= 0:
                raise UserError(f"{data_dir}: split '{split}' has no labelled images to match")
            labels = np.random.default_rng(seed).choice(len(counts), size=num_gen,
                                                        p=counts / counts.sum())
    elif resolution is None:
        resolution = int(load_manifest(gen_data_dir)["image_shape"][0])
    if extractor is None:
        extractor = get_inception(inception_weights, seed=inception_seed, batch_size=batch_size,
                                  jit_compile=jit_compile)

    real_stats, rinfo = dataset_feature_stats(
        data_dir, extractor, split, resolution=resolution, resize_mode=resize_mode,
        max_keep=max_real_features, seed=seed, batch_size=batch_size, cache_dir=cache_dir,
        use_cache=use_cache, progress=progress, class_filter=class_filter)
    t_real = time.monotonic()

    if synth is not None:
        gen_stats = generator_feature_stats(synth, extractor, num_gen, labels, seed_start=seed,
                                            capture_all=need_rows, batch_size=batch_size,
                                            progress=progress)
        gen_info = {"source": "network", "num": num_gen}
    else:
        gen_stats, ginfo = dataset_feature_stats(
            gen_data_dir, extractor, gen_split, resolution=resolution, resize_mode=resize_mode,
            max_keep=None, seed=seed, batch_size=batch_size, cache_dir=cache_dir,
            use_cache=use_cache, progress=progress, class_filter=class_filter)
        gen_info = {"source": "dataset", "num": gen_stats.count, **ginfo}
    t_gen = time.monotonic()

    out = {}
    if "fid" in wanted:
        out["fid"] = stats_lib.frechet_distance(*gen_stats.mean_cov(), *real_stats.mean_cov())
        if per_class:
            for c in gen_stats.labels():
                if c in real_stats.class_count and c >= 0 and gen_stats.class_count[c] >= 2 \
                        and real_stats.class_count[c] >= 2:
                    name = label_names[c] if c < len(label_names) else f"class{c}"
                    out[f"fid/{name}"] = stats_lib.frechet_distance(
                        *gen_stats.mean_cov(c), *real_stats.mean_cov(c))
    if need_rows:
        real_rows, gen_rows = real_stats.features(), gen_stats.features()
        if "kid" in wanted:
            out["kid"] = stats_lib.kernel_inception_distance(
                real_rows, gen_rows, num_subsets=kid_subsets, max_subset_size=kid_subset_size,
                seed=seed)
        if "pr" in wanted:
            p, r = stats_lib.precision_recall(real_rows, gen_rows, k=pr_k)
            out["precision"], out["recall"] = p, r
    t_end = time.monotonic()
    if details is not None:
        details.update({
            "extractor": extractor.identity,
            "resolution": resolution,
            "resize_mode": resize_mode,
            "num_real": real_stats.count,
            "num_real_kept": int(real_stats.features().shape[0]) if need_rows else None,
            "num_gen": gen_stats.count,
            "generated": gen_info,
            "real_cache": rinfo,
            "seconds_real_features": t_real - t0,
            "seconds_generated_features": t_gen - t_real,
            "seconds_total": t_end - t0,
        })
    return out


_warned_random = []


def training_metrics(metrics, G, data_dir, *, resolution=None,
                     resize_mode="crop", class_filter=None, num_gen=None,
                     inception_weights=None, batch_size=64, **kwargs) -> dict:
    """``compute_metrics`` for the trainer's ``--metrics`` at snapshots: the same definitions,
    with ``noise_mode='const'`` and seed 0 so successive snapshots are measured on the same latents.

    ``inception_weights``: as ``calc_metrics --inception_weights``; when None, the environment
    variable ``HISTAUG_INCEPTION_WEIGHTS``, else Keras' cached ImageNet file
    (``~/.keras/models/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``) if present
    (nothing is downloaded), else seeded random weights with a warning — such numbers track one
    run's progress but mean nothing across setups.
    """
    w = inception_weights or os.environ.get("HISTAUG_INCEPTION_WEIGHTS") or None
    if w is None:
        keras_file = os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"),
                                  "models", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
        if os.path.isfile(keras_file):
            w = keras_file
    if w == "random":
        w = None
    if w is None and not _warned_random:
        _warned_random.append(True)
        logging.warning("metrics: no Inception weights given (HISTAUG_INCEPTION_WEIGHTS or "
                        "inception_weights=); using seeded RANDOM weights: the values only "
                        "compare snapshots of this setup")
    kwargs.setdefault("noise_mode", "const")
    return compute_metrics(metrics, G=G, data_dir=data_dir, resolution=resolution,
                           resize_mode=resize_mode, class_filter=class_filter, num_gen=num_gen,
                           inception_weights=w, batch_size=batch_size, **kwargs)
