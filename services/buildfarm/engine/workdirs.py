"""A node's step work directories, removed beside its next steps instead of before them.

Removing a step's tree waits on the filesystem far more than it computes (on this machine's
ext4: ~15 ms of a step on an idle disk, 84 ms for 3 ms of CPU on a busy one), and the node's next
claim waited for it.  A node that stops (or is killed) before a removal ends leaves the directory
to the reaper's sweep of dead attempts (:func:`buildfarm.engine.reaper.sweep_dead_attempts`), as
one killed while building does.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path


class Removals:
    """Work directories being removed, one thread each; a step that works in a directory still
    being removed (its attempt adopted again on this node) waits for that removal first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Path, threading.Thread] = {}

    def start(self, path: Path) -> None:
        thread = threading.Thread(target=self._remove, args=(path,), name=f"remove-{path.name}", daemon=True)
        with self._lock:
            self._running[path] = thread
        thread.start()

    def _remove(self, path: Path) -> None:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            with self._lock:
                if self._running.get(path) is threading.current_thread():
                    del self._running[path]

    def wait(self, path: Path | None = None, timeout: float | None = None) -> None:
        """Until the removal of ``path`` (of every directory: None) has ended, or ``timeout``
        seconds (None: no bound) are over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values()) if path is None else [self._running.get(path)]
        for thread in threads:
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


REMOVALS = Removals()
"""This process's removals of work directories (:class:`Removals`)."""
