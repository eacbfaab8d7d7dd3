"""FID, KID and precision/recall of a generator (or a generated dataset) against a real dataset,
as NVlabs StyleGAN2-ADA computes them (metrics/*.py), with cached real statistics.

The entry point for the trainer and ``calc_metrics`` is ``compute_metrics(...) -> dict``.

Metric names follow NVlabs: ``fid50k_full``, ``kid50k_full``, ``pr50k3_full``, ``fid50k``,
``kid50k``, ``pr50k3`` (also ``fid``/``kid``/``pr`` = 50k, and any count: ``fid2k``, ``pr500``).
The number is the count of generated images; ``pr..k3`` is the neighbourhood size; real images used
(a seeded random subset when the dataset is larger): ``fid..k_full`` all, ``kid..k_full`` up to
1,000,000, ``pr..k_full`` up to 200,000, without ``_full`` as many as generated images (NVlabs
``max_real``).

Features: FID and KID use the FID Inception (``inception.py``, 2048-d pool3); precision/recall use
VGG16 fc2 (``vgg.py``, 4096-d), as NVlabs; ``pr..._inc`` asks for precision/recall on the Inception
features instead. Each value is reported under its metric name; an extractor that is not the
literature's adds a suffix (``_random``: random Inception weights, ``_kerasinc``: Keras' ImageNet
InceptionV3), so such numbers are never mistaken for comparable ones. Precision/recall report
``<name>_precision`` and ``<name>_recall``.

Per-class FID (``<name>/<label name>``): generated images of class k against real images of
class k, from the same pass (generated labels are drawn from the real class frequencies, as NVlabs
draws them from the dataset). With few images per class it is biased upwards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time

import numpy as np

from histaug_tf.common import Progress, UserError, save_npz_atomic, user_cache_dir
from histaug_tf.metrics import stats as stats_lib

KNOWN_METRICS = ("fid", "kid", "pr")
CACHE_FORMAT = 3
DEFAULT_NUM_GEN = 50000
FULL_MAX_REAL = {"fid": None, "kid": 1000000, "pr": 200000}  # NVlabs metric_main.py
_NAME_RE = re.compile(r"(fid|kid|pr)(?:(\d+)(?:(k)(\d+)?)?)?(_full)?(_inc)?")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str             # as asked, lower case, e.g. 'fid50k_full'
    kind: str             # 'fid' | 'kid' | 'pr'
    num_gen: int | None   # generated images from the name (None: not in the name)
    full: bool
    nhood: int = 3        # precision/recall k
    inception_pr: bool = False

    @property
    def family(self) -> str:
        """Which extractor: 'inception' or 'vgg16'."""
        return "vgg16" if self.kind == "pr" and not self.inception_pr else "inception"

    def max_real(self, num_gen: int):
        """Real images this metric uses at most (None: all), as NVlabs' ``max_real``."""
        return FULL_MAX_REAL[self.kind] if self.full else num_gen


def default_cache_dir() -> str:
    """``$HISTAUG_CACHE/stats``, else ``$XDG_CACHE_HOME/histaug_tf/stats``, else ``~/.cache/...``."""
    root = os.environ.get("HISTAUG_CACHE")
    return os.path.join(root, "stats") if root else user_cache_dir("stats")


def parse_metric_spec(metrics) -> list[MetricSpec]:
    """``'fid50k_full,pr50k3_full'`` or a list of names -> ``[MetricSpec, ...]`` (duplicates dropped)."""
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    out = []
    for m in metrics:
        m = m.strip().lower()
        if not m or m == "none":
            continue
        g = _NAME_RE.fullmatch(m)
        if not g or (g.group(4) and g.group(1) != "pr") or (g.group(6) and g.group(1) != "pr"):
            raise UserError(f"--metrics: unknown metric {m!r} (known: fid50k_full, kid50k_full, "
                            "pr50k3_full, pr50k3_inc, fid50k, ...; fid/kid/pr with any count, "
                            "e.g. fid10k)")
        num = int(g.group(2)) * (1000 if g.group(3) else 1) if g.group(2) else None
        spec = MetricSpec(m, g.group(1), num, bool(g.group(5)),
                          int(g.group(4)) if g.group(4) else 3, bool(g.group(6)))
        if spec.nhood < 1:
            raise UserError(f"--metrics: {m}: the neighbourhood size must be >= 1")
        if spec.name not in [s.name for s in out]:
            out.append(spec)
    return out


