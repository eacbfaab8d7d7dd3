"""Network snapshots: one ``.keras`` file with G_ema (and optionally G and D) plus metadata.

``save_snapshot(path, G_ema, G=None, D=None, metadata=None)`` writes a Keras archive of a small
container model (:class:`NetworkSnapshot`) whose config holds the networks' configs and the
metadata (JSON: e.g. kimg, preset, resolution, c_dim, label_names). It is written to a temporary
name in the same directory and renamed, so a snapshot file is either complete or absent.

``load_snapshot(path)`` returns ``{'G_ema', 'G', 'D', 'metadata'}`` (missing networks are None).
Plain ``keras.saving.load_model(path)`` also works (it returns the :class:`NetworkSnapshot`,
with attributes ``G_ema``, ``G``, ``D``, ``metadata``) once ``histaug_tf.gan`` is imported.
``read_metadata(path)`` reads only the metadata (no TensorFlow graph is built).
"""
from __future__ import annotations

import glob
import json
import os
import re
import zipfile

import keras

from histaug_tf.common import UserError, atomic_path
from histaug_tf.gan import networks as _networks  # noqa: F401  (registers the classes)
from histaug_tf.gan.layers import PACKAGE

SNAPSHOT_PATTERN = "network-snapshot-*.keras"


def _jsonable(obj):
    """Round-trip ``obj`` through JSON (so what is saved is what is loaded)."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as e:
        raise ValueError(f"snapshot metadata must be JSON-serialisable: {e}") from None


@keras.saving.register_keras_serializable(package=PACKAGE)
class NetworkSnapshot(keras.Model):
    """Container of G_ema (required), G and D (optional) and a metadata dict."""

    def __init__(self, G_ema, G=None, D=None, metadata=None, name="network_snapshot", **kwargs):
        super().__init__(name=name, **kwargs)
        self.G_ema = G_ema
        self.G = G
        self.D = D
        self.metadata = _jsonable(dict(metadata or {}))
        self.built = True

    def call(self, z, c=None, **kwargs):
        return self.G_ema(z, c, **kwargs)

    def get_config(self):
        ser = keras.saving.serialize_keras_object
        return dict(name=self.name, G_ema=ser(self.G_ema),
                    G=ser(self.G) if self.G is not None else None,
                    D=ser(self.D) if self.D is not None else None,
                    metadata=self.metadata)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        de = keras.saving.deserialize_keras_object
        for key in ("G_ema", "G", "D"):
            if config.get(key) is not None:
                config[key] = de(config[key])
        return cls(**config)

    def get_build_config(self):
        return {}

    def build_from_config(self, config):
        pass


def save_snapshot(path, G_ema, G=None, D=None, metadata=None):
    """Write ``path`` (must end in ``.keras``) atomically. Returns ``path``."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"{path}: a snapshot file name must end in .keras")
    snap = NetworkSnapshot(G_ema, G=G, D=D, metadata=metadata)
    with atomic_path(path, ".keras") as tmp:
        snap.save(tmp, overwrite=True)
    return path


def _check_file(path):
    if not os.path.isfile(path):
        raise UserError(f"{path}: snapshot file not found")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a .keras snapshot (not a zip archive)")


def read_metadata(path):
    """The metadata dict of a snapshot, without building the networks."""
    path = os.fspath(path)
    _check_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            cfg = json.loads(zf.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a .keras snapshot ({e})") from None
    if cfg.get("class_name") != "NetworkSnapshot":
        raise UserError(f"{path}: a .keras file but not a network snapshot "
                        f"(class {cfg.get('class_name')!r})")
    return dict(cfg.get("config", {}).get("metadata") or {})


def load_snapshot(path):
    """Load a snapshot: ``{'G_ema': Generator, 'G': Generator|None, 'D': Discriminator|None,
    'metadata': dict}``. UserError when the file is missing or not a snapshot."""
    path = os.fspath(path)
    read_metadata(path)  # validates
    try:
        snap = keras.saving.load_model(path, compile=False)
    except Exception as e:  # a corrupt or incompatible archive
        raise UserError(f"{path}: cannot load snapshot: {type(e).__name__}: {e}") from None
    return dict(G_ema=snap.G_ema, G=snap.G, D=snap.D, metadata=dict(snap.metadata))


def _kimg_of(path):
    m = re.search(r"network-snapshot-(\d+)\.keras$", os.path.basename(path))
    return int(m.group(1)) if m else -1


def latest_snapshot(run_dir):
    """Path of the ``network-snapshot-<kimg>.keras`` with the largest kimg in ``run_dir``, or None."""
    paths = [p for p in glob.glob(os.path.join(os.fspath(run_dir), SNAPSHOT_PATTERN))
             if _kimg_of(p) >= 0]
    if not paths:
        return None
    return max(paths, key=_kimg_of)


def snapshot_name(kimg):
    """``network-snapshot-000123.keras`` (the NVlabs naming, kimg zero-padded to 6 digits)."""
    return f"network-snapshot-{int(kimg):06d}.keras"
