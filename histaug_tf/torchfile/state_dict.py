"""Read a PyTorch state dict file (``torch.save(model.state_dict(), f)``, zip or legacy format) into
NumPy, without torch and without running any code from the file.

The file is read by the restricted unpickler of :mod:`.safe_pickle` — the one that reads NVlabs
network pickles — allowing only the globals a state dict needs (``collections.OrderedDict``, the
tensor rebuild functions, the storage types: ``safe_pickle.STATE_DICT_GLOBALS``), with the byte
limits of :mod:`.limits` (zip entry sizes checked before inflating; a legacy storage's element count
must match its reference and its bytes be in the file; ``MAX_ARRAY_BYTES`` of arrays per file) and
a bound on the names a state dict flattens to.

``load_state_dict(path) -> {name: np.ndarray}``: nested dicts (e.g. ``{'state_dict': {...}}``) are
flattened with dotted names; bfloat16 tensors come back as float32. A bad file raises one
``UserError`` line naming it.
"""
from __future__ import annotations

import os

import numpy as np

from histaug_tf.common import UserError
from histaug_tf.torchfile import limits, safe_pickle

__all__ = ["load_state_dict"]

_REFUSAL = ("refusing to load global {} (not part of a tensor state dict; nothing in the file was "
            "executed)")


def _flatten(obj, out, prefix, depth, count):
    if not isinstance(obj, dict):
        raise safe_pickle.UnsafePickleError(f"holds a {type(obj).__name__}, not a state dict")
    if depth >= limits.MAX_STATE_DICT_DEPTH:
        raise limits.LimitError(f"dicts nested deeper than {limits.MAX_STATE_DICT_DEPTH} levels "
                                f"(limit MAX_STATE_DICT_DEPTH={limits.MAX_STATE_DICT_DEPTH})")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise safe_pickle.UnsafePickleError("a state dict key is not a string")
        count[0] += 1
        if count[0] > limits.MAX_STATE_DICT_ENTRIES:
            raise limits.LimitError(
                f"more than {limits.MAX_STATE_DICT_ENTRIES} entries (shared sub-dicts counted "
                f"each time; limit MAX_STATE_DICT_ENTRIES={limits.MAX_STATE_DICT_ENTRIES})")
        if isinstance(v, np.ndarray):
            out[prefix + k] = v
        elif isinstance(v, dict):  # e.g. {'state_dict': {...}}: flatten with a dotted prefix
            _flatten(v, out, f"{prefix}{k}.", depth + 1, count)
        else:
            raise safe_pickle.UnsafePickleError(
                f"entry {limits.short_repr(prefix + k)} is a {type(v).__name__}, not a tensor")
    return out


def load_state_dict(path) -> dict:
    """``{name: np.ndarray}`` of a ``torch.save``'d state dict (zip or legacy format)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            obj = safe_pickle.load_torch_file(f, safe_pickle.STATE_DICT_GLOBALS, _REFUSAL)
            return _flatten(obj, {}, "", 0, [0])
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except limits.LimitError as e:  # raised without the file name: name it
        raise limits.LimitError(f"{path}: refused: {e}") from None
    except safe_pickle.UnsafePickleError as e:
        raise UserError(f"{path}: not a PyTorch state dict: {e}") from None
    except Exception as e:  # noqa: BLE001 - damaged input of any kind: one line naming the file
        raise UserError(f"{path}: not a PyTorch state dict: {type(e).__name__}: "
                        f"{limits.short_repr(str(e), 120)}") from None
