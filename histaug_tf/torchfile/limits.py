"""Byte limits for reading a ``torch.save`` file or a pickle that embeds one, checked before the
allocation they guard (a small hostile file must not make the reader allocate gigabytes):

* zip entries (the zip ``torch.save`` format, top level or embedded in a storage): a ``data.pkl``
  may inflate to at most :data:`MAX_PICKLE_BYTES`; a storage entry must declare exactly the size
  its reference claims (``numel x itemsize``);
* legacy streams: a storage's element count must be the one its reference declared, and its bytes
  must be in the file, before they are read;
* all array data materialised during one load (storages and the tensors copied out of them) may
  total at most :data:`MAX_ARRAY_BYTES`;
* a state dict (:func:`histaug_tf.torchfile.state_dict.load_state_dict`) may flatten to at most
  :data:`MAX_STATE_DICT_ENTRIES` names, a shared sub-dict counted each time it is reached, nested
  at most :data:`MAX_STATE_DICT_DEPTH` deep.

The NVlabs network importer adds its own limits (kwargs, module trees, shapes) in
:mod:`histaug_tf.interop.limits`. Each violation raises :class:`LimitError` (a ``UserError``); the
reader's caller prefixes the file name, so the message is one line naming the file and the limit.
"""
from __future__ import annotations

from histaug_tf.common import UserError

MAX_PICKLE_BYTES = 64 << 20      # an uncompressed data.pkl inside a zip
MAX_ARRAY_BYTES = 4 << 30        # storages + tensors materialised while reading one file
MAX_STATE_DICT_ENTRIES = 100_000  # names of one flattened state dict, every reference counted
MAX_STATE_DICT_DEPTH = 16        # nesting of dicts in one state dict
MAX_REPR = 60                    # characters of a hostile value quoted in a message


class LimitError(UserError):
    """A hard limit of a reader was exceeded (or a field has the wrong type)."""


def short_repr(v, n=MAX_REPR):
    """``repr`` of at most ``n`` characters, safe on huge or deeply shared containers."""
    if isinstance(v, (dict, list, tuple, set, frozenset)):
        return f"<{type(v).__name__} of {len(v)} items>"
    try:
        s = repr(v) if not isinstance(v, (str, bytes)) or len(v) <= 4 * n else repr(v[:n])
    except Exception:  # noqa: BLE001 - a repr that fails is described by its type
        s = f"<{type(v).__name__}>"
    return s if len(s) <= n else s[: n - 3] + "..."
