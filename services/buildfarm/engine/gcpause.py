"""The cyclic garbage collector paused while a submit or an advance handles thousands of rows.

A no-change re-run of thousands of packages makes hundreds of thousands of short-lived objects
(ORM rows, paths, index stanzas, records) and keeps many of them until it ends: the collector's
full passes over that growing heap took about a quarter of its CPU time (ten full passes at
5000 packages), for almost nothing to free (reference counting frees what it makes).
:func:`paused` turns the collector off for the block and back on when the last block of any
thread ends, if it was on before the first began; the cycles made meanwhile are collected by
the next pass after it.  Only the timing of collection changes, never what the code does.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (blocks nest, in any threads)."""
    global _depth, _was_enabled  # noqa: PLW0603 - one collector per process
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
