"""Traced ``tf.function`` graphs kept on disk, so that a second process skips Python tracing.

Tracing the four phase functions of the GAN step takes seconds of Python in every process (~7 s
at the demo configuration), before XLA's own persistent cache (``common.enable_xla_cache``) can
even be consulted. ``CachedFunction`` wraps a ``tf.function``; at its first call with a given
input signature it either

* finds an entry under ``graph_cache_dir()`` for (the caller's key, the signature), registers its
  function definitions with the runtime and calls them by name — no tracing; or
* traces the function as before, writes the entry (atomically) and calls the same registered
  definitions.

Either way the process runs the *same* function definitions: they are renamed to names derived
from the key (``histaug_<hash>_<i>``), so the XLA programs built from them have the same cache
keys in the process that traced and in every later one, and two entries never collide by name.

An entry is only as good as its key. The caller's key must name everything the traced graph
depends on besides the code (hyperparameters baked in as constants, network configurations, the
variables it touches); this module adds the package's source (every ``.py`` file of
``histaug_tf``), the TensorFlow/Keras/Python versions, the Keras dtype policy, TensorFlow's global
seed (op-level seeds of stateful random ops are drawn from it at trace time) and the logical
devices. What a graph captures is stored as a recipe: a variable by its path among the
``variables()`` the caller lists (checked for dtype and shape when loading), a constant by value.
A capture the caller does not list (an unknown resource) makes the function uncacheable: it then
runs as a plain ``tf.function``. A damaged or unreadable entry is reported in one line and
replaced by a fresh trace.

``$HISTAUG_GRAPH_CACHE`` names the directory (``off``, ``0`` or empty switches the cache off); the
default is ``$XDG_CACHE_HOME/histaug_tf/graphs`` (``~/.cache/histaug_tf/graphs``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context as _context

from histaug_tf.common import atomic_path, cache_dir_setting

GRAPH_CACHE_ENV = "HISTAUG_GRAPH_CACHE"
FORMAT = 1
MAX_ENTRIES = 200  # the least recently used entries beyond this are removed when one is written
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def graph_cache_dir() -> str | None:
    """The cache directory, or None when switched off (``$HISTAUG_GRAPH_CACHE``)."""
    return cache_dir_setting(GRAPH_CACHE_ENV, "graphs")


@functools.lru_cache(maxsize=None)
def source_fingerprint(package_dir: str = _PACKAGE_DIR) -> str:
    """sha256 over the relative path and bytes of every ``.py`` file of the package."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                p = os.path.join(root, f)
                h.update(os.path.relpath(p, package_dir).encode() + b"\0")
                with open(p, "rb") as fh:
                    h.update(fh.read())
                h.update(b"\0")
    return h.hexdigest()


def scalars(obj, exclude=()) -> dict:
    """The attributes of ``obj`` that are plain values (numbers, strings, None, NumPy arrays and
    flat sequences of them) — the hyperparameters a traced graph bakes in as constants."""
    plain = (bool, int, float, str, type(None), np.generic)
    out = {}
    for k, v in sorted(vars(obj).items()):
        if k in exclude or k.startswith("_self_"):  # (tf.Module's bookkeeping: changes on restore)
            continue
        if isinstance(v, np.ndarray):
            out[k] = [str(v.dtype), list(v.shape), v.tolist()]
        elif isinstance(v, plain):
            out[k] = v.item() if isinstance(v, np.generic) else v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v):
            # (also TensorFlow's ListWrapper, a list subclass, in tf.Module attributes)
            out[k] = [x.item() if isinstance(x, np.generic) else x for x in v]
    return out


