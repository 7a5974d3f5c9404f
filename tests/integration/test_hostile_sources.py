"""Issue 11, through the REST API with a builder's token: a hostile source runs nothing, reads
nothing of the farm host and tells nothing of its ports; an allow-listed loopback server works.

Before the fix, ``{"git": "--upload-pack=touch <marker>;false", "ref": "<a repository on the
farm>"}`` ran ``touch`` as the farm (and the API then answered 400), and ``file://`` cloned the
farm's own repositories into a build.

One in-process API (uvicorn in a thread, SQLite, the session's Redis) and one ``git daemon`` for
the module: ~3 s in all.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from buildfarm import accounts
from buildfarm.api.app import create_app

from debpkgs import make_package
from farmkit import make_test_context
from gitkit import LOOPBACK_GIT, GitServer, commit_tree
from helpers import free_port, wait_until

REDIS_DB = 11
"""A Redis database of its own: the API's rate counters do not meet other modules'."""


@dataclass
class HostileApi:
    url: str
    token: str  # a builder of project "lab"
    git: GitServer  # serves ``repo`` on 127.0.0.1, which the farm's allow-list names
    repo: Path  # also a repository on the farm host itself
    marker: Path  # a command that ran would have created it

    def submit(self, source: dict[str, Any], field: str = "packages") -> httpx.Response:
        if field == "images":
            source = {"name": "img", **source}
        manifest = {"project": "lab", "branch": "main", "kind": "nightly", field: [source]}
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}) as client:
            return client.post("/api/v1/builds", json={"manifest": manifest}, timeout=120)

    def builds(self) -> int:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}) as client:
            return int(client.get("/api/v1/builds", params={"project": "lab"}).json()["total"])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[HostileApi]:
    root = tmp_path_factory.mktemp("hostile")
    make_package(root / "served", "hostile-pkg")
    repo = commit_tree(root / "served" / "hostile-pkg", tag="v2")
    broker = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    redis.Redis.from_url(broker).flushdb()
    ctx = make_test_context(root, f"sqlite:///{root / 'farm.db'}", redis_url=broker, **LOOPBACK_GIT)
    accounts.add_project(ctx, "lab")
    accounts.add_user(ctx, "mallory")
    accounts.grant(ctx, "mallory", "lab", "builder")
    token = accounts.create_token(ctx, "mallory").token
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx.settings, ctx), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "the API to listen")
        with GitServer(root / "served") as git:
            yield HostileApi(f"http://127.0.0.1:{port}", token, git, repo, root / "pwned")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        ctx.db.dispose()


def _refused(api: HostileApi, response: httpx.Response, words: str) -> None:
    """400 bad_manifest naming ``words``; no command ran and no build was recorded."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_manifest" and words in error["message"], error
    assert "\n" not in error["message"]
    assert not api.marker.exists()


def test_option_shaped_sources_run_nothing(api: HostileApi) -> None:
    before = api.builds()
    command = f"--upload-pack=touch {api.marker};false"
    for field in ("packages", "images"):
        _refused(api, api.submit({"git": command, "ref": str(api.repo)}, field), "starts with '-'")
        _refused(api, api.submit({"git": str(api.repo), "ref": command}, field), "not a network URL")
        _refused(api, api.submit({"git": api.git.url(api.repo), "ref": command}, field), "invalid git ref")
        _refused(
            api,
            api.submit({"git": api.git.url(api.repo), "ref": "v2", "subdir": "--x"}, field),
            "starts with '-'",
        )
    assert api.builds() == before


@pytest.mark.parametrize(
    "url",
    [
        "file://{repo}",
        "{repo}",
        "ext::git-upload-pack {repo}",
        "git://127.0.0.2:{port}/hostile-pkg",  # loopback, but not the allow-listed address
        "git://[::1]:{port}/x",
        "git://169.254.169.254/x",
        "git://10.1.2.3/x",
        "git://0.0.0.0:{port}/x",
        "https://127.0.0.1:{port}/x",  # the allow-listed host, another scheme
    ],
)
def test_the_farm_host_and_its_network_are_never_read(api: HostileApi, url: str) -> None:
    before = api.builds()
    hostile = url.format(repo=api.repo, port=api.git.port)
    response = api.submit({"git": hostile, "ref": "v2"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_manifest"
    assert api.builds() == before


def test_a_refused_host_says_nothing_of_its_ports(api: HostileApi) -> None:
    """127.0.0.2 with a listening port and with a closed one: one answer, nothing connected."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.2", 0))
        listener.listen(1)
        listener.settimeout(0)
        open_port = listener.getsockname()[1]
        answers = []
        for port in (open_port, free_port("127.0.0.2")):
            response = api.submit({"git": f"git://127.0.0.2:{port}/x", "ref": "v2"})
            answers.append(
                (response.status_code, response.json()["error"]["message"].replace(str(port), "P"))
            )
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    assert answers[0] == answers[1]
    assert "does not fetch from this host" in answers[0][1]


def test_an_allow_listed_loopback_server_builds(api: HostileApi) -> None:
    response = api.submit({"git": api.git.url(api.repo), "ref": "v2"})
    assert response.status_code == 201, response.text
    assert [s["name"] for s in response.json()["steps"]] == ["hostile-pkg"]
