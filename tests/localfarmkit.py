"""The local farm as its user runs it: ``buildfarm`` CLI subprocesses on a private state dir.

``Farm`` holds the environment a test farm runs with (its own state dir, ports chosen by the
farm, short leases so a lost node is noticed in seconds, no developer's ``client.yaml``) and runs
the CLI against it; ``start_farm`` starts one with two host-runner nodes. Shared by the local
farm, recovery, remote CLI, API and real-sources test modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BUILDFARM = [sys.executable, "-m", "buildfarm_cli"]
"""The CLI as a user runs it (the same Python as the tests, so the same installed package)."""

FAST_LEASES = {
    "BUILDFARM_LEASE_SECONDS": "4",
    "BUILDFARM_HEARTBEAT_SECONDS": "1",
    "BUILDFARM_REAPER_SECONDS": "1",
    "BUILDFARM_REDISPATCH_SECONDS": "5",
}
"""Seconds: a killed node's steps are taken over within a few seconds instead of minutes."""


class Farm:
    """A local farm's state dir and the environment its CLI runs with."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
        # a developer's own ~/.config/buildfarm/client.yaml must not send these tests elsewhere
        self.env["XDG_CONFIG_HOME"] = str(state_dir.parent / "xdg-config")
        self.env |= {
            "BUILDFARM_STATE_DIR": str(state_dir),
            "BUILDFARM_REPO_PORT": "0",
            "BUILDFARM_API_PORT": "0",
            **FAST_LEASES,
        }

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*BUILDFARM, *args], check=False, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"buildfarm {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: str, timeout: float = 300) -> Any:
        return json.loads(self.cli("--output", "json", *args, timeout=timeout).stdout)

    def node_pid(self, node: str) -> int:
        return int((self.state_dir / "run" / f"{node}.pid").read_text())


def start_farm(tmp: Path) -> Farm:
    """A farm under ``tmp/state`` started with two host-runner nodes (the caller stops it)."""
    farm = Farm(tmp / "state")
    farm.cli("start", "--runner", "host", "--nodes", "2", timeout=120)
    return farm
