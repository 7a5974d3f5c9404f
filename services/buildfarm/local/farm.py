"""Start, stop and inspect the local farm: Redis, the repository server, N nodes, one scheduler.

Everything lives in one state directory: ``farm.json`` (what was started, read by every process
through the settings), pid files, logs, the SQLite database, artifacts and repositories, and the
farm's signing key (``signing/``, made on first start when no ``signing_key_file`` is set).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from buildfarm.backends.signing import generate_key, signing_dir, signing_home, stop_agent
from buildfarm.dispatch.celery_app import BUILD_QUEUE, CONTROL_QUEUE, make_celery, node_queue
from buildfarm.engine.wiring import check_backends
from buildfarm.local.procs import (
    Supervisor,
    free_port,
    port_open,
    redis_server_command,
    registry_command,
    registry_config,
    registry_env,
    wait_until,
)
from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.settings import FARM_FILE, Settings, load_settings
from buildfarm.state.db import upgrade

READY_TIMEOUT_SECONDS = 60.0
"""Bound on waiting for Redis, the repository server and every node to answer after start."""
SCHEDULER = "scheduler"


def node_names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


@dataclass
class FarmStatus:
    running: bool
    state_dir: str
    redis_url: str | None
    repo_url: str | None
    runner: str | None
    api_url: str | None = None
    registry_url: str | None = None
    processes: dict[str, bool] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)
    queues: dict[str, int] = field(default_factory=dict)
    running_steps: list[dict[str, Any]] = field(default_factory=list)


def _farm_file(settings: Settings) -> Path:
    return settings.state_dir / FARM_FILE


def read_farm_file(settings: Settings) -> dict[str, Any]:
    path = _farm_file(settings)
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()))


def _child_env(state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BUILDFARM_STATE_DIR"] = str(state_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _check_tools(settings: Settings) -> None:
    needed = {"apt-ftparchive": "apt-utils", "dpkg-buildpackage": "dpkg-dev"}
    if settings.repository == "local":
        needed["gpg"] = "gnupg"  # signs every published Release
    if not settings.registry_url:
        needed["docker-registry"] = "docker-registry"
    if settings.runner == "sbuild":
        needed |= {"sbuild": "sbuild", "mmdebstrap": "mmdebstrap", "newuidmap": "uidmap"}
    if not settings.redis_url:
        needed["redis-server"] = "redis-server"
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if missing:
        raise PermanentError(
            f"missing tools; install the Debian packages: apt-get install {' '.join(missing)}"
        )


def _pick_port(host: str, wanted: int, variable: str) -> int:
    port = wanted or free_port(host)
    if port_open(host, port):
        raise PermanentError(f"port {port} on {host} is taken: set {variable} to a free one (or 0)")
    return port


def forget_runtime(settings: Settings) -> None:
    """Drop the farm file of a stopped farm so the next start is configured afresh."""
    _farm_file(settings).unlink(missing_ok=True)


def start(settings: Settings, nodes: int = 2, prepare: Any = None) -> FarmStatus:
    """Start every process of the local farm (idempotent: a running farm is left as it is)."""
    if nodes < 1:
        raise PermanentError("a farm needs at least one node")
    current = status(settings)
    if current.running:
        return current
    _check_tools(settings)
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(state)
    for name in sup.names():  # leftovers of a farm that died half-way
        sup.stop(name)
    try:
        return _start(settings, sup, nodes, prepare)
    except BaseException:
        for name in sup.names():  # never leave half a farm running
            sup.stop(name)
        forget_runtime(settings)
        raise


def _start(settings: Settings, sup: Supervisor, nodes: int, prepare: Any) -> FarmStatus:
    state = settings.state_dir
    farm: dict[str, Any] = {
        "runner": settings.runner,
        "nodes": node_names(nodes),
        "lease_seconds": settings.lease_seconds,
        "heartbeat_seconds": settings.heartbeat_seconds,
        "reaper_seconds": settings.reaper_seconds,
        "redispatch_seconds": settings.redispatch_seconds,
    }

    if settings.redis_url:
        farm["redis_url"] = settings.redis_url
    else:
        port = free_port()
        (state / "redis").mkdir(exist_ok=True)
        sup.start(
            "redis",
            redis_server_command(port, state / "redis"),
            env=_child_env(state),
        )
        wait_until(lambda: port_open("127.0.0.1", port), READY_TIMEOUT_SECONDS, "redis-server")
        farm["redis_url"] = f"redis://127.0.0.1:{port}/0"

    if settings.registry_url:
        farm["registry_url"] = settings.registry_url
    else:  # the local registry: image steps push here (seeded with debian:<distribution> on first use)
        port = free_port()
        registry_dir = state / "registry"
        (registry_dir / "data").mkdir(parents=True, exist_ok=True)
        config = registry_dir / "config.yml"
        config.write_text(registry_config(registry_dir / "data", port))
        sup.start("registry", registry_command(config), env=registry_env(_child_env(state)))
        wait_until(lambda: port_open("127.0.0.1", port), READY_TIMEOUT_SECONDS, "docker-registry")
        farm["registry_url"] = f"http://127.0.0.1:{port}"

    if settings.repository == "local":
        # Signed repositories with no setup: the farm's own key, kept across starts.
        key_file = settings.signing_key_file or generate_key(signing_dir(state))
        farm["signing_key_file"] = str(key_file)

    repo_port = _pick_port(settings.repo_host, settings.repo_port, "BUILDFARM_REPO_PORT")
    api_port = _pick_port(settings.api_host, settings.api_port, "BUILDFARM_API_PORT")
    farm["repo_port"], farm["api_port"] = repo_port, api_port
    _farm_file(settings).write_text(json.dumps(farm, indent=2) + "\n")
    settings = load_settings(state_dir=state)
    upgrade(settings.effective_database_url)
    check_backends(settings)
    if prepare is not None:
        prepare(settings)  # e.g. make the sbuild base tarball, with a progress display

    env = _child_env(state)
    (state / "repos").mkdir(exist_ok=True)
    sup.start(
        "repo-server",
        [
            sys.executable,
            "-m",
            "buildfarm.backends.httpserve",
            "--root",
            str(state / "repos"),
            "--host",
            settings.repo_host,
            "--port",
            str(repo_port),
        ],
        env=env,
    )
    sup.start(
        "api",
        [sys.executable, "-m", "buildfarm.api", "--host", settings.api_host, "--port", str(api_port)],
        env=env,
    )
    celery = [sys.executable, "-m", "celery", "-A", "buildfarm.dispatch.worker:app"]
    host = socket.gethostname()
    for node in node_names(nodes):
        sup.start(
            node,
            [
                *celery,
                "worker",
                "-n",
                f"{node}@{host}",
                "-Q",
                f"{BUILD_QUEUE},{node_queue(node)}",
                "--pool",
                "threads",
                "-c",
                str(settings.node_concurrency),
                "--without-gossip",
                "--without-mingle",
                "-l",
                "INFO",
            ],
            env=env,
        )
    sup.start(
        SCHEDULER,
        [
            *celery,
            "worker",
            "-B",
            "-n",
            f"{SCHEDULER}@{host}",
            "-Q",
            CONTROL_QUEUE,
            "--pool",
            "threads",
            "-c",
            "2",
            "--without-gossip",
            "--without-mingle",
            "-s",
            str(state / "run" / "beat-schedule"),
            "-l",
            "INFO",
        ],
        env=env,
    )
    wait_until(lambda: port_open(settings.repo_host, repo_port), READY_TIMEOUT_SECONDS, "repository server")
    wait_until(lambda: port_open(settings.api_host, api_port), READY_TIMEOUT_SECONDS, "REST API")
    expected = {*node_names(nodes), SCHEDULER}
    wait_until(lambda: expected <= set(_ping(settings)), READY_TIMEOUT_SECONDS, "celery nodes")
    return status(settings)


def _ping(settings: Settings, timeout: float = 1.0) -> dict[str, Any]:
    try:
        app = make_celery(settings)
        replies = app.control.inspect(timeout=timeout).ping() or {}
    except Exception:  # broker down: no node answers
        return {}
    return {name.split("@", 1)[0]: reply for name, reply in replies.items()}


def _active(settings: Settings, timeout: float = 1.0) -> dict[str, int]:
    try:
        replies = make_celery(settings).control.inspect(timeout=timeout).active() or {}
    except Exception:
        return {}
    return {name.split("@", 1)[0]: len(tasks) for name, tasks in replies.items()}


def stop(settings: Settings) -> list[str]:
    """Stop every process of the farm: nodes and scheduler first, Redis last."""
    sup = Supervisor(settings.state_dir)
    order = sorted(sup.names(), key=lambda n: (n == "redis", n))
    stopped = [name for name in order if sup.stop(name)]
    stop_agent(signing_home(settings.state_dir))  # the nodes' signing started it
    farm_file = _farm_file(settings)
    if farm_file.is_file():
        data = json.loads(farm_file.read_text())
        data.pop("redis_url", None) if "redis" in stopped else None
        data.pop("registry_url", None) if "registry" in stopped else None
        farm_file.write_text(json.dumps(data, indent=2) + "\n")
    return stopped


def processes_alive(settings: Settings) -> bool:
    """Cheap check (pid files only) that every process of the farm is running."""
    sup = Supervisor(settings.state_dir)
    names = sup.names()
    return bool(names) and all(sup.pid(n) is not None for n in names)


def core_alive(settings: Settings) -> bool:
    """The processes without which nothing moves (nodes may come and go): pid files only."""
    sup = Supervisor(settings.state_dir)
    core = [n for n in sup.names() if not n.startswith("node")]
    return (
        was_started(settings)
        and {"repo-server", "api", SCHEDULER} <= set(core)
        and all(sup.pid(n) is not None for n in core)
    )


def was_started(settings: Settings) -> bool:
    return _farm_file(settings).is_file()


def status(settings: Settings) -> FarmStatus:
    sup = Supervisor(settings.state_dir)
    farm = read_farm_file(settings)
    processes = {name: sup.pid(name) is not None for name in sup.names()}
    result = FarmStatus(
        running=core_alive(settings),
        state_dir=str(settings.state_dir),
        redis_url=farm.get("redis_url"),
        repo_url=settings.repo_url if farm.get("repo_port") else None,
        api_url=settings.api_url if farm.get("api_port") else None,
        registry_url=farm.get("registry_url"),
        runner=farm.get("runner"),
        processes=processes,
    )
    if not result.running or not settings.redis_url:
        return result
    pings = _ping(settings)
    active = _active(settings)
    for node in [*farm.get("nodes", []), SCHEDULER]:
        result.nodes[node] = {"online": node in pings, "active_tasks": active.get(node, 0)}
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        for queue in [BUILD_QUEUE, CONTROL_QUEUE, *(node_queue(n) for n in farm.get("nodes", []))]:
            result.queues[queue] = int(client.llen(queue))
    except redis.RedisError as exc:
        raise ServiceUnavailableError(f"Redis at {settings.redis_url} does not answer: {exc}") from exc
    return result
