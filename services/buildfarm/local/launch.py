"""What each process of the local farm runs, and starting some of them until they answer.

A process is known by its name (``redis``, ``registry``, ``apt-cache``, ``repo-server``, ``api``,
``node<N>`` or any node name, ``scheduler``) and everything it needs comes from the farm file (``farm.json``):
its port, the Redis password, the node's name and queue, and the ``BUILDFARM_*`` environment the
farm was first started with. So a process started again after it died (``buildfarm start`` on a
partly running farm, ``buildfarm node start``) comes back exactly as it was, whatever shell
starts it.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from buildfarm.dispatch.celery_app import BUILD_QUEUE, CONTROL_QUEUE, make_celery, node_queue
from buildfarm.local.private import url_password, write_private_text
from buildfarm.local.procs import (
    PRIVATE_UMASK,
    Supervisor,
    apt_cache_command,
    apt_cache_config,
    port_open,
    redis_config,
    redis_server_command,
    registry_command,
    registry_config,
    registry_env,
    wait_until,
)
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import Settings
from buildfarm.runners.process import BUILDER_UMASK

READY_TIMEOUT_SECONDS = 60.0
"""Bound on waiting for Redis, the repository server and every node to answer after start."""
REDIS = "redis"
REGISTRY = "registry"
APT_CACHE = "apt-cache"
"""apt-cacher-ng: the farm's package cache, so N steps and nodes fetch each .deb from outside once."""
REPO_SERVER = "repo-server"
API = "api"
SCHEDULER = "scheduler"
CORE = (REPO_SERVER, API, SCHEDULER)
_NODE_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_NOT_NODES = frozenset({REDIS, REGISTRY, APT_CACHE, REPO_SERVER, API, SCHEDULER})


def node_names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


def check_node_name(name: str) -> str:
    """A node name is a Celery node name, a queue (``node.<name>``) and a pid file name."""
    if not _NODE_NAME.fullmatch(name) or name in _NOT_NODES:
        raise PermanentError(
            f"invalid node name {name!r}: lower-case letters, digits and '-', starting with a letter, "
            f"at most 32 characters, not one of {', '.join(sorted(_NOT_NODES))}"
        )
    return name


