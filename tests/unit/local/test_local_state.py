"""The local farm's state dir without its processes: private modes, reads on a stopped farm."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.local.launch import expected_processes
from buildfarm.local.private import private_state_dir, redacted_url
from buildfarm.local.procs import Supervisor, redis_config, redis_server_command
from buildfarm.model.errors import PermanentError
from buildfarm.state.db import Database, upgrade

from farmkit import finished_build


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_kept() -> Iterator[None]:
    """private_state_dir sets this process's umask: give the test run its own back."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_state_dir_made_private_and_older_ones_tightened(tmp_path: Path, umask_kept: None) -> None:
    fresh = tmp_path / "a" / "state"
    private_state_dir(fresh)
    assert _mode(fresh) == 0o700

    old = tmp_path / "old"  # as an older buildfarm left it
    (old / "logs").mkdir(parents=True)
    (old / "farm.json").write_text("{}")
    (old / "buildfarm.db").write_text("")
    for path, mode in ((old, 0o755), (old / "logs", 0o755), (old / "farm.json", 0o644)):
        path.chmod(mode)
    private_state_dir(old)
    assert (_mode(old), _mode(old / "logs"), _mode(old / "farm.json")) == (0o700, 0o700, 0o600)


def test_state_dir_holding_other_things_is_refused_not_changed(tmp_path: Path, umask_kept: None) -> None:
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    home.chmod(0o755)
    with pytest.raises(PermanentError, match="open to other users and holds more than a farm"):
        private_state_dir(home)
    assert _mode(home) == 0o755


def test_redis_password_only_in_its_config(tmp_path: Path) -> None:
    config = redis_config(6400, tmp_path, "s3cret")
    assert "requirepass s3cret\n" in config and "bind 127.0.0.1\n" in config
    command = redis_server_command(6400, tmp_path, config=tmp_path / "redis.conf")
    assert command == ["redis-server", str(tmp_path / "redis.conf")]
    assert "requirepass" not in redis_config(6400, tmp_path, None)  # a farm from before: none yet
    assert redacted_url("redis://:s3cret@127.0.0.1:6400/0") == "redis://:***@127.0.0.1:6400/0"
    assert redacted_url("redis://127.0.0.1:6400/0") == "redis://127.0.0.1:6400/0"


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    env |= {"BUILDFARM_STATE_DIR": str(state), "XDG_CONFIG_HOME": str(state.parent / "xdg")}
    return subprocess.run(
        [sys.executable, "-m", "buildfarm_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reads_work_on_a_stopped_farm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    # what `buildfarm stop` leaves: the farm file without the broker, the database
    (state / "farm.json").write_text(json.dumps({"runner": "host", "nodes": ["node1"], "repo_port": 1}))
    url = f"sqlite:///{state / 'buildfarm.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as session:
        build_id = finished_build(session, project="kept").id
        session.commit()
    db.dispose()

    listed = _cli(state, "--output", "json", "build", "list")
    assert listed.returncode == 0, listed.stderr
    assert [b["id"] for b in json.loads(listed.stdout)] == [build_id]
    shown = _cli(state, "--output", "json", "build", "show", str(build_id))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == "succeeded"
    submit = _cli(state, "build", "retry", str(build_id))  # changing needs the farm running
    assert submit.returncode == 1 and "is stopped: run `buildfarm start`" in submit.stderr


def test_a_reused_pid_is_not_the_farms(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.run_dir.mkdir()
    (sup.run_dir / "api.pid").write_text(f"{os.getpid()}\n")
    assert sup.pid("api") == os.getpid()  # a pid file of an older version: the pid alone
    started = Path("/proc/self/stat").read_text().rsplit(")", 1)[-1].split()[19]
    (sup.run_dir / "api.started").write_text(f"{started}\n")
    assert sup.pid("api") == os.getpid()
    (sup.run_dir / "api.started").write_text(f"{int(started) + 1}\n")  # the kernel gave the pid away
    assert sup.pid("api") is None


def test_expected_processes_from_the_farm_file(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    record = {"nodes": ["node1", "node2", "edge-1"], "stopped_nodes": ["node2"], "redis_private": True}
    assert expected_processes(record, sup) == ["redis", "repo-server", "api", "node1", "edge-1", "scheduler"]
    sup.run_dir.mkdir()
    (sup.run_dir / "registry.pid").write_text("1\n")  # an older farm file does not say: its pid files do
    assert expected_processes({"nodes": ["node1"]}, sup) == [
        "registry",
        "repo-server",
        "api",
        "node1",
        "scheduler",
    ]
    # the farm's own package cache starts with the brokers, before the environment is made
    assert expected_processes({"nodes": ["node1"], "apt_cache_private": True}, sup)[:2] == [
        "registry",
        "apt-cache",
    ]


def test_apt_cache_config_is_private_and_below_its_port_limit(tmp_path: Path) -> None:
    from buildfarm.local.procs import (
        APT_CACHE_PORTS,
        apt_cache_command,
        apt_cache_config,
        free_apt_cache_port,
    )

    port = free_apt_cache_port()
    assert APT_CACHE_PORTS[0] <= port <= APT_CACHE_PORTS[1]  # apt-cacher-ng 3.7 fails above 32767
    config = apt_cache_config(tmp_path, port)
    assert "BindAddress: 127.0.0.1\n" in config and f"Port: {port}\n" in config
    assert f"CacheDir: {tmp_path / 'cache'}\n" in config and f"SocketPath: {tmp_path / 'socket'}\n" in config
    assert apt_cache_command(tmp_path / "conf") == ["apt-cacher-ng", "-c", str(tmp_path / "conf")]


def test_a_process_that_does_not_come_up_fails_the_start_in_one_line_naming_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_kept: None
) -> None:
    """A node that never answers ends ``launch`` with the farm's own error naming its log, which
    the CLI prints as one line (it was a traceback); ``start`` then stops what it started."""
    from buildfarm.local import launch
    from buildfarm.model.errors import ServiceUnavailableError
    from buildfarm.model.settings import load_settings

    state = tmp_path / "state"
    private_state_dir(state)
    settings = load_settings(state_dir=state)
    started: list[str] = []
    monkeypatch.setattr(launch, "ping", lambda settings: {})  # no worker ever answers
    monkeypatch.setattr(launch, "READY_TIMEOUT_SECONDS", 0.5)
    sup = Supervisor(state)
    monkeypatch.setattr(sup, "start", lambda name, command, **kwargs: started.append(name))
    with pytest.raises(ServiceUnavailableError) as refused:
        launch.launch(settings, sup, {"nodes": ["node1"]}, ["node1"])
    assert started == ["node1"]
    assert str(refused.value) == f"celery nodes: not ready after 0 s: see {state / 'logs' / 'node1.log'}"
