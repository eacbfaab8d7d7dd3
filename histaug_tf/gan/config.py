"""The training configuration: typed, frozen, built and validated once, written as
``training_options.json`` and read back from it.

``apps/train_gan.resolve_config`` builds a ``TrainingConfig`` from train_gan's flags, the dataset's
manifest and the preset (the one place where they are checked against each other); the trainer,
the loop, the input pipeline and the networks read their settings from it. A field has the name of
the flag that sets it (``--gamma`` is ``loss.gamma``, ``--p`` is ``augment.p``, ``--tick`` is
``schedule.tick``); fields no flag sets have the preset's name (``G_reg_interval``, ``G_kwargs``).
Field names are unique over all sections, so ``TrainingConfig.from_flat(gamma=1, tick=2, ...)``
places each keyword in its section (the rest keep their defaults).
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """What the run trains on and how it is read (``data.pipeline.make_dataset``)."""
    data: str = ""                       # dataset directory (absolute)
    resolution: int = 0                  # training resolution (= the networks' img_resolution)
    resize: str = "crop"                 # crop | resize | pad
    flips: str = "none"                  # none | x | xy | all (apps/train_gan.FLIP_MODES)
    mirror: bool = False                 # the reference's flag (= flips x)
    class_filter: int | None = None      # one class only
    shuffle_buffer: int = 10000
    input_sharding: str = "file"         # file | batch (several workers)
    label_names: tuple = ()              # from the manifest
    class_counts: tuple = ()             # train split, per class
    image_shape: tuple = ()              # stored H, W, C


@dataclass(frozen=True)
class NetworksConfig:
    cfg: str = "tiny"                    # the preset
    cond: bool = False
    c_dim: int = 0                       # len(label_names) with --cond, else 0
    G_kwargs: dict = field(default_factory=dict)   # networks.Generator(**G_kwargs)
    D_kwargs: dict = field(default_factory=dict)   # networks.Discriminator(**D_kwargs)
    mixed_precision: bool = False
    freezed: int = 0                     # Freeze-D: D layers from the top
    noise_mode: str = "random"           # synthesis noise during training
    resume: str | None = None            # a snapshot to start from (transfer learning)


@dataclass(frozen=True)
class LossConfig:
    """The objectives and their optimizers (reference ``StyleGAN2Loss``, ``training_loop``)."""
    gamma: float = 10.0                  # R1 gamma
    pl_weight: float = 2.0
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing: float = 0.9            # style mixing probability
    G_reg_interval: int | None = 4       # None: no lazy regularisation (Gboth every step)
    D_reg_interval: int | None = 16
    G_lr: float = 0.0025
    D_lr: float = 0.0025
    betas: tuple = (0.0, 0.99)
    eps: float = 1e-8


@dataclass(frozen=True)
class AugmentConfig:
    aug: str = "noaug"                   # ada | noaug | fixed
    augpipe: str = "bgc"
    p: float = 0.0                       # initial (ada) or fixed probability
    target: float | None = None          # ADA target r_t; None = p fixed
    ada_kimg: float = 500.0
    ada_interval: int = 4


@dataclass(frozen=True)
class ScheduleConfig:
    kimg: float = 25000.0                # training length
    tick: float = 4.0                    # kimg per tick
    snap: int = 50                       # ticks between snapshots and fakes grids (0: end only)
    checkpoint_ticks: int = 1
    batch: int = 32                      # global batch
    batch_gpu: int | None = None         # samples per replica and round (None: one round)
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    seed: int = 0
    deterministic: bool = False
    grid: tuple = (8, 4)                 # fakes grid columns, rows
    tensorboard: bool = True


@dataclass(frozen=True)
class DistributionConfig:
    strategy: str = "auto"
    jit: bool = False
    jit_phases: str = "auto"             # with jit: auto | all | a comma list (jit_phase_set)
    num_replicas: int = 1


# The phases --jit_phases can name; Gboth/Dboth (no lazy regularisation) follow Gmain/Dmain.
JIT_PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
# "auto" on one CPU replica: every phase but the two lazy regularisers. Greg ran as fast without
# XLA; Dreg (R1, once every 16 steps) runs ~0.2 s slower per call without it (~1 % of the
# training time), but its compilation was 4-6 s of every cold start (docs/speed.md, "Warm-up:
# the path-length phase without XLA" and "Warm-up: R1 without XLA").
JIT_AUTO_SKIP_ON_CPU = ("Greg", "Dreg")


def jit_phase_set(spec: str, *, jit: bool = True, one_cpu_replica: bool = False) -> frozenset:
    """The phases to compile with XLA: none without ``jit``; ``all``: every one; ``auto``: every
    one except, on a single CPU replica, ``JIT_AUTO_SKIP_ON_CPU``; else the comma list
    ``spec`` of names from ``JIT_PHASES`` (ValueError naming the unknown one)."""
    spec = (spec or "auto").strip()
    if spec in ("auto", "all"):
        names = set(JIT_PHASES)
        if spec == "auto" and one_cpu_replica:
            names -= set(JIT_AUTO_SKIP_ON_CPU)
    else:
        names = {x.strip() for x in spec.split(",") if x.strip()}
        bad = sorted(names - set(JIT_PHASES))
        if bad:
            raise ValueError(f"unknown phase {bad[0]!r} (choose from auto, all or a comma list "
                             f"of {', '.join(JIT_PHASES)})")
    if not jit:
        return frozenset()
    names |= {"Gboth"} if "Gmain" in names else set()
    names |= {"Dboth"} if "Dmain" in names else set()
    return frozenset(names)


@dataclass(frozen=True)
class MetricsConfig:
    metrics: tuple = ()
    metrics_kimg: float | None = None
    inception_weights: str | None = None
    vgg16_weights: str | None = None


SECTIONS = {"data": DataConfig, "networks": NetworksConfig, "loss": LossConfig,
            "augment": AugmentConfig, "schedule": ScheduleConfig,
            "distribution": DistributionConfig, "metrics": MetricsConfig}
_TUPLES = {"label_names", "class_counts", "image_shape", "betas", "grid", "metrics"}


def _section_of():
    out = {}
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in out, f"field {f.name} in two sections"
            out[f.name] = sec
    return out


SECTION_OF = _section_of()


def _type_ok(annotation: str, value) -> bool:
    """``value`` fits a field annotated ``annotation`` (the annotations of this module: bool,
    int, float, str, tuple, dict, each optionally ``| None``; a JSON list fits a tuple, an int a
    float)."""
    if annotation.endswith(" | None"):
        if value is None:
            return True
        annotation = annotation[:-len(" | None")]
    if annotation == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, {"int": numbers.Integral, "float": numbers.Real, "str": str,
                              "tuple": (tuple, list), "dict": dict}[annotation])


_ANNOTATION_OF = {f.name: f.type for sec in SECTIONS.values() for f in dataclasses.fields(sec)}


def _check_type(name: str, value) -> None:
    annotation = _ANNOTATION_OF[name]
    if not _type_ok(annotation, value):
        raise ValueError(f"{SECTION_OF[name]}.{name}: {json.dumps(value, default=str)} is not "
                         f"{annotation}")


@dataclass(frozen=True)
class TrainingConfig:
    outdir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    networks: NetworksConfig = field(default_factory=NetworksConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distribution: DistributionConfig = field(default_factory=DistributionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    preset: dict = field(default_factory=dict)   # the resolved preset, for the record

    @classmethod
    def from_flat(cls, outdir="", preset=None, **fields: Any) -> "TrainingConfig":
        """Each keyword into the section that has a field of its name (unknown: TypeError; a
        value of another type than the field's: ValueError naming ``section.field``)."""
        parts = {sec: {} for sec in SECTIONS}
        for name, value in fields.items():
            sec = SECTION_OF.get(name)
            if sec is None:
                raise TypeError(f"no training config field {name!r}")
            _check_type(name, value)
            parts[sec][name] = tuple(value) if name in _TUPLES and value is not None else value
        return cls(outdir=outdir, preset=dict(preset or {}),
                   **{sec: SECTIONS[sec](**kw) for sec, kw in parts.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingConfig":
        """The inverse of ``to_dict`` (``training_options.json`` read back); ValueError when
        ``d`` is not one (e.g. the flat options file of an older version)."""
        if not isinstance(d, dict) or not all(isinstance(d.get(s), dict) for s in SECTIONS):
            raise ValueError("not a sectioned training config")
        if not isinstance(d.get("preset") or {}, dict):
            raise ValueError("preset: not a JSON object")
        if not isinstance(d.get("outdir", ""), str):
            raise ValueError("outdir: not a string")
        flat = {}
        for sec in SECTIONS:
            for k, v in d[sec].items():
                if SECTION_OF.get(k) != sec:
                    raise ValueError(f"unknown field {sec}.{k}")
                flat[k] = v
        return cls.from_flat(outdir=d.get("outdir", ""), preset=d.get("preset"), **flat)

    def replace(self, **fields) -> "TrainingConfig":
        """A copy with flat fields changed (``cfg.replace(kimg=2)``)."""
        parts = {}
        for name, value in fields.items():
            sec = SECTION_OF.get(name)
            if sec is None:
                raise TypeError(f"no training config field {name!r}")
            parts.setdefault(sec, {})[name] = value
        return dataclasses.replace(self, **{sec: dataclasses.replace(getattr(self, sec), **kw)
                                            for sec, kw in parts.items()})
