"""A real S3 endpoint for tests: moto's server (``moto_server``) on a free port, as a subprocess.

MinIO's server cannot be installed on these machines; moto speaks the same S3 wire protocol to
the ``minio`` SDK. Its traps: it accepts any credentials, and it keeps everything in memory, so
a restart erases every bucket (tests that need an outage pause it with SIGSTOP/SIGCONT instead).
A missing ``moto_server`` fails the tests that need it, naming what to install; nothing is skipped.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from minio import Minio

from helpers import free_port, tail, wait_until

START_TIMEOUT = 20.0
"""Seconds for moto_server to answer; it is up in ~1 s here, the margin is for a loaded CI machine."""
START_ATTEMPTS = 3
"""Another process can take a "free" port before moto binds it: retry with a new one."""
ACCESS_KEY, SECRET_KEY = "buildfarm-test", "buildfarm-test-secret"  # moto accepts any
REGION = "us-east-1"

_buckets = itertools.count(1)


@dataclass
class MotoS3:
    """One running moto_server: its ``host:port``, its process and its request log."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> Minio:
        return Minio(self.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)

    def settings(self) -> dict[str, object]:
        """Farm settings selecting this server as the S3 artifact store, on a fresh bucket."""
        return {
            "artifacts": "s3",
            "s3_endpoint": self.endpoint,
            "s3_secure": False,
            "s3_bucket": self.new_bucket(),
            "s3_access_key": ACCESS_KEY,
            "s3_secret_key": SECRET_KEY,
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket, so tests sharing the server never see each other's objects."""
        name = f"farm-test-{next(_buckets)}"
        self.client().make_bucket(name)
        return name

    def object_names(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(str(o.object_name) for o in self.client().list_objects(bucket, prefix, recursive=True))

    def requests(self, method: str, path_prefix: str) -> int:
        """How many ``method`` requests for paths starting with ``path_prefix`` the server logged."""
        # Werkzeug colours some lines (4xx, 206) with ANSI escapes even into a file.
        pattern = re.compile(rf'"(?:\x1b\[[0-9;]*m)*{method} {re.escape(path_prefix)}\S* HTTP/1\.1')
        return len(pattern.findall(self.log_path.read_text(errors="replace")))

    def pause(self) -> None:
        """Stop the server without losing its data: connections are accepted, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def _moto_server() -> str:
    # The venv's own script first: the tests may run without the venv on PATH.
    candidate = Path(sys.executable).parent / "moto_server"
    found = str(candidate) if candidate.is_file() else shutil.which("moto_server")
    if found is None:
        pytest.fail(
            "moto_server not found: install the dev extra (.venv/bin/pip install -e '.[dev]' "
            "or pip install 'moto[server]')",
            pytrace=False,
        )
    return found


def _answers(endpoint: str) -> bool:
    return httpx.get(f"http://{endpoint}/", timeout=1).status_code == 200


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_moto_s3(workdir: Path) -> Iterator[MotoS3]:
    """Start moto_server on a free port of 127.0.0.1; stop it on exit."""
    binary = _moto_server()
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        endpoint = f"127.0.0.1:{port}"
        log_path = workdir / f"moto-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # request lines reach the log at once
            )
        try:
            wait_until(
                lambda: proc.poll() is not None or _answers(endpoint),  # noqa: B023
                START_TIMEOUT,
                f"moto_server to answer on {endpoint}",
            )
        except TimeoutError as exc:
            _stop(proc)
            pytest.fail(f"{exc}\n{tail(log_path)}", pytrace=False)
        if proc.poll() is None:
            break
        if "already in use" not in tail(log_path) or attempt == START_ATTEMPTS:
            pytest.fail(f"moto_server exited at start (port {port}):\n{tail(log_path)}", pytrace=False)
    try:
        yield MotoS3(endpoint, proc, log_path)
    finally:
        _stop(proc)
