"""Images from generators by seed: the library behind ``python -m histaug_tf.generate`` and the
generator side of the metrics.

Conventions (as NVlabs ``generate.py``):
  * the latent of seed ``s`` is ``np.random.RandomState(s).randn(z_dim)``, so an image depends
    on its seed (and class), never on the batch it was generated in (with ``noise_mode`` 'const'
    or 'none'; 'random' noise is drawn by TensorFlow and is not reproducible);
  * pixels are converted to uint8 as ``clip(floor(x * 127.5 + 128), 0, 255)``.

A ``Synthesizer`` wraps either one conditional (or unconditional) generator or one generator per
class (``{class_index: G}``, each unconditional or conditional).
"""
from __future__ import annotations

import os
import re

import numpy as np

from histaug_tf.common import UserError, file_sha256, save_png
from histaug_tf.data.images import image_grid, to_uint8
from histaug_tf.ops.upfirdn2d import xla_function

NOISE_MODES = ("const", "random", "none")


def z_from_seeds(seeds, z_dim: int) -> np.ndarray:
    """[N, z_dim] float32 latents, one ``RandomState(seed).randn`` draw per seed."""
    if len(seeds) == 0:
        return np.zeros([0, z_dim], np.float32)
    return np.stack([np.random.RandomState(int(s) % (1 << 32)).randn(z_dim) for s in seeds]
                    ).astype(np.float32)


class Synthesizer:
    """``synth(seeds, labels) -> uint8 [N, H, W, C]``.

    Args:
      G: one generator (``c_dim`` > 0: conditional; labels select the class).
      per_class: alternatively ``{class_index: G}``; class ``k`` images come from ``per_class[k]``
        (with ``c = one_hot(k)`` when that network is itself conditional).
      truncation_psi, truncation_cutoff, noise_mode: passed to ``G(z, c, ...)``.
      batch_size: images per call; the last batch is padded so the function is traced once.
      jit_compile: compile the generator call with XLA.
    """

    def __init__(self, G=None, per_class=None, truncation_psi: float = 1.0,
                 truncation_cutoff=None, noise_mode: str = "const", batch_size: int = 32,
                 jit_compile: bool = False):
        import tensorflow as tf

        if (G is None) == (per_class is None):
            raise ValueError("give exactly one of G and per_class")
        if noise_mode not in NOISE_MODES:
            raise UserError(f"--noise_mode={noise_mode}: expected one of {NOISE_MODES}")
        if int(batch_size) < 1:
            raise UserError(f"--batch={batch_size}: must be >= 1")
        self.batch_size = int(batch_size)
        self.per_class = dict(per_class) if per_class is not None else None
        nets = list(self.per_class.values()) if self.per_class is not None else [G]
        self.G = G
        res = {(int(n.img_resolution), int(n.img_channels)) for n in nets}
        if len(res) != 1:
            raise UserError("the per-class networks differ in resolution/channels: "
                            f"{sorted(res)}")
        (self.resolution, self.channels), = res
        self.conditional = G is not None and int(G.c_dim) > 0
        kwargs = dict(truncation_psi=float(truncation_psi), truncation_cutoff=truncation_cutoff,
                      noise_mode=noise_mode)

        def make_fn(net):
            def run(z, c):
                img = net(z, c, **kwargs)
                return tf.cast(img, tf.float32)
            if jit_compile:
                return xla_function(run, reduce_retracing=True)
            return tf.function(run, reduce_retracing=True)

        self._fns = {id(n): make_fn(n) for n in nets}

    @property
    def classes(self):
        """The class indices this synthesizer can make (None: unlabelled)."""
        if self.per_class is not None:
            return sorted(self.per_class)
        if self.conditional:
            return list(range(int(self.G.c_dim)))
        return None

    def _run(self, net, seeds, label):
        b = self.batch_size
        out = []
        for i in range(0, len(seeds), b):
            s = seeds[i:i + b]
            k = len(s)
            z = z_from_seeds(s, int(net.z_dim))
            if k < b:
                z = np.concatenate([z, np.zeros([b - k, z.shape[1]], np.float32)], 0)
            c = np.zeros([b, int(net.c_dim)], np.float32)
            if int(net.c_dim) > 0:
                if label is None or not 0 <= label < int(net.c_dim):
                    raise UserError(f"class {label} out of range for a conditional network "
                                    f"with c_dim={int(net.c_dim)}")
                c[:, label] = 1
            img = np.asarray(self._fns[id(net)](z, c))[:k]
            out.append(to_uint8(img))
        if not out:
            return np.zeros([0, self.resolution, self.resolution, self.channels], np.uint8)
        return np.concatenate(out, 0)

    def __call__(self, seeds, labels=None) -> np.ndarray:
        seeds = np.asarray(seeds, np.int64).reshape(-1)
        if labels is None:
            if self.per_class is not None or self.conditional:
                raise ValueError("labels are needed for a labelled synthesizer")
            return self._run(self.G, seeds, None)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if labels.shape != seeds.shape:
            raise ValueError("seeds and labels differ in length")
        out = np.zeros([len(seeds), self.resolution, self.resolution, self.channels], np.uint8)
        for c in np.unique(labels):
            c = int(c)
            idx = np.nonzero(labels == c)[0]
            if self.per_class is not None:
                if c not in self.per_class:
                    raise UserError(f"no network for class {c} (have {sorted(self.per_class)})")
                net = self.per_class[c]
            else:
                net = self.G
            out[idx] = self._run(net, seeds[idx], c)
        return out