def child_env(state_dir: Path, record: dict[str, Any]) -> dict[str, str]:
    """The environment of a farm process: the ``BUILDFARM_*`` variables the farm was started with
    (recorded in the farm file), not those of the shell that happens to start it again."""
    env = dict(os.environ)
    recorded = record.get("environment")
    if isinstance(recorded, dict):
        env = {k: v for k, v in env.items() if not k.startswith("BUILDFARM_")}
        env |= {str(k): str(v) for k, v in recorded.items()}
    env["BUILDFARM_STATE_DIR"] = str(state_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def recorded_environment() -> dict[str, str]:
    """What :func:`child_env` replays: this process's ``BUILDFARM_*`` variables."""
    return {k: v for k, v in os.environ.items() if k.startswith("BUILDFARM_") and k != "BUILDFARM_STATE_DIR"}


def farm_nodes(record: dict[str, Any]) -> list[str]:
    return [str(n) for n in record.get("nodes", [])]


def stopped_nodes(record: dict[str, Any]) -> list[str]:
    """Nodes stopped on purpose (``buildfarm node stop``): ``buildfarm start`` leaves them stopped."""
    return [str(n) for n in record.get("stopped_nodes", [])]


def redis_is_private(record: dict[str, Any], sup: Supervisor) -> bool:
    # Farm files of older versions do not say: a redis pid file means the farm started its own.
    return bool(record.get("redis_private", (sup.run_dir / f"{REDIS}.pid").exists()))


def registry_is_private(record: dict[str, Any], sup: Supervisor) -> bool:
    return bool(record.get("registry_private", (sup.run_dir / f"{REGISTRY}.pid").exists()))


def apt_cache_is_private(record: dict[str, Any]) -> bool:
    return bool(record.get("apt_cache_private", False))


def expected_processes(record: dict[str, Any], sup: Supervisor) -> list[str]:
    """Every process the farm should be running, in start order."""
    held = set(stopped_nodes(record))
    names = [REDIS] if redis_is_private(record, sup) else []
    names += [REGISTRY] if registry_is_private(record, sup) else []
    names += [APT_CACHE] if apt_cache_is_private(record) else []
    names += [REPO_SERVER, API]
    names += [n for n in farm_nodes(record) if n not in held]
    return [*names, SCHEDULER]


def _url_port(url: str | None, what: str) -> int:
    port = urlsplit(url or "").port
    if port is None:
        raise PermanentError(
            f"the farm file records no port for {what}: `buildfarm stop`, then `buildfarm start`"
        )
    return port


def _free_or_refuse(host: str, port: int, name: str) -> None:
    if port_open(host, port):
        raise PermanentError(
            f"cannot start {name} again: another process took its port {port} on {host} "
            "(`buildfarm stop`, then `buildfarm start` picks new ports)"
        )


def _celery_worker(name: str, queues: str, concurrency: int, *extra: str) -> list[str]:
    """A Celery worker of the local farm.  Without Celery's worker heartbeat: an event every 2 s
    that only a monitor (Flower, ``celery events``) reads and the local farm runs none (whether a
    node is up is asked by ping, :func:`ping`), and sending it was a few per cent of each idle
    worker's CPU."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "buildfarm.dispatch.worker:app",
        "worker",
        *extra,
        "-n",
        f"{name}@{socket.gethostname()}",
        "-Q",
        queues,
        "--pool",
        "threads",
        "-c",
        str(concurrency),
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]


def _command(name: str, settings: Settings, record: dict[str, Any]) -> list[str]:
    """The command line of one farm process; no secret on it (``ps`` shows it to every user)."""
    state = settings.state_dir
    if name == REDIS:
        directory = state / "redis"
        directory.mkdir(mode=0o700, exist_ok=True)
        config = directory / "redis.conf"
        port = _url_port(record.get("redis_url"), "Redis")
        write_private_text(config, redis_config(port, directory, url_password(record.get("redis_url"))))
        return redis_server_command(port, directory, config=config)
    if name == REGISTRY:
        directory = state / "registry"
        (directory / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
        config = directory / "config.yml"
        port = _url_port(record.get("registry_url"), "the registry")
        write_private_text(config, registry_config(directory / "data", port))
        return registry_command(config)
    if name == APT_CACHE:
        directory = state / "apt-cache"
        for sub in ("conf", "cache", "log"):
            (directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        port = _url_port(record.get("apt_proxy"), "the package cache")
        write_private_text(directory / "conf" / "acng.conf", apt_cache_config(directory, port))
        return apt_cache_command(directory / "conf")
    if name == REPO_SERVER:
        (state / "repos").mkdir(mode=0o700, exist_ok=True)
        return [
            sys.executable,
            "-m",
            "buildfarm.backends.httpserve",
            "--root",
            str(state / "repos"),
            "--host",
            settings.repository.host,
            "--port",
            str(settings.repository.port),
        ]
    if name == API:
        return [
            sys.executable,
            "-m",
            "buildfarm.local.serve",  # the API, and for the farm's user its owner socket
            "--host",
            settings.api.host,
            "--port",
            str(settings.api.port),
        ]
    if name == SCHEDULER:
        return _celery_worker(SCHEDULER, CONTROL_QUEUE, 2, "-B", "-s", str(state / "run" / "beat-schedule"))
    check_node_name(name)
    return _celery_worker(name, f"{BUILD_QUEUE},{node_queue(name)}", settings.builders.concurrency)


def _listener(name: str, settings: Settings, record: dict[str, Any]) -> tuple[str, int] | None:
    """Where a process listens once it is up (None: a Celery worker, which answers pings)."""
    if name == REDIS:
        return "127.0.0.1", _url_port(record.get("redis_url"), "Redis")
    if name == REGISTRY:
        return "127.0.0.1", _url_port(record.get("registry_url"), "the registry")
    if name == APT_CACHE:
        return "127.0.0.1", _url_port(record.get("apt_proxy"), "the package cache")
    if name == REPO_SERVER:
        return settings.repository.host, settings.repository.port
    if name == API:
        return settings.api.host, settings.api.port
    return None


def launch(settings: Settings, sup: Supervisor, record: dict[str, Any], names: list[str]) -> None:
    """Start ``names`` (in that order) and wait until each answers; leave every other process alone.

    A listener starts only when its port is free (its own earlier copy is dead, so another
    process took it); a Celery worker is ready when it answers a ping.
    """
    env = child_env(settings.state_dir, record)
    for name in names:
        listener = _listener(name, settings, record)
        if listener is not None:
            _free_or_refuse(*listener, name)
        sup.start(
            name,
            _command(name, settings, record),
            env=registry_env(env) if name == REGISTRY else _with_worker_metrics(name, settings, record, env),
            umask=PRIVATE_UMASK if name in _NOT_NODES else BUILDER_UMASK,
        )
        if listener is not None:  # the next ones may need it (nodes need Redis)
            _wait_listening(listener, name, sup.log_path(name))
    workers = {n for n in names if _listener(n, settings, record) is None}
    if workers:
        logs = [sup.log_path(n) for n in sorted(workers)]
        wait_until(lambda: workers <= set(ping(settings)), READY_TIMEOUT_SECONDS, "celery nodes", logs)


def _with_worker_metrics(
    name: str, settings: Settings, record: dict[str, Any], env: dict[str, str]
) -> dict[str, str]:
    """Celery workers of the local farm serve /metrics on a free port (in their port file) unless
    the farm was started with a port of its own."""
    if _listener(name, settings, record) is not None or "BUILDFARM_WORKER_METRICS_PORT" in env:
        return env
    return env | {"BUILDFARM_WORKER_METRICS_PORT": "0"}


def _wait_listening(listener: tuple[str, int], name: str, log: Path) -> None:
    wait_until(lambda: port_open(*listener), READY_TIMEOUT_SECONDS, name, [log])


def ping(settings: Settings, timeout: float = 1.0) -> dict[str, Any]:
    """The Celery workers that answer, by name (without ``@host``)."""
    return _inspect(settings, timeout, lambda i: i.ping())


def active(settings: Settings, timeout: float = 1.0) -> dict[str, int]:
    """Tasks each Celery worker is running now."""
    return {k: len(v) for k, v in _inspect(settings, timeout, lambda i: i.active()).items()}


def _inspect(settings: Settings, timeout: float, ask: Callable[[Any], Any]) -> dict[str, Any]:
    try:
        replies = ask(make_celery(settings).control.inspect(timeout=timeout)) or {}
    except Exception:  # broker down: no node answers
        return {}
    return {name.split("@", 1)[0]: reply for name, reply in replies.items()}
