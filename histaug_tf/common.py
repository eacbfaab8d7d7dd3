"""Small helpers shared by every layer: user-facing errors, the absl entry wrapper, progress.

This module imports nothing else from the package, so every layer may use it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time


class UserError(Exception):
    """A problem with the user's input. Entry points print it as one line and exit 1.

    The message should name the file (or flag) and the problem, e.g.
    ``UserError(f"{path}: key 'x' has shape (10, 64, 64, 3), expected (N, 96, 96, 3)")``.
    """


# what switches an environment setting of this module off (the XLA cache, the allocator)
_OFF_WORDS = ("", "0", "off", "none", "false")

XLA_CACHE_ENV = "HISTAUG_XLA_CACHE"
_XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"


def user_cache_dir(name: str) -> str:
    """``$XDG_CACHE_HOME/histaug_tf/<name>`` (``~/.cache/histaug_tf/<name>``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "histaug_tf", name)


def cache_dir_setting(env: str, name: str) -> str | None:
    """A cache directory named by ``$<env>`` (``off``, ``0``, ``none``, ``false`` or empty: None,
    the cache is off), else ``user_cache_dir(name)``."""
    v = os.environ.get(env)
    if v is not None:
        return None if v.strip().lower() in _OFF_WORDS else os.path.abspath(v)
    return user_cache_dir(name)


def xla_cache_dir() -> str | None:
    """Where compiled XLA programs are kept between processes, or None when switched off.

    ``$HISTAUG_XLA_CACHE`` names the directory (``off``, ``0`` or empty switches the cache off);
    the default is ``$XDG_CACHE_HOME/histaug_tf/xla`` (``~/.cache/histaug_tf/xla``).
    """
    return cache_dir_setting(XLA_CACHE_ENV, "xla")


def enable_xla_cache() -> str | None:
    """Turn on XLA's persistent compilation cache for this process (and the processes it starts).

    XLA reads ``TF_XLA_FLAGS`` when it compiles its first program, so this works after
    ``import tensorflow`` as long as nothing has been compiled yet. A second process with the same
    shapes then loads the compiled step instead of compiling it again (the programs are keyed by
    a fingerprint of the computation, the device and the compiler options). A cache directory the
    user already put into ``TF_XLA_FLAGS`` wins. Returns the directory in use, or None.
    """
    flags = os.environ.get("TF_XLA_FLAGS", "")
    for tok in flags.split():
        if tok.startswith(_XLA_CACHE_FLAG + "="):
            return tok.split("=", 1)[1] or None
    d = xla_cache_dir()
    if d is None:
        return None
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:  # a read-only home on a cluster node: compile as before
        print(f"warning: XLA compilation cache {d} not usable ({e}); compiling without it",
              file=sys.stderr, flush=True)
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {_XLA_CACHE_FLAG}={d}".strip()
    return d


MALLOC_ENV = "HISTAUG_MALLOC"
# set in the environment of a process started with the allocator preloaded (and inherited by the
# processes it starts): the loop guard of ``preload_allocator``
MALLOC_ACTIVE_ENV = "HISTAUG_MALLOC_ACTIVE"


