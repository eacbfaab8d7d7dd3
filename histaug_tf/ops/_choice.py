"""The implementation choice of an op, scoped to a block of code in the tracing thread."""
from __future__ import annotations

import contextlib
import threading


class ImplChoice:
    """One of ``impls``, set for a ``with`` block by :meth:`scope` (thread-local: tracing runs in
    the calling thread), ``fallback`` outside any block."""

    def __init__(self, impls, fallback):
        assert fallback in impls
        self.impls, self.fallback = tuple(impls), fallback
        self._local = threading.local()

    @contextlib.contextmanager
    def scope(self, impl):
        """Inside this block :meth:`current` is ``impl``."""
        if impl not in self.impls:
            raise ValueError(f"impl must be one of {self.impls}, got {impl!r}")
        prev = getattr(self._local, "impl", None)
        self._local.impl = impl
        try:
            yield
        finally:
            self._local.impl = prev

    def current(self):
        return getattr(self._local, "impl", None) or self.fallback
