"""The local farm for real: private redis-server, Celery worker nodes, the scheduler, the
repository server, the CLI as a user runs it, and apt-get as the client.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.local.aptclient import AptClient
from buildfarm.local.procs import redis_server_command

from debpkgs import make_package, write_manifest
from helpers import free_port, wait_for, wait_until
from localfarmkit import Farm, start_farm


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    started = start_farm(tmp_path_factory.mktemp("farm"))
    yield started
    started.cli("stop", check=False)


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def test_status_shows_nodes_and_queues(farm: Farm) -> None:
    status = farm.json("status")
    assert status["running"] is True
    assert {n for n, info in status["nodes"].items() if info["online"]} == {"node1", "node2", "scheduler"}
    assert set(status["queues"]) == {"builds", "control", "node.node1", "node.node2"}


def test_build_across_two_nodes_publish_and_apt(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "par-a", build="sleep 3")
    make_package(src, "par-b", build="sleep 3")
    make_package(src, "par-c", build_depends=("par-a", "par-b"))
    manifest = write_manifest(src, ["par-a", "par-b", "par-c"], project="demo", branch="r/stx.9.0")
    view = farm.json("build", "submit", str(manifest), "--wait", "--timeout", "120")
    assert view["state"] == "succeeded", view
    steps = {s["name"]: s for s in view["steps"]}
    assert {steps["par-a"]["node"], steps["par-b"]["node"]} == {"node1", "node2"}
    # the independent steps ran at the same time, on both nodes
    assert _ts(steps["par-a"]["started_at"]) < _ts(steps["par-b"]["finished_at"])
    assert _ts(steps["par-b"]["started_at"]) < _ts(steps["par-a"]["finished_at"])
    assert _ts(steps["par-c"]["started_at"]) >= max(_ts(steps[n]["finished_at"]) for n in ("par-a", "par-b"))

    line = farm.cli("repo", "sources", "demo", "r/stx.9.0").stdout.strip().splitlines()[0]
    assert line.startswith("deb [signed-by=/etc/apt/keyrings/buildfarm.asc] http://127.0.0.1:")
    assert line.endswith("/latest ./") and "r_2fstx.9.0" in line
    key = farm.cli("repo", "key").stdout
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    apt = AptClient(tmp_path / "apt", line, key)  # apt verifies with the farm's key alone
    apt.update()
    for name, step in steps.items():
        deb = next(o for o in step["outputs"] if o["filename"].endswith(".deb"))
        downloaded = apt.download(name)
        stored = farm.state_dir / "artifacts" / "objects" / "sha256" / deb["sha256"][:2] / deb["sha256"]
        assert downloaded.read_bytes() == stored.read_bytes()

    again = farm.json("build", "submit", str(manifest), "--wait", "--timeout", "60")
    assert again["state"] == "succeeded"
    assert {s["state"] for s in again["steps"]} == {"reused"}

    # repo verify reads the signed repository with only the farm's key; a changed Release fails it.
    verified = farm.json("repo", "verify", "demo", "r/stx.9.0", "--build", str(view["id"]))
    assert sorted((v["package"], v["identical"]) for v in verified) == [(n, True) for n in sorted(steps)]
    tree = farm.state_dir / "repos" / "demo" / "r_2fstx.9.0" / "builds" / str(view["id"])
    for name in ("InRelease", "Release"):
        (tree / name).write_text((tree / name).read_text().replace("Origin: buildfarm", "Origin: attacker"))
    tampered = farm.cli("repo", "verify", "demo", "r/stx.9.0", "--build", str(view["id"]), check=False)
    assert tampered.returncode == 1 and "BADSIG" in tampered.stderr
    assert len(tampered.stderr.strip().splitlines()) == 1, tampered.stderr


def test_cli_reads_and_errors(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "loggy", build="echo hello-from-the-build")
    manifest = write_manifest(src, ["loggy"], project="cli")
    build_id = farm.json("build", "submit", str(manifest))["id"]
    wait_until(lambda: farm.json("build", "show", str(build_id))["state"] == "succeeded", 60, "build")
    logs = farm.cli("build", "logs", str(build_id), "loggy").stdout
    assert "hello-from-the-build" in logs and "succeeded" in logs
    listed = farm.json("build", "list", "--project", "cli")
    assert [b["id"] for b in listed] == [build_id]
    text = farm.cli("build", "show", str(build_id)).stdout
    assert "loggy" in text and "succeeded" in text

    cyclic = tmp_path / "cyclic"
    make_package(cyclic, "egg", build_depends=("hen",))
    make_package(cyclic, "hen", build_depends=("egg",))
    cycle_manifest = write_manifest(cyclic, ["egg", "hen"], project="cli")
    broken = tmp_path / "broken"
    make_package(broken, "mangled")
    (broken / "mangled" / "debian" / "control").write_text(
        "Source: mangled\nBuild-Depends: a (>>\n\nPackage: mangled\n"
    )
    broken_manifest = write_manifest(broken, ["mangled"], project="cli")
    builds_before = len(farm.json("build", "list"))
    bad = src / "bad.yaml"
    bad.write_text("project: cli\nbranch: main\nkind: nightly\npackages: [{path: ../../etc}]\n")
    cases = [
        (["build", "submit", str(bad)], "packages[0].path: path '../../etc' escapes the manifest's tree", 1),
        (["build", "submit", str(cycle_manifest)], "Build-Depends form a cycle: ", 1),
        (["build", "submit", str(broken_manifest)], "mangled: debian/control: cannot parse Build-Depends", 1),
        (["build", "show", "9999"], "build 9999 does not exist", 1),
        (["build", "logs", str(build_id), "nope"], "has no step 'nope' (steps: loggy)", 1),
        (
            ["build", "retry", str(build_id)],
            "only failed or cancelled builds can be retried",
            1,
        ),
        (["build", "cancel", str(build_id)], "only a running build can be cancelled", 1),
        (["repo", "sources", "cli", "other"], "no successful build", 1),
        (["repo", "sources", "cli", "../x"], "invalid branch name", 1),
    ]
    for args, message, code in cases:
        result = farm.cli(*args, check=False)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert len(farm.json("build", "list")) == builds_before  # no half-recorded build


SERVER_STACK = ("fastapi", "sqlalchemy", "celery", "buildfarm.engine", "redis")
"""What the API process has imported: a local command reaching it over its owner socket does not."""


def _imported(
    farm: Farm, *args: str, check: bool = True
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules ``buildfarm ARGS`` imports (``-X importtime`` names each on stderr), and its result."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "buildfarm_cli", *args],
        env=farm.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 or not check, result.stderr[-2000:]
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    return names, result


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("error: "))


def test_local_commands_reach_the_running_api_over_its_owner_socket(farm: Farm, tmp_path: Path) -> None:
    socket_file = farm.state_dir / "run" / "api.sock"
    assert socket_file.is_socket() and socket_file.stat().st_mode & 0o777 == 0o600
    src = tmp_path / "src"
    make_package(src, "sock")
    manifest = write_manifest(src, ["sock"], project="sock")
    imported, submitted = _imported(farm, "--output", "json", "build", "submit", str(manifest), "--wait")
    assert json.loads(submitted.stdout)["state"] == "succeeded"
    assert not imported & set(SERVER_STACK), sorted(imported & set(SERVER_STACK))
    build_id = str(json.loads(submitted.stdout)["id"])

    # the farm's checks hold over the socket: a core process dead, changing builds is refused
    repo_server = int((farm.state_dir / "run" / "repo-server.pid").read_text())
    os.kill(repo_server, signal.SIGTERM)
    wait_until(lambda: not _alive(repo_server), 20, "the repository server to end")
    stopped = f"error: the local farm in {farm.state_dir} is stopped: run `buildfarm start`"
    imported, refused = _imported(farm, "build", "retry", build_id, check=False)
    assert (refused.returncode, _refusal(refused)) == (1, stopped)
    assert "sqlalchemy" not in imported
    # the API process dead: the same commands run in-process, with the same answers
    api = int((farm.state_dir / "run" / "api.pid").read_text())
    os.kill(api, signal.SIGTERM)
    wait_until(lambda: not _alive(api), 20, "the API process to end")
    assert not socket_file.exists()  # it removed its socket on the way out
    imported, refused = _imported(farm, "build", "retry", build_id, check=False)
    assert (refused.returncode, _refusal(refused)) == (1, stopped)
    assert "sqlalchemy" in imported
    imported, shown = _imported(farm, "--output", "json", "build", "show", build_id)
    assert json.loads(shown.stdout)["state"] == "succeeded" and "sqlalchemy" in imported
    farm.cli("start", timeout=120)  # the missing processes only
    assert socket_file.is_socket()
    imported, _shown = _imported(farm, "build", "show", build_id)
    assert "sqlalchemy" not in imported


def test_follow_logs_while_running(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "ticker", build="for i in 1 2 3 4; do echo tick-$$i; sleep 0.5; done")
    manifest = write_manifest(src, ["ticker"], project="follow")
    build_id = farm.json("build", "submit", str(manifest))["id"]
    followed = farm.cli("build", "logs", str(build_id), "ticker", "--follow", "--timeout", "60").stdout
    assert [f"tick-{i}" in followed for i in range(1, 5)] == [True] * 4
    assert "succeeded" in followed.splitlines()[-1]


def test_failed_build_keeps_latest_and_retry(farm: Farm, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "flaky")
    manifest = write_manifest(src, ["flaky"], project="atomic")
    first = farm.json("build", "submit", str(manifest), "--wait", "--timeout", "60")
    line = farm.cli("repo", "sources", "atomic", "main").stdout.strip().splitlines()[0]
    apt = AptClient(tmp_path / "apt", line, farm.cli("repo", "key").stdout)
    apt.update()
    before = apt.download("flaky").read_bytes()

    flag = tmp_path / "allow"
    make_package(src, "flaky", version="2.0", build=f"test -e {flag} || {{ echo not yet; exit 1; }}")
    failed = farm.cli(
        "--output", "json", "build", "submit", str(manifest), "--wait", "--timeout", "60", check=False
    )
    assert failed.returncode == 1
    view = json.loads(failed.stdout)
    assert view["state"] == "failed"
    apt.update()
    assert apt.download("flaky").read_bytes() == before  # latest still serves build 1
    assert first["id"] != view["id"]

    flag.touch()
    farm.cli("build", "retry", str(view["id"]), "--wait", "--timeout", "60")
    apt.update()
    assert apt.download("flaky").read_bytes() != before  # now 2.0


def test_killed_node_build_completes_on_the_other(tmp_path: Path) -> None:
    farm = start_farm(tmp_path)
    try:
        src, pids, release = tmp_path / "src", tmp_path / "builder-pids", tmp_path / "release"
        # The first attempt cannot finish before the node is killed: it waits for `release`.
        script = tmp_path / "wait-for-release.sh"
        script.write_text(
            f"echo $$ >> {pids}\n"
            f"for i in $(seq 900); do [ -e {release} ] && exit 0; sleep 0.1; done\n"
            "exit 1\n"
        )
        make_package(src, "victim", build=f"sh {script}")
        manifest = write_manifest(src, ["victim"], project="kill")
        build_id = farm.json("build", "submit", str(manifest))["id"]

        def running_node() -> str | None:
            step = farm.json("build", "show", str(build_id))["steps"][0]
            return step["node"] if step["state"] == "running" else None

        def first_builder() -> int | None:
            started = pids.read_text().split() if pids.exists() else []
            return int(started[0]) if started else None

        node = wait_for(running_node, 30, "victim to start")  # one reading, acted on as it was seen
        builder = wait_for(first_builder, 30, "the first attempt's builder to start")
        os.killpg(farm.node_pid(node), signal.SIGKILL)  # the whole node: its worker processes
        wait_until(lambda: not _alive(builder), 20, "the dead node's builder to be gone")
        release.touch()
        deadline = time.monotonic() + 90
        view = farm.json("build", "show", str(build_id))
        while view["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.5)
            view = farm.json("build", "show", str(build_id))
        assert view["state"] == "succeeded", view
        step = view["steps"][0]
        survivor = ({"node1", "node2"} - {node}).pop()
        assert (step["node"], step["attempt"]) == (survivor, 2)
        assert sorted(o["filename"].split("_")[0] for o in step["outputs"]) == ["victim", "victim"]
        packages = (farm.state_dir / "repos" / "kill" / "main" / "latest" / "Packages").read_text()
        assert packages.count("Package: victim\n") == 1
        status = farm.json("status")
        assert status["nodes"][node]["online"] is False and status["nodes"][survivor]["online"] is True
        # the dead attempt's work directory is the reaper's to remove (it runs every second here)
        work = farm.state_dir / "work"
        wait_until(lambda: not list(work.glob(f"{build_id}-*")), 20, "the dead attempt's work dir swept")
    finally:
        farm.cli("stop", check=False)


def test_broker_down_is_temporary_and_records_nothing(tmp_path: Path) -> None:
    port = free_port()
    redis_cmd = redis_server_command(port, tmp_path)
    broker = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    farm = Farm(tmp_path / "state")
    farm.env["BUILDFARM_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: farm.cli("status", check=False).returncode in (0, 1), 10, "cli")
        farm.cli("start", "--runner", "host", "--nodes", "1", timeout=120)
        src = tmp_path / "src"
        make_package(src, "patient")
        manifest = write_manifest(src, ["patient"], project="broker")
        broker.terminate()
        broker.wait()
        result = farm.cli("build", "submit", str(manifest), check=False)
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert "cannot reach the broker redis://127.0.0.1:" in result.stderr
        assert "try again later" in result.stderr and "Traceback" not in result.stderr
        assert farm.json("build", "list") == []  # nothing half-recorded
        broker = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)  # the broker comes back
        view = farm.json("build", "submit", str(manifest), "--wait", "--timeout", "90")
        assert view["state"] == "succeeded", view
    finally:
        farm.cli("stop", check=False)
        broker.terminate()
        broker.wait()
