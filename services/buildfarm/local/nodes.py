"""Nodes of the local farm one by one: ``buildfarm node start/stop/list``.

A node is a Celery worker with a name (its identity: its queue ``node.<name>``, the ``node``
column of the steps it ran, its pid and log files) and the farm's runner settings. The farm
file lists every node of the farm and those stopped on purpose; ``buildfarm start`` brings back
a node that died but leaves one stopped on purpose alone, until ``buildfarm node start``.
Starting or stopping a node never touches another process of the farm.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildfarm.local import launch
from buildfarm.local.farm import core_alive, read_farm_file, write_farm_file
from buildfarm.local.launch import check_node_name, farm_nodes, stopped_nodes
from buildfarm.local.private import private_state_dir
from buildfarm.local.procs import Supervisor
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.settings import Settings, load_settings


@dataclass
class NodeInfo:
    name: str
    state: str
    """running; stopped (on purpose, ``buildfarm node stop``); dead (``buildfarm start`` restarts it)."""
    pid: int | None
    online: bool
    """answers Celery's ping."""
    active_tasks: int


@dataclass
class NodeChange:
    name: str
    changed: bool
    """False: it already was as asked (running, or stopped)."""
    state: str


def _running_farm(settings: Settings) -> dict[str, object]:
    record = read_farm_file(settings)
    if not record:
        raise PermanentError(f"no local farm in {settings.state_dir}: run `buildfarm start`")
    if not core_alive(settings):
        raise PermanentError(
            f"the local farm in {settings.state_dir} is not running whole: run `buildfarm start`"
        )
    return record


def start_node(settings: Settings, name: str) -> NodeChange:
    """Start node ``name`` as it was (or add it to the farm when it is new)."""
    check_node_name(name)
    private_state_dir(settings.state_dir)
    record = _running_farm(settings)
    nodes, held = farm_nodes(record), stopped_nodes(record)
    if name not in nodes or name in held:
        record["nodes"] = [*nodes, name] if name not in nodes else nodes
        record["stopped_nodes"] = [n for n in held if n != name]
        write_farm_file(settings, record)
    sup = Supervisor(settings.state_dir)
    if sup.pid(name) is not None:
        return NodeChange(name, False, "running")
    settings = load_settings(state_dir=settings.state_dir)
    launch.launch(settings, sup, record, [name])
    return NodeChange(name, True, "running")


def stop_node(settings: Settings, name: str) -> NodeChange:
    """Stop node ``name`` (its running steps are retried elsewhere) and keep it stopped."""
    record = read_farm_file(settings)
    nodes = farm_nodes(record)
    if name not in nodes:
        raise NotFoundError(
            f"no node {name!r} in the farm in {settings.state_dir} (nodes: {', '.join(nodes) or 'none'})"
        )
    held = stopped_nodes(record)
    if name not in held:
        record["stopped_nodes"] = [*held, name]
        write_farm_file(settings, record)
    return NodeChange(name, Supervisor(settings.state_dir).stop(name), "stopped")


def list_nodes(settings: Settings) -> list[NodeInfo]:
    record = read_farm_file(settings)
    sup = Supervisor(settings.state_dir)
    held = set(stopped_nodes(record))
    alive = settings.broker.url is not None and core_alive(settings)
    pings = launch.ping(settings) if alive else {}
    busy = launch.active(settings) if alive else {}
    result = []
    for name in farm_nodes(record):
        pid = sup.pid(name)
        state = "running" if pid is not None else "stopped" if name in held else "dead"
        result.append(NodeInfo(name, state, pid, name in pings, busy.get(name, 0)))
    return result
