"""git repositories served over the network on loopback, as the farm's URL policy wants them.

The farm fetches git sources only from network URLs of allowed hosts (model/urlpolicy.py):
``file://`` and local paths are refused. Tests serve their repositories with ``git daemon`` on
127.0.0.1 and give the farm :data:`LOOPBACK_GIT` (settings allowing ``git://`` on 127.0.0.1),
as an admin's allow-list would. A daemon starts in ~50 ms.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from types import TracebackType

from helpers import free_port, wait_until

LOOPBACK_GIT: dict[str, object] = {"fetch_allow_schemes": ["git"], "fetch_allow_hosts": ["127.0.0.1"]}
"""Settings that let the farm fetch from a :class:`GitServer` (and nothing else on loopback)."""
GIT_DAEMON_START_SECONDS = 30.0


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=60,
    )


def commit_tree(tree: Path, tag: str | None = None) -> Path:
    """Make ``tree`` a git repository on branch main with one commit of everything in it."""
    git(tree, "init", "-q", "-b", "main")
    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "tree")
    if tag is not None:
        git(tree, "tag", tag)
    return tree


class GitServer:
    """``git daemon`` serving every repository below ``base`` on 127.0.0.1; stop it for an outage."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, repo: Path) -> str:
        """The git:// URL of ``repo`` (a directory below ``base``)."""
        return f"git://127.0.0.1:{self.port}/{repo.relative_to(self.base).as_posix()}"

    def start(self) -> GitServer:
        self._process = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                f"--base-path={self.base}",
                str(self.base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, GIT_DAEMON_START_SECONDS, "git daemon to listen")
        return self

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