# ------------------------------------------------------------------------------------------------
# Loading networks.
# ------------------------------------------------------------------------------------------------

def resolve_snapshot(path: str) -> str:
    """A ``.keras`` snapshot path, or a run directory meaning its latest snapshot."""
    if not path:
        raise UserError("--network: empty path")
    if os.path.isdir(path):
        from histaug_tf.gan import snapshot

        p = snapshot.latest_snapshot(path)  # a glob: None when there is none
        if not p:
            raise UserError(f"{path}: no network-snapshot-*.keras in run directory")
        return p
    if not os.path.isfile(path):
        raise UserError(f"{path}: network snapshot not found")
    return path


def load_generator(path: str):
    """(G_ema, metadata, snapshot_path) of a snapshot file or run directory."""
    p = resolve_snapshot(path)
    from histaug_tf.gan import snapshot

    snap = snapshot.load_snapshot(p)  # UserError for a file that is not a loadable snapshot
    return snap["G_ema"], snap["metadata"], p


def parse_networks_map(spec: str) -> dict[int, str]:
    """``'0:PATH,1:PATH'`` → {0: PATH, 1: PATH}."""
    out = {}
    for item in [s for s in spec.split(",") if s.strip()]:
        m = re.fullmatch(r"\s*(\d+)\s*:(.+)", item)
        if not m:
            raise UserError(f"--networks={spec}: expected CLASS:PATH[,CLASS:PATH...], got {item!r}")
        c = int(m.group(1))
        if c in out:
            raise UserError(f"--networks={spec}: class {c} given twice")
        out[c] = m.group(2).strip()
    if not out:
        raise UserError("--networks: empty")
    return out


def label_names_from_metadata(meta: dict):
    """Label names recorded in a snapshot's metadata, if any."""
    # top level (tests, hand-written metadata) or the trainer's training_options (the typed
    # config's data section; flat in versions before it)
    opts = meta.get("training_options") or {}
    data = opts.get("data") if isinstance(opts.get("data"), dict) else {}
    for names in (meta.get("label_names"), data.get("label_names"), opts.get("label_names")):
        if isinstance(names, (list, tuple)):
            return [str(x) for x in names]
    return None


