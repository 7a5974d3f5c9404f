"""A private docker-registry (Debian's distribution 2.8) for one test or module.

Started the way the local farm starts its own (buildfarm.local.procs: own config bound to
127.0.0.1 on a free port, deletes enabled unless ``deletes=False``), stopped on exit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from buildfarm.backends.registry import RegistryClient
from buildfarm.local.procs import registry_command, registry_config, registry_env
from buildfarm.model.errors import ServiceUnavailableError

from helpers import free_port, wait_until


@dataclass(frozen=True)
class Registry:
    url: str
    config: Path
    data: Path


def _answers(url: str) -> bool:
    try:
        RegistryClient(url).check()
    except ServiceUnavailableError:
        return False
    return True


@contextmanager
def running_registry(root: Path, *, deletes: bool = True) -> Iterator[Registry]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "config.yml"
    text = registry_config(root / "data", port)
    config.write_text(text if deletes else text.replace("enabled: true", "enabled: false"))
    with (root / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            registry_command(config), env=registry_env(dict(os.environ)), stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 30, "docker-registry")
        yield Registry(url, config, root / "data")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