def parse_metrics(metrics) -> list[str]:
    return [s.name for s in parse_metric_spec(metrics)]


def _shared_num_gen(specs) -> int:
    """The one number of generated images of ``specs`` (default 50,000); refuses different ones."""
    nums = {s.num_gen for s in specs if s.num_gen is not None}
    if len(nums) > 1:
        raise UserError(f"--metrics: {', '.join(s.name for s in specs)} ask for different "
                        "numbers of generated images; compute them in separate calls")
    return nums.pop() if nums else DEFAULT_NUM_GEN


def check_metric_options(metrics, inception_weights=None, vgg16_weights=None) -> dict:
    """Refuse, before any work, metrics without the weights they need. Returns the resolved
    ``{'inception_weights': ..., 'vgg16_weights': ...}`` (absolute paths; None when not needed)."""
    from histaug_tf.metrics.inception import resolve_weights

    specs = parse_metric_spec(metrics)
    _shared_num_gen(specs)
    out = {"inception_weights": None, "vgg16_weights": None}
    if any(s.family == "inception" for s in specs):
        out["inception_weights"] = resolve_weights(inception_weights)
    vgg = [s.name for s in specs if s.family == "vgg16"]
    if vgg:
        from histaug_tf.metrics.vgg import resolve_vgg16_weights

        out["vgg16_weights"] = resolve_vgg16_weights(vgg16_weights, vgg[0])
    return out


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

def generator_feature_stats(synth, extractors: dict, seeds, labels=None, *,
                            capture_all=True, batch_size: int = 64,
                            progress: bool = False) -> dict:
    """Features of the images ``synth(seeds, labels)`` through every extractor of
    ``{family: extractor}`` (one generation pass) -> ``{family: FeatureStats}``.
    ``capture_all``: bool, or ``{family: bool}``."""
    from histaug_tf.data.images import uint8_to_float

    if not isinstance(capture_all, dict):
        capture_all = {f: capture_all for f in extractors}
    out = {f: stats_lib.FeatureStats(capture_all=capture_all[f]) for f in extractors}
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    num = seeds.shape[0]
    bar = Progress(num, label="features generated", quiet=None if progress else True)
    for i in range(0, num, batch_size):
        s = seeds[i:i + batch_size]
        lab = None if labels is None else labels[i:i + batch_size]
        images = uint8_to_float(synth(s, lab))
        for f, ext in extractors.items():
            out[f].append(ext(images), labels=lab)
        bar.update(len(s))
    bar.close()
    return out


def _subset_stats(st: stats_lib.FeatureStats, max_rows, seed: int) -> stats_lib.FeatureStats:
    """A FeatureStats of (a seeded random ``max_rows`` of) the kept rows of ``st``; ``st`` itself
    when it kept every row and ``max_rows`` does not cut."""
    rows = st.features()
    if max_rows is None or rows.shape[0] <= max_rows:
        if rows.shape[0] == st.count:
            return st
        idx = np.arange(rows.shape[0])
    else:
        idx = np.sort(np.random.default_rng(seed).choice(rows.shape[0], int(max_rows),
                                                         replace=False))
    sub = stats_lib.FeatureStats(capture_all=True)
    sub.append(rows[idx], labels=st.row_labels()[idx])
    return sub


# ------------------------------------------------------------------------------------------------
# The entry point.
# ------------------------------------------------------------------------------------------------