def _environment() -> dict:
    import keras

    return {"format": FORMAT, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": list(sys.version_info[:2]), "source": source_fingerprint(),
            "dtype_policy": keras.config.dtype_policy().name,
            "global_seed": _context.context()._seed,  # noqa: SLF001 (no public getter)
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Uncacheable(Exception):
    """The traced function captures something the cache cannot recreate in another process."""


def _referenced(attr, out):
    """Function names referenced from an AttrValue (``func`` and ``list.func``, nested)."""
    if attr.HasField("func"):
        out.append(attr.func)
        for a in attr.func.attr.values():
            _referenced(a, out)
    for f in attr.list.func:
        out.append(f)
        for a in f.attr.values():
            _referenced(a, out)


def _rename(fdefs, top, prefix):
    """The function definitions with names ``<prefix>_<i>`` (``<prefix>_main`` for ``top``) and
    every reference rewritten. Raises ``Uncacheable`` if one references a function outside."""
    names = sorted(fd.signature.name for fd in fdefs if fd.signature.name != top)
    new = {n: f"{prefix}_{i}" for i, n in enumerate(names)}
    new[top] = f"{prefix}_main"
    out = []
    for fd in fdefs:
        fd2 = type(fd)()
        fd2.CopyFrom(fd)
        fd2.signature.name = new[fd.signature.name]
        for node in fd2.node_def:
            if node.op in new:  # a function called as an op
                node.op = new[node.op]
            refs = []
            for a in node.attr.values():
                _referenced(a, refs)
            for r in refs:
                if r.name not in new:
                    raise Uncacheable(f"references function {r.name} outside its library")
                r.name = new[r.name]
        out.append(fd2)
    return out, new[top]


class CachedFunction:
    """A ``tf.function`` whose traced graphs are cached on disk (module docstring).

    ``key``: a JSON-able description of everything the graph depends on besides the code;
    ``variables``: a callable returning ``[(path, tf.Variable)]`` — every variable the function may
    capture, each path unique and stable across processes. Calls take tensors (or values
    convertible to them) only; they return the function's flat outputs (a list) or None.
    Attributes not defined here (e.g. ``get_concrete_function``) are the wrapped function's.
    """

    def __init__(self, fn, name, key, variables, directory=None, log=None):
        self._fn = fn
        self._name = name
        self._key = key
        self._variables = variables
        self._dir = directory if directory is not None else graph_cache_dir()
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._entries = {}  # input signature -> (function name, captures, number of outputs)
        self.last_prepare = None  # {"source": "loaded" | "traced" | "uncached", "seconds": s}

    def __getattr__(self, attr):
        if attr.startswith("__") or attr == "_fn":
            raise AttributeError(attr)
        return getattr(self._fn, attr)

    @staticmethod
    def _signature(args):
        return tuple((a.dtype.name, tuple(a.shape.as_list())) for a in args)

    def entry_path(self, args) -> str | None:
        """The file of the entry for ``args`` (None when the cache is off)."""
        if self._dir is None:
            return None
        return self._path(self._signature([tf.convert_to_tensor(a) for a in args]))[0]

    def _path(self, sig):
        """``(entry file, function-name prefix)`` for input signature ``sig``."""
        digest = _digest({"env": _environment(), "name": self._name, "key": self._key,
                          "signature": sig})
        return os.path.join(self._dir, digest + ".npz"), f"histaug_{digest[:24]}"

    def __call__(self, *args):
        args = [tf.convert_to_tensor(a) for a in args]
        sig = self._signature(args)
        entry = self._entries.get(sig)
        if entry is None:
            entry = self._prepare(args, sig)
        if entry == "uncached":
            return self._fn(*args)
        fname, captures, nout = entry
        return _context.context().call_function(fname, list(args) + captures, nout)

    def prepare(self, *args):
        """Load or trace (and save) the graph for ``args`` without running it; returns
        ``{"source": ..., "seconds": ...}``."""
        args = [tf.convert_to_tensor(a) for a in args]
        sig = self._signature(args)
        if sig not in self._entries:
            self._prepare(args, sig)
        return self.last_prepare

    # -- internals -------------------------------------------------------------------------------

    def _prepare(self, args, sig):
        t0 = time.perf_counter()
        entry, source = None, "uncached"
        if self._dir is not None:
            path, prefix = self._path(sig)
            if os.path.exists(path):
                try:
                    entry, source = self._load(path, sig), "loaded"
                except Exception as e:  # noqa: BLE001 - any damage: trace instead
                    msg = " ".join(str(e).split()) or type(e).__name__
                    self._log(f"warning: graph cache {path}: {msg[:300]}; tracing again")
            if entry is None:
                try:
                    entry, source = self._trace_and_save(args, sig, path, prefix), "traced"
                except Uncacheable as e:
                    self._log(f"note: graph cache: {self._name} not cached ({e})")
                except Exception as e:  # noqa: BLE001 - the cache must never stop a run
                    msg = " ".join(str(e).split()) or type(e).__name__
                    self._log(f"warning: graph cache: {self._name} not cached ({msg[:300]})")
        if entry is None:
            entry = "uncached"
            self._fn.get_concrete_function(*args)
        self._entries[sig] = entry
        self.last_prepare = {"source": source, "seconds": time.perf_counter() - t0}
        return entry

    def _var_paths(self):
        by_handle, by_path = {}, {}
        for path, v in self._variables():
            by_handle.setdefault(id(v.handle), path)
            if path in by_path and by_path[path] is not v:
                raise Uncacheable(f"two variables have the path {path}")
            by_path[path] = v
        return by_handle, by_path

    def _trace_and_save(self, args, sig, path, prefix):
        from tensorflow.core.framework import function_pb2

        cf = self._fn.get_concrete_function(*args)
        by_handle, by_path = self._var_paths()
        caps, consts = [], {}
        for i, c in enumerate(cf.captured_inputs):
            p = by_handle.get(id(c))
            if p is not None:
                v = by_path[p]
                caps.append(["var", p, v.dtype.name, v.shape.as_list()])
            elif c.dtype == tf.resource or c.dtype == tf.variant:
                raise Uncacheable(f"capture {i} is a {c.dtype.name} that is not a listed variable")
            else:
                caps.append(["const", f"c{i}"])
                consts[f"c{i}"] = c.numpy()
        fdefs = list(cf.graph.as_graph_def().library.function) + [cf.function_def]
        fdefs, top = _rename(fdefs, cf.function_def.signature.name, prefix)
        lib = function_pb2.FunctionDefLibrary()
        lib.function.extend(fdefs)
        nout = len(cf.function_def.signature.output_arg)
        meta = {"format": FORMAT, "name": self._name, "function": top, "outputs": nout,
                "signature": sig, "captures": caps}
        entry = self._register(lib, meta, consts, by_path)
        try:
            with atomic_path(path, ".npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, library=np.frombuffer(lib.SerializeToString(), np.uint8),
                             meta=np.array(json.dumps(meta)), **consts)
        except OSError as e:  # a read-only or full cache directory: run uncached
            self._log(f"warning: graph cache {path} not written ({e})")
        else:
            self._prune()
        return entry

    def _load(self, path, sig):
        from tensorflow.core.framework import function_pb2

        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            lib = function_pb2.FunctionDefLibrary.FromString(z["library"].tobytes())
            consts = {k: z[k] for k in z.files if k not in ("library", "meta")}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')}, expected {FORMAT}")
        if [tuple((d, tuple(s))) for d, s in meta["signature"]] != list(sig):
            raise ValueError("input signature differs from the call's")
        _, by_path = self._var_paths()
        entry = self._register(lib, meta, consts, by_path)
        try:
            os.utime(path)  # pruning removes the least recently used entries
        except OSError:
            pass
        return entry

    def _register(self, lib, meta, consts, by_path):
        captures = []
        for cap in meta["captures"]:
            if cap[0] == "var":
                _, p, dtype, shape = cap
                v = by_path.get(p)
                if v is None:
                    raise ValueError(f"captured variable {p} does not exist here")
                if v.dtype.name != dtype or v.shape.as_list() != shape:
                    raise ValueError(f"captured variable {p} is {v.dtype.name}{v.shape.as_list()}"
                                     f", the entry has {dtype}{shape}")
                captures.append(v.handle)
            else:
                captures.append(tf.constant(consts[cap[1]]))
        names = {fd.signature.name for fd in lib.function}
        if meta["function"] not in names:
            raise ValueError(f"function {meta['function']} missing from the library")
        ctx = _context.context()
        for fd in lib.function:  # same name => same key => same definition
            if not ctx.has_function(fd.signature.name):
                ctx.add_function_def(fd)
        return meta["function"].encode(), captures, int(meta["outputs"])

    def _prune(self):
        try:
            files = [os.path.join(self._dir, f) for f in os.listdir(self._dir)
                     if f.endswith(".npz") and not f.startswith(".")]
            if len(files) <= MAX_ENTRIES:
                return
            files.sort(key=lambda p: os.stat(p).st_mtime)
            for p in files[:len(files) - MAX_ENTRIES]:
                os.remove(p)
        except OSError:
            pass  # another process pruned first, or the directory is read-only
