"""The CLI as a client of a real farm's REST API: `buildfarm start` runs it (uvicorn), the admin
is made with `buildfarm admin init`, and a builder works through `--farm URL`, getting the same
output and exit codes as the local CLI, with apt-get as the proof that the packages are there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from buildfarm.local.aptclient import AptClient
from buildfarm_cli.client import HttpClient

from debpkgs import make_package, write_manifest
from helpers import wait_until
from localfarmkit import BUILDFARM, Farm

pytestmark = pytest.mark.integration

PROJECT = "remote"
WAIT = "60"  # seconds: a build of two tiny packages takes about one on the host runner


PARALLEL_CLIS = 3
"""CLI processes run at once: each spends most of its ~1 s importing, so a few overlap well."""


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*BUILDFARM, *args], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"buildfarm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@dataclass
class Remote:
    farm: Farm
    url: str
    admin: str
    bob: str
    config_home: Path

    def local(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The local CLI: the engine against the state directory."""
        return _cli(self.farm.env, *args, check=check)

    def as_user(self, token: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI through the API with --farm, and ``token`` from BUILDFARM_TOKEN."""
        return _cli(self.farm.env | {"BUILDFARM_TOKEN": token}, "--farm", self.url, *args, check=check)

    def bob_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI as bob, who keeps the farm's URL and his token in his client file."""
        return _cli(self.farm.env | {"XDG_CONFIG_HOME": str(self.config_home)}, *args, check=check)

    def bob_json(self, *args: str) -> Any:
        return json.loads(self.bob_cli("--output", "json", *args).stdout)


def _parallel(
    *calls: Callable[[], subprocess.CompletedProcess[str]],
) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(PARALLEL_CLIS) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    tmp = tmp_path_factory.mktemp("remote")
    farm = Farm(tmp / "state")
    # No client file of whoever runs the tests: without --farm the CLI is local here.
    farm.env |= {"BUILDFARM_API_PORT": "0", "XDG_CONFIG_HOME": str(tmp / "no-config")}
    farm.cli("start", "--runner", "host", "--nodes", "1", timeout=120)
    try:
        port = json.loads((farm.state_dir / "farm.json").read_text())["api_port"]
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200, 30, "the API")
        created = json.loads(farm.cli("--output", "json", "admin", "init").stdout)
        assert set(created) == {"user", "token", "id", "expires_at"} and created["user"] == "admin"
        remote = Remote(farm, url, created["token"], "", tmp / "bob-config")
        admin = partial(remote.as_user, remote.admin, "admin")
        _parallel(partial(admin, "user", "add", "bob"), partial(admin, "project", "add", PROJECT))
        _, token = _parallel(
            partial(admin, "grant", "bob", PROJECT, "builder"), partial(admin, "token", "create", "bob")
        )
        remote.bob = token.stdout.strip()
        client_file = remote.config_home / "buildfarm" / "client.yaml"
        client_file.parent.mkdir(parents=True)
        client_file.touch(mode=0o600)
        client_file.write_text(f"url: {url}\ntoken: {remote.bob}\n")
        yield remote
    finally:
        farm.cli("stop", check=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two independent tiny packages: the manifest's directory."""
    src = tmp_path_factory.mktemp("sources")
    make_package(src, "rem-a", build="echo hello-from-rem-a")
    make_package(src, "rem-b")
    return write_manifest(src, ["rem-a", "rem-b"], project=PROJECT)


@pytest.fixture(scope="module")
def first_build(remote: Remote, sources: Path) -> dict[str, Any]:
    """bob's first build of the two packages, submitted through the API and waited for."""
    view: dict[str, Any] = remote.bob_json("build", "submit", str(sources), "--wait", "--timeout", WAIT)
    assert (view["state"], view["user"]) == ("succeeded", "bob"), view
    return view


def test_remote_build_reads_like_local_and_apt_gets_it(
    remote: Remote, first_build: dict[str, Any], tmp_path: Path
) -> None:
    view = first_build
    build = str(view["id"])

    reads = [
        ["build", "show", build],
        ["--output", "json", "build", "show", build],
        ["build", "logs", build, "rem-a"],
        ["--output", "json", "build", "list", "--project", PROJECT, "--user", "bob", "--kind", "nightly"],
        ["repo", "sources", PROJECT, "main"],
        ["--output", "json", "repo", "sources", PROJECT, "main", "--build", build],
        ["repo", "key"],
    ]
    results = _parallel(*(partial(cli, *args) for args in reads for cli in (remote.bob_cli, remote.local)))
    for args, remote_result, local_result in zip(reads, results[::2], results[1::2], strict=True):
        assert remote_result.stdout == local_result.stdout, args
    assert "hello-from-rem-a" in results[4].stdout
    assert [b["id"] for b in json.loads(results[6].stdout)] == [view["id"]]

    apt = AptClient(tmp_path / "apt", results[8].stdout.strip(), results[12].stdout)  # signed-by the farm key
    apt.update()
    for step in view["steps"]:
        deb = next(o for o in step["outputs"] if o["filename"].endswith(".deb"))
        stored = (
            remote.farm.state_dir / "artifacts" / "objects" / "sha256" / deb["sha256"][:2] / deb["sha256"]
        )
        assert apt.download(step["name"]).read_bytes() == stored.read_bytes()


def test_resubmit_uploads_only_the_changed_package(remote: Remote, sources: Path) -> None:
    with HttpClient(remote.url, remote.bob) as client:
        first = client.submit(sources, None)  # whatever earlier tests left: these trees are now on the farm
        # built (or reused) before the change: alone (not after the tests above) it is built now
        wait_until(lambda: client.show(first).state == "succeeded", 60, "the first build")
        make_package(sources.parent, "rem-b", version="1.1", build="echo changed-rem-b")
        client.uploads = 0
        build_id = client.submit(sources, None)
        assert client.uploads == 1
        # follow the changed step's log through the API to its end, as a user would
        followed = remote.bob_cli("build", "logs", str(build_id), "rem-b", "--follow", "--timeout", WAIT)
        assert "changed-rem-b" in followed.stdout
        wait_until(lambda: client.show(build_id).state == "succeeded", 30, "the build to succeed")
        assert {s.name: s.state for s in client.show(build_id).steps} == {
            "rem-a": "reused",
            "rem-b": "succeeded",
        }
        client.uploads = 0
        again = client.submit(sources, None)
        assert client.uploads == 0
        wait_until(lambda: client.show(again).state == "succeeded", 30, "the unchanged build")
        assert {s.state for s in client.show(again).steps} == {"reused"}


def test_remote_errors_are_the_local_ones(
    remote: Remote, first_build: dict[str, Any], tmp_path: Path
) -> None:
    build = str(first_build["id"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"project: {PROJECT}\nbranch: main\nkind: nightly\npackages: [{{path: ../../etc}}]\n")
    same = [
        (["build", "show", "9999"], "build 9999 does not exist"),
        (["build", "logs", build, "nope"], "has no step 'nope' (steps: rem-a, rem-b)"),
        (["build", "retry", build], "only failed or cancelled builds can be retried"),
        (["repo", "sources", PROJECT, "other"], "no successful build"),
        (["build", "submit", str(bad)], "packages[0].path: path '../../etc' escapes the manifest's tree"),
    ]
    remote_only = [
        (remote.bob, ["admin", "user", "add", "mallory"], "bob is not an admin"),
        ("bf_not-a-token", ["build", "list"], "unknown token"),
        ("", ["build", "list"], "set BUILDFARM_TOKEN or token: in the client configuration file"),
    ]
    results = _parallel(
        *(partial(cli, *args, check=False) for args, _ in same for cli in (remote.bob_cli, remote.local)),
        *(partial(remote.as_user, token, *args, check=False) for token, args, _ in remote_only),
        partial(remote.bob_cli, "status"),
    )
    pairs = results[: 2 * len(same)]
    for (args, message), remote_result, local_result in zip(same, pairs[::2], pairs[1::2], strict=True):
        assert (remote_result.returncode, remote_result.stderr) == (1, local_result.stderr), args
        assert message in remote_result.stderr, (args, remote_result.stderr)
    for (_, args, message), result in zip(remote_only, results[2 * len(same) : -1], strict=True):
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert all(remote.bob not in r.stdout + r.stderr for r in results)
    status = results[-1].stdout
    assert status.startswith(f"farm at {remote.url}") and "queues: builds=" in status


def test_remote_sources_of_a_branch_with_a_slash(remote: Remote) -> None:
    args = ["repo", "sources", PROJECT, "r/stx.9.0"]
    assert remote.bob_cli(*args, check=False).stderr == remote.local(*args, check=False).stderr


def test_local_accounts_need_no_running_farm(tmp_path: Path) -> None:
    env = Farm(tmp_path / "state").env | {"XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    created = json.loads(_cli(env, "--output", "json", "admin", "init", "--name", "root").stdout)
    assert created["user"] == "root" and created["token"].startswith("bf_")
    again, user, project = _parallel(
        partial(_cli, env, "admin", "init", check=False),
        partial(_cli, env, "admin", "user", "add", "ci", "--service"),
        partial(_cli, env, "--output", "json", "admin", "project", "add", "p"),
    )
    assert again.returncode == 1 and "already has an admin" in again.stderr
    assert user.stdout.strip() == "user ci added (service)" and json.loads(project.stdout) == {"project": "p"}
    token, granted, wrong = _parallel(
        partial(_cli, env, "admin", "token", "create", "ci", "--days", "1"),
        partial(_cli, env, "admin", "grant", "ci", "p", "viewer"),
        partial(_cli, env, "admin", "grant", "ci", "p", "owner", check=False),
    )
    assert token.stdout.strip().startswith("bf_") and token.stdout.strip() != created["token"]
    assert granted.stdout.strip() == "ci is viewer in p"
    # The local CLI goes through the API in-process: the wire model refuses the role, in one line.
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
    assert "unknown role 'owner': viewer, builder or maintainer" in wrong.stderr


def test_remote_quilt_package_sends_its_upstream_tarball_and_keys_like_dsc(
    remote: Remote, tmp_path: Path
) -> None:
    """A ``path`` tree's upstream tarball beside it travels with the tree; a local ``dsc`` travels
    with its files; both are the same source package, so the second is reused."""
    examples = Path(__file__).resolve().parents[3] / "examples"
    src = tmp_path / "src"
    shutil.copytree(examples / "greet-quilt", src / "greet-quilt")
    shutil.copyfile(examples / "greet-quilt_1.0.orig.tar.gz", src / "greet-quilt_1.0.orig.tar.gz")
    manifest = src / "buildfarm.yaml"
    manifest.write_text(
        f"project: {PROJECT}\nbranch: quilt\nkind: nightly\npackages:\n  - path: greet-quilt\n"
    )
    view = remote.bob_json("build", "submit", str(manifest), "--wait", "--timeout", "120")
    assert view["state"] == "succeeded", view
    made = tmp_path / "made"
    made.mkdir()
    shutil.copytree(src / "greet-quilt", made / "greet-quilt")
    shutil.copyfile(src / "greet-quilt_1.0.orig.tar.gz", made / "greet-quilt_1.0.orig.tar.gz")
    subprocess.run(["dpkg-source", "-b", "greet-quilt"], cwd=made, check=True, capture_output=True)
    by_dsc = made / "dsc.yaml"
    by_dsc.write_text(
        f"project: {PROJECT}\nbranch: quilt\nkind: nightly\npackages:\n  - dsc: greet-quilt_1.0-1.dsc\n"
    )
    again = remote.bob_json("build", "submit", str(by_dsc), "--wait", "--timeout", "120")
    assert again["state"] == "succeeded", again
    assert again["steps"][0]["input_key"] != ""