# ------------------------------------------------------------------------------------------------
# Filtering by a classifier of the real data.
# ------------------------------------------------------------------------------------------------

# The words of the filter's refusal (the study recognises a refused set by them in generate's error).
FILTER_REFUSED = "the classifier agreed with only"


class ClassifierFilter:
    """Keep a synthetic patch of class k when a real-data classifier agrees: it gives class k a
    probability of at least ``min_confidence`` (binary classifiers: P(class 1) = sigmoid(logit)),
    or, with ``min_confidence='val'``, its decision at the balanced threshold it chose on its
    validation split (Youden's J; ``metrics.json``: ``operating_points.val_youden``) is class k."""

    def __init__(self, run_dir, image_shape, label_names, min_confidence, max_draws, min_kept):
        from histaug_tf.classifier.train import load_trained, read_metrics
        from histaug_tf.data.manifest import check_same_labels, load_manifest

        self.val_threshold = None
        if str(min_confidence).strip().lower() == "val":
            m = read_metrics(run_dir) if os.path.isdir(run_dir) else None
            t = (((m or {}).get("operating_points") or {}).get("val_youden") or {}).get("threshold")
            if t is None:
                raise UserError(f"{run_dir}: --min_confidence=val needs the run's "
                                "validation-chosen threshold (metrics.json: "
                                "operating_points.val_youden; runs before it: train again)")
            self.val_threshold = float(t)
            min_confidence = 0.5
        try:
            min_confidence = float(min_confidence)
        except ValueError:
            raise UserError(f"--min_confidence={min_confidence}: a probability or 'val'") from None
        if not 0.0 <= min_confidence <= 1.0:
            raise UserError(f"--min_confidence={min_confidence}: must be within [0, 1]")
        if float(max_draws) < 1.0:
            raise UserError(f"--filter_max_draws={max_draws}: must be >= 1")
        if not 0.0 <= float(min_kept) <= 1.0:
            raise UserError(f"--filter_min_kept={min_kept}: must be within [0, 1]")
        if len(label_names) != 2:
            raise UserError(f"--filter_classifier: needs a two-class network, got labels "
                            f"{list(label_names)}")
        self.model, opts = load_trained(run_dir)
        want = tuple(int(v) for v in opts["image_shape"])
        if want != tuple(image_shape):
            raise UserError(f"{run_dir}: the classifier takes {want[0]}x{want[1]}x{want[2]} images, "
                            f"the generator makes {image_shape[0]}x{image_shape[1]}x"
                            f"{image_shape[2]}")
        train = opts.get("train_data")
        if train and os.path.isfile(os.path.join(train, "manifest.json")):
            check_same_labels(load_manifest(train, check="exists")["label_names"], label_names,
                              f"{train}/manifest.json (the filter classifier's training labels)",
                              "the generator's label names")
        self.label_names = list(label_names)
        self.min_confidence = float(min_confidence)
        self.max_draws = float(max_draws)
        self.min_kept = float(min_kept)
        self.rule = (f"P(class) >= {self.min_confidence:g}" if self.val_threshold is None else
                     f"its decision at its validation (Youden) threshold P(positive) >= "
                     f"{self.val_threshold:.4g}")
        self.record = {"classifier": os.path.abspath(run_dir),
                       "min_confidence": "val" if self.val_threshold is not None
                       else self.min_confidence,
                       "val_threshold": self.val_threshold, "rule": self.rule,
                       "max_draws_per_class": self.max_draws, "min_kept_fraction": self.min_kept,
                       "per_class": {}}
        import tensorflow as tf
        self._logits = tf.function(lambda x: tf.cast(self.model(x, training=False), tf.float32),
                                   reduce_retracing=True)

    def confidence(self, images: np.ndarray, label: int) -> np.ndarray:
        """The classifier's probability of ``label`` for uint8 images [N, H, W, C]."""
        x = images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)  # as the pipeline
        p1 = 1.0 / (1.0 + np.exp(-np.asarray(self._logits(x), np.float64)[:, 0]))
        return p1 if label == 1 else 1.0 - p1

    def keep(self, images: np.ndarray, label: int) -> np.ndarray:
        """Whether the classifier agrees that each image is of class ``label``."""
        if self.val_threshold is None:
            return self.confidence(images, label) >= self.min_confidence
        p1 = self.confidence(images, 1)
        return p1 >= self.val_threshold if label == 1 else p1 < self.val_threshold

    def run_class(self, synth, c, num, seed, add, bar, grid=None, grid_size=0) -> None:
        """Draw class ``c`` from ``seed`` on until ``num`` patches are kept or the draw limit is
        hit; ``add(seed, image)`` each kept one. Records the counts; UserError below the floor."""
        import math
        limit = int(math.ceil(self.max_draws * num))
        kept = drawn = 0
        nxt = int(seed)
        while kept < num and drawn < limit:
            k = min(synth.batch_size, limit - drawn)
            seeds = np.arange(nxt, nxt + k, dtype=np.int64)
            images = synth(seeds, np.full(seeds.shape, c))
            ok = self.keep(images, c)
            before = kept
            for i in range(k):  # in seed order, stopping where the quota fills
                drawn += 1
                if ok[i]:
                    add(seeds[i], images[i])
                    kept += 1
                    if grid is not None and len(grid) < grid_size:
                        grid.append(images[i])
                    if kept == num:
                        break
            nxt += k
            bar.update(kept - before)
        name = self.label_names[c]
        self.record["per_class"][name] = {"drawn": drawn, "kept": kept, "refused": drawn - kept,
                                          "kept_fraction_of_drawn": kept / max(drawn, 1),
                                          "seeds": [int(seed), int(seed) + drawn - 1]}
        if kept < self.min_kept * num:
            raise UserError(
                f"{self.record['classifier']}: {FILTER_REFUSED} {kept} of {drawn} "
                f"synthetic '{name}' patches ({self.rule}), fewer "
                f"than --filter_min_kept={self.min_kept:g} x {num}: the GAN's '{name}' images do "
                f"not look like that class; no dataset written")