def compute_metrics(metrics=("fid",), *, data_dir: str, generator=None,
                    gen_data_dir: str | None = None,
                    split: str = "train", gen_split: str = "train", num_gen: int | None = None,
                    resolution: int | None = None, resize_mode: str = "crop", class_filter=None,
                    extractor=None, pr_extractor=None, inception_weights=None,
                    vgg16_weights=None, inception_seed: int = 0, inception_resolution: int = 299,
                    batch_size: int = 64, jit_compile: bool = False,
                    cache_dir: str | None = None, use_cache: bool = True, seed: int = 0,
                    gen_seed: int | None = None, per_class: bool = True,
                    max_real_features: int | None = None,
                    kid_subsets: int = 100, kid_subset_size: int = 1000,
                    progress: bool = False, details: dict | None = None) -> dict:
    """Metrics of generated images against the real dataset ``data_dir/split``.

    The generated side is either ``generator`` producing ``num_gen`` images, or a dataset directory
    ``gen_data_dir`` (all of its ``gen_split``). ``generator`` is a callable
    ``generator(seeds, labels) -> uint8 [N, H, W, C]`` with the attributes ``resolution``,
    ``classes`` (None when it takes no labels, else the class indices it can draw) and
    ``per_class`` (None for one network for all classes) — e.g. ``apps.generate.Synthesizer``,
    built by the caller with the truncation and noise mode it wants. The metrics know nothing of
    GANs.

    metrics: names as in the module docstring (list or comma string). All metrics of one call
      share the number of generated images: ``num_gen``, else the names' (default 50,000).
    seeds: generated image i has latent seed ``seed + i`` and labels ~ ``default_rng(seed)``; with
      ``gen_seed`` (the trainer's per-snapshot seed) the latent seeds are
      ``default_rng(gen_seed).integers(0, 2**31, num_gen)`` and the labels the next draw of that
      generator. ``seed`` also picks the real subsets (so the real statistics stay cached).
    resolution: the size real images are mapped to (``resize_mode``) before the extractor;
      default: the generator's resolution (or the generated dataset's image size).
    class_filter: only these labels of the real (and generated-dataset) images, e.g. for a GAN
      trained on one class; labels of a conditional generator are then drawn among these classes.
    extractor / pr_extractor: callables ``images[-1,1] -> [N, D]`` with ``identity`` and ``dim``
      (and optionally ``name_suffix``) for the Inception / VGG16 features; default: built from
      ``inception_weights`` / ``vgg16_weights`` (refused when missing).
    max_real_features: overrides the real-image cap of KID and precision/recall.

    Returns a flat dict of floats keyed by metric name (+ extractor suffix): ``fid50k_full``,
    ``fid50k_full/<label>`` (labelled both sides, ``per_class``), ``kid50k_full``,
    ``pr50k3_full_precision``, ``pr50k3_full_recall``. ``details`` (a dict, if given) receives the
    counts, the extractor identities, cache use and timings.
    """
    from histaug_tf.data.manifest import load_manifest, split_info

    t0 = time.monotonic()
    specs = parse_metric_spec(metrics)
    if not specs:
        return {}
    if (generator is None) == (gen_data_dir is None):
        raise UserError("give exactly one of a network (--network) and a generated dataset (--gen_data)")
    num_gen = int(num_gen if num_gen is not None else _shared_num_gen(specs))
    class_filter = _class_filter(class_filter)
    families = sorted({s.family for s in specs})
    real_manifest = load_manifest(data_dir)
    label_names = list(real_manifest["label_names"])
    real_info = split_info(real_manifest, split)

    # ---- check the options and the generated side before any heavy work ----
    need = {"inception_weights": None, "vgg16_weights": None}
    if ("inception" in families and extractor is None) or ("vgg16" in families and pr_extractor is None):
        need = check_metric_options([s.name for s in specs if
                                     (s.family == "inception" and extractor is None)
                                     or (s.family == "vgg16" and pr_extractor is None)],
                                    inception_weights, vgg16_weights)
    synth = labels = None
    if generator is not None:
        if num_gen < 2:
            raise UserError(f"--num_gen={num_gen}: must be >= 2")
        synth = generator
        if resolution is None:
            resolution = synth.resolution
        if gen_seed is None:
            gen_seeds = np.arange(seed, seed + num_gen, dtype=np.int64)
            label_rng = np.random.default_rng(seed)
        else:
            label_rng = np.random.default_rng(int(gen_seed))
            gen_seeds = label_rng.integers(0, 2 ** 31, size=num_gen, dtype=np.int64)
        classes = synth.classes
        if classes is not None:
            counts = np.asarray(real_info["class_counts"], np.float64)
            if len(counts) != len(label_names):
                raise UserError(f"{data_dir}: class_counts do not match label_names")
            if class_filter is not None:
                counts = np.where(np.isin(np.arange(len(counts)), class_filter), counts, 0)
            if synth.per_class is None and len(classes) != len(label_names):
                raise UserError(f"the network is conditional with c_dim={len(classes)}, but "
                                f"{data_dir} has {len(label_names)} classes {label_names}")
            missing = [c for c in range(len(label_names)) if counts[c] > 0 and c not in classes]
            if missing:
                raise UserError(f"no network for class(es) {missing} of {data_dir} "
                                f"(per-class networks given for {classes})")
            if counts.sum() <= 0:
                raise UserError(f"{data_dir}: split '{split}' has no labelled images to match")
            labels = label_rng.choice(len(counts), size=num_gen, p=counts / counts.sum())
    else:
        gen_manifest = load_manifest(gen_data_dir)
        if resolution is None:
            resolution = int(gen_manifest["image_shape"][0])
        ginfo_m = split_info(gen_manifest, gen_split)
        num_gen = int(ginfo_m["num_examples"]) if class_filter is None else int(
            sum((ginfo_m.get("class_counts") or [])[c] for c in class_filter
                if c < len(ginfo_m.get("class_counts") or [])))
    extractors = {}
    if "inception" in families:
        if extractor is None:
            from histaug_tf.metrics.inception import get_inception

            extractor = get_inception(need["inception_weights"], seed=inception_seed,
                                      resolution=inception_resolution, batch_size=batch_size,
                                      jit_compile=jit_compile)
        extractors["inception"] = extractor
    if "vgg16" in families:
        if pr_extractor is None:
            from histaug_tf.metrics.vgg import get_vgg16

            pr_extractor = get_vgg16(need["vgg16_weights"], batch_size=batch_size,
                                     jit_compile=jit_compile)
        extractors["vgg16"] = pr_extractor

    # ---- real statistics, per extractor: all images' moments + the rows the metrics need ----
    n_real_total = int(real_info["num_examples"]) if class_filter is None else int(
        sum((real_info.get("class_counts") or [])[c] for c in class_filter
            if c < len(real_info.get("class_counts") or [])))

    def real_cap(spec):
        cap = spec.max_real(num_gen)
        if spec.kind != "fid" and max_real_features is not None:
            cap = int(max_real_features)
        return None if cap is None or cap >= n_real_total else int(cap)

    real_stats, rinfo, keep = {}, {}, {}
    for fam in families:
        fam_specs = [s for s in specs if s.family == fam]
        rows_needed = [s for s in fam_specs if s.kind != "fid" or real_cap(s) is not None]
        if not rows_needed:
            keep[fam] = 0
        else:
            caps = [real_cap(s) for s in rows_needed]
            keep[fam] = None if any(c is None for c in caps) else max(caps)
        real_stats[fam], rinfo[fam] = dataset_feature_stats(
            data_dir, extractors[fam], split, resolution=resolution, resize_mode=resize_mode,
            max_keep=keep[fam], seed=seed, batch_size=batch_size, cache_dir=cache_dir,
            use_cache=use_cache, progress=progress, class_filter=class_filter)
    t_real = time.monotonic()

    gen_rows = {fam: any(s.kind != "fid" for s in specs if s.family == fam) for fam in families}
    if synth is not None:
        gen_stats = generator_feature_stats(synth, extractors, gen_seeds, labels,
                                            capture_all=gen_rows, batch_size=batch_size,
                                            progress=progress)
        gen_info = {"source": "network", "num": num_gen}
    else:
        gen_stats, gen_info = {}, {"source": "dataset", "num": num_gen}
        for fam in families:
            gen_stats[fam], gi = dataset_feature_stats(
                gen_data_dir, extractors[fam], gen_split, resolution=resolution,
                resize_mode=resize_mode, max_keep=None if gen_rows[fam] else 0, seed=seed,
                batch_size=batch_size, cache_dir=cache_dir, use_cache=use_cache,
                progress=progress, class_filter=class_filter)
            gen_info[f"cache_{fam}"] = gi
    t_gen = time.monotonic()

    out, num_real_used = {}, {}
    for spec in specs:
        fam = spec.family
        suffix = getattr(extractors[fam], "name_suffix", "")
        if spec.kind == "pr" and spec.family == "inception":
            suffix = suffix if spec.name.endswith("_inc") else "_inc" + suffix
        key = spec.name + suffix
        cap = real_cap(spec)
        real = real_stats[fam] if spec.kind == "fid" and cap is None else \
            _subset_stats(real_stats[fam], cap, seed)
        gen = gen_stats[fam]
        num_real_used[key] = real.count if spec.kind == "fid" else int(real.features().shape[0])
        if spec.kind == "fid":
            out[key] = stats_lib.frechet_distance(*gen.mean_cov(), *real.mean_cov())
            if per_class:
                for c in gen.labels():
                    if c in real.class_count and c >= 0 and gen.class_count[c] >= 2 \
                            and real.class_count[c] >= 2:
                        name = label_names[c] if c < len(label_names) else f"class{c}"
                        out[f"{key}/{name}"] = stats_lib.frechet_distance(
                            *gen.mean_cov(c), *real.mean_cov(c))
        elif spec.kind == "kid":
            out[key] = stats_lib.kernel_inception_distance(
                real.features(), gen.features(), num_subsets=kid_subsets,
                max_subset_size=kid_subset_size, seed=seed)
        else:
            p, r = stats_lib.precision_recall(real.features(), gen.features(), k=spec.nhood)
            out[f"{key}_precision"], out[f"{key}_recall"] = p, r
    t_end = time.monotonic()
    if details is not None:
        details.update({
            "extractor": extractors[families[0]].identity if len(families) == 1 else None,
            "extractors": {f: e.identity for f, e in extractors.items()},
            "resolution": resolution,
            "resize_mode": resize_mode,
            "num_real": real_stats[families[0]].count,
            "num_real_used": num_real_used,
            "num_gen": gen_stats[families[0]].count,
            "generated": gen_info,
            "real_cache": rinfo[families[0]] if len(families) == 1 else rinfo,
            "seconds_real_features": t_real - t0,
            "seconds_generated_features": t_gen - t_real,
            "seconds_total": t_end - t0,
        })
    return out


