"""The local farm recovers without collateral damage and keeps its state private (issue 11).

One farm (host runner, two nodes) for the whole module: a dead node comes back alone while a
build runs on the other; nodes stop and start one by one; the state directory and the private
Redis are closed to other local users; a dead repository server is "try again later" and comes
back alone too.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from debpkgs import make_package, write_manifest
from helpers import wait_until
from localfarmkit import Farm, start_farm

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    started = start_farm(tmp_path_factory.mktemp("recovery"))
    yield started
    started.cli("stop", check=False)


def _pids(farm: Farm) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (farm.state_dir / "run").glob("*.pid")}


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _kill(farm: Farm, name: str) -> None:
    pid = _pids(farm)[name]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: _dead(pid), 30, f"{name} to die")


def _redis(farm: Farm) -> redis.Redis:
    url = json.loads((farm.state_dir / "farm.json").read_text())["redis_url"]
    return redis.Redis.from_url(url, socket_timeout=5)


def _running_view(farm: Farm, build_id: int) -> dict[str, Any]:
    """The build as shown once its step runs (one read: the node is taken from this view)."""
    seen: dict[str, Any] = {}

    def running() -> bool:
        view = farm.json("build", "show", str(build_id))
        if view["steps"][0]["state"] == "running":
            seen.update(view)
            return True
        return False

    wait_until(running, 60, f"build {build_id} to run")
    return seen


def _wait_finished(farm: Farm, build_id: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def finished() -> bool:
        view = farm.json("build", "show", str(build_id))
        seen.update(view)
        return view["state"] in ("succeeded", "failed", "cancelled")

    wait_until(finished, 120, f"build {build_id} to finish", interval=0.5)
    return seen


def test_start_brings_back_only_the_dead_node(farm: Farm, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    src = tmp_path / "src"
    # the build runs until the test lets it finish (bounded: 60 s)
    make_package(src, "patient", build=f"for i in $$(seq 600); do test -e {flag} && break; sleep 0.1; done")
    manifest = write_manifest(src, ["patient"], project="recovery")
    _redis(farm).set("recovery-marker", "kept")
    build_id = farm.json("build", "submit", str(manifest))["id"]
    busy = _running_view(farm, build_id)["steps"][0]["node"]
    idle = ({"node1", "node2"} - {busy}).pop()
    before = _pids(farm)

    _kill(farm, idle)
    result = farm.json("start")

    assert result["started"] == [idle]
    after = _pids(farm)
    assert {n: p for n, p in after.items() if n != idle} == {n: p for n, p in before.items() if n != idle}
    assert after[idle] != before[idle]
    assert _redis(farm).get("recovery-marker") == b"kept"  # the broker was not flushed
    assert result["nodes"][idle]["online"] is True
    flag.touch()
    view = _wait_finished(farm, build_id)
    assert view["state"] == "succeeded", view
    assert (view["steps"][0]["node"], view["steps"][0]["attempt"]) == (busy, 1)


def test_node_stop_and_start_one_by_one(farm: Farm) -> None:
    stopped = farm.json("node", "stop", "node2")
    assert stopped == {"name": "node2", "changed": True, "state": "stopped"}
    nodes = {n["name"]: n for n in farm.json("node", "list")}
    assert (nodes["node2"]["state"], nodes["node2"]["pid"]) == ("stopped", None)
    assert nodes["node1"]["state"] == "running"
    assert farm.json("status")["nodes"]["node2"] == {"online": False, "active_tasks": 0, "stopped": True}

    result = farm.json("start")  # a node stopped on purpose stays stopped
    assert result["started"] == []
    assert any("node2" in w for w in result["warnings"])

    before = _pids(farm)
    assert farm.json("node", "start", "node2")["changed"] is True
    assert farm.json("node", "start", "node3")["changed"] is True  # a new node joins the farm
    nodes = {n["name"]: n for n in farm.json("node", "list")}
    assert {n: (i["state"], i["online"]) for n, i in nodes.items()} == {
        "node1": ("running", True),
        "node2": ("running", True),
        "node3": ("running", True),
    }
    assert {n: p for n, p in _pids(farm).items() if n in before} == before  # nothing else restarted
    assert farm.json("node", "stop", "node3")["changed"] is True

    bad = farm.cli("node", "start", "Scheduler", check=False)
    assert bad.returncode == 1 and "invalid node name 'Scheduler'" in bad.stderr
    unknown = farm.cli("node", "stop", "node9", check=False)
    assert unknown.returncode == 1 and "no node 'node9'" in unknown.stderr
    resize = farm.cli("start", "--nodes", "5", check=False)
    assert resize.returncode == 1 and "buildfarm node start/stop NAME" in resize.stderr


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def _modes(state: Path) -> dict[str, int]:
    return {str(p.relative_to(state)): stat.S_IMODE(p.lstat().st_mode) for p in state.iterdir()}


def test_state_and_broker_are_private(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "secretive", build="echo personal-secret-output")
    manifest = write_manifest(src, ["secretive"], project="private")
    view = farm.json("build", "submit", str(manifest), "--wait", "--timeout", "120")
    assert view["state"] == "succeeded", view
    state = farm.state_dir

    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    open_to_others = {name: oct(mode) for name, mode in _modes(state).items() if mode & 0o077}
    assert open_to_others == {}
    for private in ("farm.json", "buildfarm.db", "redis/redis.conf", "logs/api.log"):
        assert stat.S_IMODE((state / private).stat().st_mode) == 0o600, private
    # another local user reads nothing: not the step's log, not the farm file
    log = state / "artifacts" / "logs" / str(view["id"]) / "secretive" / "1.log"
    assert "personal-secret-output" in log.read_text()
    assert _run(*NOBODY, "cat", "/etc/hostname").returncode == 0
    for path in (log, state / "farm.json"):
        denied = _run(*NOBODY, "cat", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, path

    # the private Redis wants the password, which no process's command line shows
    port = str(_redis(farm).connection_pool.connection_kwargs["port"])
    anonymous = _run("redis-cli", "-p", port, "ping")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    password = _redis(farm).connection_pool.connection_kwargs["password"]
    assert len(password) >= 32
    shown = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if password.encode() in cmdline.read_bytes() and cmdline.parent.name != str(os.getpid()):
                shown.append(cmdline.parent.name)
        except OSError:
            continue  # gone meanwhile
    assert shown == []
    assert "***" in farm.json("status")["redis_url"]

    # a state dir left open by an older buildfarm is closed again by the next start
    state.chmod(0o755)
    (state / "farm.json").chmod(0o644)
    assert farm.json("start")["started"] == []
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "farm.json").stat().st_mode) == 0o600


def test_repository_server_down_is_temporary_and_comes_back_alone(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "served")
    manifest = write_manifest(src, ["served"], project="served")
    assert farm.json("build", "submit", str(manifest), "--wait", "--timeout", "120")["state"] == "succeeded"
    _kill(farm, "repo-server")
    down = farm.cli("repo", "verify", "served", "main", check=False)
    assert down.returncode == 3, (down.stdout, down.stderr)
    assert "repository server does not answer" in down.stderr and "try again later" in down.stderr
    before = _pids(farm)
    assert farm.json("start")["started"] == ["repo-server"]
    assert {n: p for n, p in _pids(farm).items() if n != "repo-server"} == {
        n: p for n, p in before.items() if n != "repo-server"
    }
    verified = farm.json("repo", "verify", "served", "main")
    assert [(v["package"], v["identical"]) for v in verified] == [("served", True)]
