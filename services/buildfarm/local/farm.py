"""Start, stop and inspect the local farm: Redis, the repository server, N nodes, one scheduler.

Everything lives in one state directory, private to its owner (:mod:`buildfarm.local.private`):
``farm.json`` (what was started, read by every process through the settings: ports, the private
Redis's password, the nodes, the environment the farm was started with), pid files, logs, the
SQLite database, artifacts and repositories, and the farm's signing key (``signing/``, made on
first start when no ``signing_key_file`` is set).

``start`` on a farm of which some processes still run starts only the missing ones, from the farm
file, and never touches the running ones nor the broker's data: a node that died comes back
under its own name while a build runs on the other node. Nodes come and go one by one with
:mod:`buildfarm.local.nodes`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from buildfarm.backends.signing import generate_key, signing_dir, signing_home, stop_agent
from buildfarm.dispatch.celery_app import BUILD_QUEUE, CONTROL_QUEUE, node_queue
from buildfarm.local import launch
from buildfarm.local.launch import (
    API,
    APT_CACHE,
    CORE,
    REDIS,
    REGISTRY,
    REPO_SERVER,
    SCHEDULER,
    expected_processes,
    farm_nodes,
    node_names,
    recorded_environment,
    stopped_nodes,
)
from buildfarm.local.private import (
    new_password,
    private_state_dir,
    redacted_url,
    url_password,
    write_private_json,
)
from buildfarm.local.procs import Supervisor, free_apt_cache_port, free_port, port_open
from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.settings import FARM_FILE, Settings, load_settings
from buildfarm.state.db import upgrade
from buildfarm.wiring import check_backends

__all__ = ["SCHEDULER", "FarmStatus", "node_names", "start", "status", "stop"]

DEFAULT_NODES = 2


@dataclass
class FarmStatus:
    running: bool
    state_dir: str
    redis_url: str | None
    repo_url: str | None
    runner: str | None
    api_url: str | None = None
    registry_url: str | None = None
    apt_proxy: str | None = None  # the package cache builds fetch through
    processes: dict[str, bool] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)
    queues: dict[str, int] = field(default_factory=dict)
    running_steps: list[dict[str, Any]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    """What this ``start`` started (empty: everything was running already)."""
    warnings: list[str] = field(default_factory=list)


def _farm_file(settings: Settings) -> Path:
    return settings.state_dir / FARM_FILE


def read_farm_file(settings: Settings) -> dict[str, Any]:
    path = _farm_file(settings)
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()))


def write_farm_file(settings: Settings, record: dict[str, Any]) -> None:
    write_private_json(_farm_file(settings), record)


def _check_tools(settings: Settings) -> None:
    """What the farm's processes need of this machine: its tools, and the runner's user namespaces
    (one line saying why and what to do, before anything starts)."""
    needed = {"apt-ftparchive": "apt-utils", "dpkg-buildpackage": "dpkg-dev"}
    if settings.repository.kind == "local":
        needed["gpg"] = "gnupg"  # signs every published Release
    if not settings.registry.url:
        needed["docker-registry"] = "docker-registry"
    if settings.builders.runner == "sbuild":
        needed |= {"sbuild": "sbuild", "mmdebstrap": "mmdebstrap", "newuidmap": "uidmap"}
    if settings.builders.runner == "unshare":
        needed |= {"unshare": "util-linux", "mmdebstrap": "mmdebstrap", "newuidmap": "uidmap"}
    if not settings.broker.url:
        needed["redis-server"] = "redis-server"
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if missing:
        raise PermanentError(
            f"missing tools; install the Debian packages: apt-get install {' '.join(missing)}"
        )
    if settings.builders.runner in ("unshare", "sbuild"):  # here, not as every node's first step fails
        from buildfarm.runners.unshare import check_namespaces

        check_namespaces(settings.builders.runner)


def _pick_port(host: str, wanted: int, variable: str) -> int:
    port = wanted or free_port(host)
    if port_open(host, port):
        raise PermanentError(f"port {port} on {host} is taken: set {variable} to a free one (or 0)")
    return port


def forget_runtime(settings: Settings) -> None:
    """Drop the farm file of a stopped farm so the next start is configured afresh."""
    _farm_file(settings).unlink(missing_ok=True)


def any_alive(settings: Settings) -> bool:
    """Cheap check (pid files only) that some process of the farm still runs."""
    sup = Supervisor(settings.state_dir)
    return any(sup.pid(n) is not None for n in sup.names())


def start(
    settings: Settings, nodes: int | None = None, prepare: Any = None, runner: str | None = None
) -> FarmStatus:
    """Start the local farm, or the processes of it that are not running.

    A farm of which nothing runs is configured afresh (``nodes``, default 2; ``runner``). On a
    farm of which something runs, only what is missing starts, from the farm file; ``nodes`` and
    ``runner`` must then match it (nodes are added and removed with ``buildfarm node``).
    """
    if nodes is not None and nodes < 1:
        raise PermanentError("a farm needs at least one node")
    state = settings.state_dir
    private_state_dir(state)
    sup = Supervisor(state)
    record = read_farm_file(settings)
    if record and any_alive(settings):
        return _start_missing(settings, sup, record, nodes, runner)
    _check_tools(settings)
    for name in sup.names():  # pid files of a farm that died whole: nothing of it runs
        sup.stop(name)
    try:
        return _start_fresh(settings, sup, nodes or DEFAULT_NODES, prepare)
    except BaseException:
        for name in sup.names():  # never leave half a farm running
            sup.stop(name)
        forget_runtime(settings)
        raise


def _start_missing(
    settings: Settings, sup: Supervisor, record: dict[str, Any], nodes: int | None, runner: str | None
) -> FarmStatus:
    members = farm_nodes(record)
    if nodes is not None and nodes != len(members):
        raise PermanentError(
            f"the farm in {settings.state_dir} has {len(members)} node(s) ({', '.join(members)}): "
            "add or remove nodes with `buildfarm node start/stop NAME`, or `buildfarm stop` first"
        )
    if runner is not None and runner != record.get("runner"):
        raise PermanentError(
            f"the farm in {settings.state_dir} runs with runner {record.get('runner')}: "
            f"`buildfarm stop` first to start it with runner {runner}"
        )
    missing = [n for n in expected_processes(record, sup) if sup.pid(n) is None]
    settings = load_settings(state_dir=settings.state_dir)
    launch.launch(settings, sup, record, missing)
    result = status(settings)
    result.started = missing
    if launch.redis_is_private(record, sup) and url_password(record.get("redis_url")) is None:
        result.warnings.append(
            "this farm's Redis has no password (started by an older buildfarm): "
            "`buildfarm stop`, then `buildfarm start`, gives it one"
        )
    held = stopped_nodes(record)
    if held:
        result.warnings.append(
            f"stopped on purpose, left stopped: {', '.join(held)} (`buildfarm node start NAME`)"
        )
    return result


def _start_fresh(settings: Settings, sup: Supervisor, nodes: int, prepare: Any) -> FarmStatus:
    state = settings.state_dir
    record: dict[str, Any] = {
        "runner": settings.builders.runner,
        "nodes": node_names(nodes),
        "node_concurrency": settings.builders.concurrency,
        "lease_seconds": settings.steps.lease_seconds,
        "heartbeat_seconds": settings.steps.heartbeat_seconds,
        "reaper_seconds": settings.steps.reaper_seconds,
        "redispatch_seconds": settings.steps.redispatch_seconds,
        "repo_host": settings.repository.host,
        "api_host": settings.api.host,
        "environment": recorded_environment(),
        "redis_private": not settings.broker.url,
        "registry_private": not settings.registry.url,
    }
    if settings.broker.url:
        record["redis_url"] = settings.broker.url
    else:  # a private broker with a password only the farm file (0600) holds
        record["redis_url"] = f"redis://:{new_password()}@127.0.0.1:{free_port()}/0"
    # the local registry: image steps push here (seeded with debian:<distribution> on first use)
    record["registry_url"] = settings.registry.url or f"http://127.0.0.1:{free_port()}"
    warnings = _plan_apt_cache(settings, record) + _runner_warnings(settings)
    if settings.repository.kind == "local":
        # Signed repositories with no setup: the farm's own key, kept across starts.
        key_file = settings.signing.key_file or generate_key(signing_dir(state))
        record["signing_key_file"] = str(key_file)
    record["repo_port"] = _pick_port(
        settings.repository.host, settings.repository.port, "BUILDFARM_REPO_PORT"
    )
    record["api_port"] = _pick_port(settings.api.host, settings.api.port, "BUILDFARM_API_PORT")
    write_farm_file(settings, record)
    for directory in ("artifacts", "repos", "work"):  # made here, 0700, before any node (umask 022)
        (state / directory).mkdir(mode=0o700, exist_ok=True)
    settings = load_settings(state_dir=state)
    brokers = [n for n in (REDIS, REGISTRY, APT_CACHE) if n in expected_processes(record, sup)]
    launch.launch(settings, sup, record, brokers)
    upgrade(settings.effective_database_url)
    check_backends(settings)
    if prepare is not None:
        prepare(settings)  # e.g. make the sbuild base tarball, with a progress display
    rest = [n for n in expected_processes(record, sup) if n not in brokers]
    launch.launch(settings, sup, record, rest)
    result = status(settings)
    result.started = [*brokers, *rest]
    result.warnings += warnings
    return result


def _runner_warnings(settings: Settings) -> list[str]:
    """What the runner will do less well on this machine (its nodes' first steps say it too)."""
    if settings.builders.runner != "unshare":
        return []
    from buildfarm.runners.base import chroot_root
    from buildfarm.runners.unshare import overlay_fallback

    fallback = overlay_fallback(chroot_root(settings.buildenv.sbuild_tmpdir, settings.state_dir))
    return [] if fallback is None else [f"the unshare runner finds {fallback}"]


def _plan_apt_cache(settings: Settings, record: dict[str, Any]) -> list[str]:
    """Decide the farm's package cache: the configured proxy, else a private apt-cacher-ng
    (before the environment is made, so that fetches through it too); returns warnings."""
    record["apt_cache_private"] = False
    if settings.buildenv.apt_proxy:
        record["apt_proxy"] = settings.buildenv.apt_proxy
        return []
    if not settings.buildenv.apt_cache:
        return []
    if shutil.which("apt-cacher-ng") is None:
        return [
            "apt-cacher-ng is not installed: steps fetch packages straight from the mirrors "
            "(apt-get install apt-cacher-ng, or set BUILDFARM_APT_CACHE=false)"
        ]
    record["apt_cache_private"] = True
    record["apt_proxy"] = f"http://127.0.0.1:{free_apt_cache_port()}"
    return []


def stop(settings: Settings) -> list[str]:
    """Stop every process of the farm: nodes and scheduler first, Redis last."""
    sup = Supervisor(settings.state_dir)
    last = {REDIS: 3, REGISTRY: 2, APT_CACHE: 2, REPO_SERVER: 1, API: 1}
    order = sorted(sup.names(), key=lambda n: (last.get(n, 0), n))
    stopped = [name for name in order if sup.stop(name)]
    stop_agent(signing_home(settings.state_dir))  # the nodes' signing started it
    # the unshare runner's unpacked trees (tmpfs): no node uses them any more
    from buildfarm.runners.base import chroot_root
    from buildfarm.runners.unshare import remove_trees

    remove_trees(chroot_root(settings.buildenv.sbuild_tmpdir, settings.state_dir))
    record = read_farm_file(settings)
    if record:
        if REDIS in stopped:
            record.pop("redis_url", None)
        if REGISTRY in stopped:
            record.pop("registry_url", None)
        if APT_CACHE in stopped:
            record.pop("apt_proxy", None)
        write_farm_file(settings, record)
    return stopped


def core_alive(settings: Settings) -> bool:
    """The processes without which nothing moves (nodes may come and go): pid files only."""
    sup = Supervisor(settings.state_dir)
    record = read_farm_file(settings)
    if not record:
        return False
    core = [n for n in expected_processes(record, sup) if n in (REDIS, REGISTRY, APT_CACHE, *CORE)]
    return all(sup.pid(n) is not None for n in core)


def was_started(settings: Settings) -> bool:
    return _farm_file(settings).is_file()


def status(settings: Settings) -> FarmStatus:
    sup = Supervisor(settings.state_dir)
    farm = read_farm_file(settings)
    processes = {name: sup.pid(name) is not None for name in sup.names()}
    result = FarmStatus(
        running=core_alive(settings),
        state_dir=str(settings.state_dir),
        redis_url=redacted_url(farm.get("redis_url")),
        repo_url=settings.repository.url if farm.get("repo_port") else None,
        api_url=settings.api.url if farm.get("api_port") else None,
        registry_url=farm.get("registry_url"),
        apt_proxy=farm.get("apt_proxy"),
        runner=farm.get("runner"),
        processes=processes,
    )
    if not result.running or not settings.broker.url:
        return result
    pings = launch.ping(settings)
    busy = launch.active(settings)
    held = set(stopped_nodes(farm))
    for node in [*farm_nodes(farm), SCHEDULER]:
        result.nodes[node] = {"online": node in pings, "active_tasks": busy.get(node, 0)}
        if node in held:
            result.nodes[node]["stopped"] = True  # on purpose: `buildfarm node start` brings it back
    try:
        client = redis.Redis.from_url(settings.broker.url, socket_timeout=2)
        for queue in [BUILD_QUEUE, CONTROL_QUEUE, *(node_queue(n) for n in farm_nodes(farm))]:
            result.queues[queue] = int(client.llen(queue))
    except redis.RedisError as exc:
        where = redacted_url(settings.broker.url)
        raise ServiceUnavailableError(f"Redis at {where} does not answer: {exc}") from exc
    return result