def snapshot_seed(kimg: float) -> int:
    """The generator seed of the training metrics at ``kimg``: the image count, so a rerun of the
    same run draws the same latents and labels at the same snapshot."""
    return int(round(float(kimg) * 1000))


def training_metrics(metrics, generator, data_dir, *, kimg: float = 0.0, resolution=None,
                     resize_mode="crop", class_filter=None, num_gen=None,
                     inception_weights=None, vgg16_weights=None, batch_size=64,
                     **kwargs) -> dict:
    """``compute_metrics`` for the trainer's ``--metrics`` at snapshots, generating as NVlabs does:
    new random latents (and labels) at every snapshot — drawn from ``gen_seed =
    snapshot_seed(kimg)`` so reruns agree — through ``generator``, which the trainer builds with
    random per-layer noise. The weights are the trainer's ``--inception_weights`` /
    ``--vgg16_weights``; without them the metrics are refused (``train_gan`` checks this before
    training starts)."""
    kwargs.setdefault("gen_seed", snapshot_seed(kimg))
    return compute_metrics(metrics, generator=generator, data_dir=data_dir, resolution=resolution,
                           resize_mode=resize_mode, class_filter=class_filter, num_gen=num_gen,
                           inception_weights=inception_weights, vgg16_weights=vgg16_weights,
                           batch_size=batch_size, **kwargs)