# ------------------------------------------------------------------------------------------------
# Writing a synthetic dataset.
# ------------------------------------------------------------------------------------------------

def _run_name(snapshot_path: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(snapshot_path))) or "run"


def generate_dataset(outdir: str, *, network: str | None = None, networks: str | dict | None = None,
                     num_per_class: int = 1000, classes=None, truncation_psi: float = 1.0,
                     truncation_cutoff=None, noise_mode: str = "const", seed: int = 0,
                     batch_size: int = 32, grid: bool = False, grid_size: int = 64,
                     label_names=None, name: str | None = None, run_name: str | None = None,
                     encoding: str = "png", shard_size: int = 4096, overwrite: bool = False,
                     jit_compile: bool = False, flags: dict | None = None,
                     progress: bool = True, filter_classifier: str | None = None,
                     min_confidence="0.5", filter_max_draws: float = 4.0,
                     filter_min_kept: float = 0.5) -> dict:
    """Generate ``num_per_class`` images for each class and write them as a dataset (train split).

    Class k uses seeds ``seed .. seed + num_per_class - 1``; each example has ``label`` k,
    ``source`` 'synthetic', ``group`` the run name and ``key`` ``synthetic/<run>/<label name>/<seed>``.
    Every input is checked before anything is written.

    With ``filter_classifier`` (a finished ``train_classifier`` run, e.g. trained on the GAN's own
    real subset) a patch of class k is kept only when that classifier gives class k a probability
    of at least ``min_confidence`` (or, ``'val'``, classifies it as class k at the balanced
    threshold it chose on its validation split); class k draws seeds ``seed, seed + 1, ...`` until it has
    ``num_per_class`` patches or has drawn ``filter_max_draws · num_per_class``. A class that keeps
    fewer than ``filter_min_kept · num_per_class`` is refused (UserError, no dataset written: the
    GAN's images of that class do not look like it to a classifier of the real data); otherwise
    the manifest's ``provenance.filter`` records per class the patches drawn, kept and refused. Returns ``{'manifest', 'images_per_second',
    'grids'}``; with ``grid``, ``grid-<label name>.png`` (the first ``grid_size`` images of each
    class) are written into ``outdir`` after the manifest.
    """
    from histaug_tf.common import Progress
    from histaug_tf.data.manifest import check_same_labels
    from histaug_tf.data.writer import DatasetWriter

    # ---- check everything first (no output on bad input) ----
    if (network is None) == (networks is None):
        raise UserError("give exactly one of --network (a conditional network) and "
                        "--networks=0:PATH,1:PATH (one network per class)")
    if int(num_per_class) <= 0:
        raise UserError(f"--num_per_class={num_per_class}: must be > 0")
    num_per_class = int(num_per_class)
    if not overwrite and os.path.isdir(outdir) and os.listdir(outdir):  # fail before loading
        raise UserError(f"{outdir}: output directory exists and is not empty; "
                        "pass --overwrite to replace it")
    snapshots = {}
    if network is not None:
        G, meta, path = load_generator(network)
        if int(G.c_dim) == 0:
            raise UserError(f"{path}: the network is unconditional (c_dim=0); give one network "
                            "per class with --networks=0:PATH,1:PATH")
        num_classes = int(G.c_dim)
        recorded = label_names_from_metadata(meta)
        if label_names and recorded is not None:  # the GAN's own labels win over a typo
            check_same_labels(recorded, label_names, f"{path} (the GAN's training labels)",
                              "--label_names")
        label_names = list(label_names) if label_names else recorded
        if label_names is None:
            label_names = ["normal", "tumour"] if num_classes == 2 else \
                [f"class{i}" for i in range(num_classes)]
        if len(label_names) != num_classes:
            raise UserError(f"{path}: the network has c_dim={num_classes} classes but "
                            f"{len(label_names)} label names {label_names} were given")
        snapshots["all"] = path
        synth_kwargs = dict(G=G)
        default_run = _run_name(path)
    else:
        spec = parse_networks_map(networks) if isinstance(networks, str) else dict(networks)
        loaded, metas = {}, {}
        for c, p in sorted(spec.items()):
            loaded[c], metas[c], snapshots[str(c)] = load_generator(p)
        recorded = [(snapshots[str(c)], label_names_from_metadata(m)) for c, m in sorted(metas.items())
                    if label_names_from_metadata(m) is not None]
        for p, names in recorded[1:]:  # per-class GANs trained on differently labelled data
            check_same_labels(recorded[0][1], names, f"{recorded[0][0]} (its training labels)",
                              f"{p} (its training labels)")
        if label_names and recorded:
            check_same_labels(recorded[0][1], label_names,
                              f"{recorded[0][0]} (the GAN's training labels)", "--label_names")
        if not label_names:
            label_names = recorded[0][1] if recorded else ["normal", "tumour"]
        label_names = list(label_names)
        num_classes = len(label_names)
        bad = [c for c in spec if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"--networks: class {bad[0]} out of range 0..{num_classes - 1} "
                            f"(label names {label_names})")
        for c, net in loaded.items():
            if int(net.c_dim) > 0 and c >= int(net.c_dim):
                raise UserError(f"{snapshots[str(c)]}: class {c} out of range for a conditional "
                                f"network with c_dim={int(net.c_dim)}")
        synth_kwargs = dict(per_class=loaded)
        default_run = "+".join(dict.fromkeys(_run_name(p) for p in snapshots.values()))
    if classes is None or len(classes) == 0:
        classes = list(range(num_classes))
    classes = [int(c) for c in classes]
    for c in classes:
        if not 0 <= c < num_classes:
            raise UserError(f"--classes: class {c} out of range 0..{num_classes - 1} for "
                            f"{'the conditional network' if network else 'label names'} "
                            f"{label_names}")
    if len(set(classes)) != len(classes):
        raise UserError(f"--classes: repeated class in {classes}")
    if networks is not None:
        missing = [c for c in classes if c not in synth_kwargs["per_class"]]
        if missing:
            raise UserError(f"--networks: no network for class {missing[0]} "
                            f"({label_names[missing[0]]}); map covers {sorted(synth_kwargs['per_class'])}")
    synth = Synthesizer(truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                        noise_mode=noise_mode, batch_size=batch_size, jit_compile=jit_compile,
                        **synth_kwargs)
    scorer = None
    if filter_classifier:
        scorer = ClassifierFilter(filter_classifier, (synth.resolution, synth.resolution,
                                                      synth.channels), label_names,
                                  min_confidence, filter_max_draws, filter_min_kept)
    run = run_name or default_run
    name = name or os.path.basename(os.path.normpath(outdir))
    provenance = {
        "source": "synthetic",
        "generator": "histaug_tf.generate",
        "run": run,
        "snapshots": {k: {"path": os.path.abspath(p), "sha256": file_sha256(p)}
                      for k, p in snapshots.items()},
        "classes": classes,
        "num_per_class": num_per_class,
        "seeds": [int(seed), int(seed) + num_per_class - 1],
        "truncation_psi": float(truncation_psi),
        "truncation_cutoff": truncation_cutoff,
        "noise_mode": noise_mode,
        "flags": dict(flags or {}),
    }
    if scorer is not None:
        provenance["filter"] = scorer.record
    if overwrite and os.path.isdir(outdir):  # our own grids, else the writer refuses to overwrite
        for f in os.listdir(outdir):
            if re.fullmatch(r"grid-.*\.png", f):
                os.remove(os.path.join(outdir, f))
    if noise_mode == "random":
        import tensorflow as tf

        tf.random.set_seed(int(seed))

    # ---- generate ----
    shape = (synth.resolution, synth.resolution, synth.channels)
    grids = {}
    bar = Progress(num_per_class * len(classes), label="generate", unit="img",
                   quiet=None if progress else True)
    with DatasetWriter(outdir, name, shape, encoding=encoding, label_names=label_names,
                       shard_size=shard_size, overwrite=overwrite, provenance=provenance) as w:
        w.extra = {"grouping": "run"}
        if len(label_names) == 2:
            w.extra["positive_class"] = label_names[1]
        for c in classes:
            lname = label_names[c]
            if scorer is not None:
                def add(s, img, c=c, lname=lname):
                    w.add("train", img, c, key=f"synthetic/{run}/{lname}/{int(s)}", group=run,
                          source="synthetic")
                scorer.run_class(synth, c, num_per_class, seed, add, bar,
                                         grids.setdefault(c, []) if grid else None, grid_size)
                continue
            for i in range(0, num_per_class, synth.batch_size):
                seeds = np.arange(seed + i, seed + min(i + synth.batch_size, num_per_class),
                                  dtype=np.int64)
                images = synth(seeds, np.full(seeds.shape, c))
                for s, img in zip(seeds, images):
                    w.add("train", img, c, key=f"synthetic/{run}/{lname}/{int(s)}", group=run,
                          source="synthetic")
                if grid and len(grids.get(c, ())) < grid_size:
                    grids.setdefault(c, []).extend(images[:grid_size - len(grids.get(c, ()))])
                bar.update(len(seeds))
    bar.close()
    rate = bar.rate()
    grid_files = []
    if grid:
        for c, imgs in grids.items():
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label_names[c])
            grid_files.append(os.path.join(outdir, f"grid-{safe}.png"))
            save_png(grid_files[-1], image_grid(np.stack(imgs)))
    return {"manifest": w.manifest, "images_per_second": rate, "grids": grid_files}