def find_jemalloc() -> str | None:
    """Path of a jemalloc shared library on this machine, or None.

    Looks in this Python's and the active conda environment's ``lib``, in ``LD_LIBRARY_PATH``
    (environment modules on clusters put their libraries there) and in the system library
    directories (Debian/Ubuntu ``libjemalloc2``, Fedora/RHEL ``jemalloc``).
    """
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(os.path.join(os.environ["CONDA_PREFIX"], "lib"))
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    dirs += ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib", "/usr/local/lib64"]
    for d in dirs:
        for name in ("libjemalloc.so.2", "libjemalloc.so"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    return None


def preload_allocator(argv=None, environ=None, execve=None, find=find_jemalloc) -> str | None:
    """Run this process under jemalloc when ``$HISTAUG_MALLOC`` asks for it: start it again
    (``execve``: same pid, same command line) with the library in ``LD_PRELOAD``.

    ``$HISTAUG_MALLOC``: unset or ``off`` (default) keeps glibc's allocator; ``jemalloc`` uses the
    library ``find_jemalloc`` finds (one warning line when there is none); a path names the
    library to preload. Only on Linux. TensorFlow's graph building, its conversion to XLA and
    XLA's compiler allocate and free millions of small objects: under jemalloc a process started
    ~3 s sooner on the 2-core development machine, but its training steps were not faster, by the
    median 6 % slower (docs/speed.md, "Memory allocator"), so it is not the default. The
    processes this one starts inherit the preload (``$HISTAUG_MALLOC_ACTIVE`` names the library;
    it also stops a second restart). Returns the library when the process already runs under it,
    None when it keeps glibc's allocator; after a successful restart the call never returns.
    """
    env = os.environ if environ is None else environ
    if env.get(MALLOC_ACTIVE_ENV):  # started by this function (or by a process that was)
        return env[MALLOC_ACTIVE_ENV]
    choice = env.get(MALLOC_ENV, "off").strip()
    if choice.lower() in _OFF_WORDS + ("glibc",) or not sys.platform.startswith("linux"):
        return None
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    if not argv:
        return None
    if (sys.argv[:1] or [""])[0] in ("", "-"):  # a program read from stdin cannot be read twice
        print(f"warning: {MALLOC_ENV}={choice}: a program read from stdin is not restarted; "
              "running with glibc's allocator", file=sys.stderr, flush=True)
        return None
    if choice.lower() == "jemalloc":
        lib = find()
        if lib is None:
            print(f"warning: {MALLOC_ENV}=jemalloc: no libjemalloc found (e.g. apt-get install "
                  "libjemalloc2, or name its path); running with glibc's allocator",
                  file=sys.stderr, flush=True)
            return None
    else:
        lib = os.path.abspath(choice)
        if not os.path.isfile(lib):
            print(f"warning: {MALLOC_ENV}={choice}: no such file; running with glibc's allocator",
                  file=sys.stderr, flush=True)
            return None
    preload = env.get("LD_PRELOAD", "").strip()
    if os.path.basename(lib) in preload:  # the user preloaded it already
        env[MALLOC_ACTIVE_ENV] = lib
        return lib
    new_env = dict(env)
    new_env["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    new_env[MALLOC_ACTIVE_ENV] = lib
    _flush_stdio()  # what this image printed must not be lost with it
    try:
        (execve or os.execve)(sys.executable, argv, new_env)
    except OSError as e:
        print(f"warning: could not restart under {lib} ({e}); running with glibc's allocator",
              file=sys.stderr, flush=True)
    return None


def run_main(main_fn):
    """Wrap an absl ``main(argv)`` so a ``UserError`` becomes one line on stderr and exit code 1.

    Also restarts the process under jemalloc when ``$HISTAUG_MALLOC`` asks for it
    (``preload_allocator``) and turns on the persistent XLA compilation cache
    (``enable_xla_cache``) for every stage.
    """

    def wrapped(argv):
        preload_allocator()
        enable_xla_cache()
        try:
            return main_fn(argv)
        except UserError as e:
            msg = " ".join(str(e).split("\n"))
            print(f"error: {msg}", file=sys.stderr, flush=True)
            exit_now(1)

    return wrapped


def exit_now(code: int):
    """Flush stdout/stderr and end the process with ``code`` without the interpreter's teardown.

    Used after a failure has been reported: by then every ``with`` block (temporary files, locks,
    worker pools) has been unwound. The teardown itself is what can hang: a failed ``tf.data``
    read leaves parallel-map/prefetch threads whose destructors ran into a deadlock at interpreter
    exit on a loaded CI machine (the error line was printed, the process then never ended). A
    report that was printed must also end the process.
    """
    _flush_stdio()
    os._exit(code)


def _flush_stdio():
    """Flush stdout and stderr, ignoring a stream that is closed (before ``os._exit`` or
    ``os.execve``, which skip Python's own flushing)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not hide the exit or the restart
            pass


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive ``fcntl`` lock on ``path`` (created if missing) for the ``with`` body:
    one process at a time across processes of one machine or a shared POSIX file system."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success rename it over ``path``, on any error
    remove it. So ``path`` is either complete or untouched, never half written. The file gets the
    usual umask permissions (``mkstemp`` alone would leave it 0600).
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=d)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~umask)
            with open(tmp, "rb") as f:  # on disk before the rename makes it visible
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_path``."""
    with atomic_path(path, os.path.splitext(os.fspath(path))[1]) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path, obj) -> None:
    """``obj`` as indented, key-sorted JSON (newline-terminated), written atomically."""
    import json

    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npz_atomic(path, **arrays) -> None:
    """``np.savez`` of ``arrays`` to ``path``, written atomically."""
    import numpy as np

    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def file_sha256(path, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``bufsize`` chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(bufsize), b""):
            h.update(chunk)
    return h.hexdigest()


def save_png(path, image) -> None:
    """Write a uint8 HWC image (C = 1, 3 or 4) as PNG, atomically (Pillow)."""
    from PIL import Image

    img = image[..., 0] if image.shape[-1] == 1 else image
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


class Progress:
    """A minimal progress line on stderr: ``label  done/total  items/s  eta``.

    Prints at most every ``interval`` seconds (and once at close). Silent when ``quiet``.
    """

    def __init__(self, total: int | None, label: str = "", unit: str = "img",
                 interval: float = 2.0, quiet: bool | None = None):
        self.total = total
        self.label = label
        self.unit = unit
        self.interval = interval
        self.quiet = bool(os.environ.get("HISTAUG_QUIET")) if quiet is None else quiet
        self.done = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return self.done / dt if dt > 0 else 0.0

    def _print(self, now: float, final: bool = False) -> None:
        if self.quiet:
            return
        dt = max(now - self.t0, 1e-9)
        rate = self.done / dt
        tot = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and not final:
            eta = f"  eta {max(self.total - self.done, 0) / rate:.0f}s"
        end = "\n" if final else "\r"
        print(f"{self.label} {self.done}{tot} {self.unit}  {rate:.1f} {self.unit}/s  {dt:.1f}s{eta}",
              end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        self._print(time.monotonic(), final=True)
