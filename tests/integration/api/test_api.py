"""The REST API under a real ASGI server (uvicorn, started by the farm) on PostgreSQL, Redis and
real Celery workers: authentication, roles, uploads, bad input, limits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from buildfarm.api.limits import WINDOW_SECONDS
from buildfarm.local.aptclient import AptClient
from buildfarm.model.errors import BuildfarmError, ManifestError, PermanentError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.sources import pack_tree
from buildfarm.state.db import Database
from buildfarm.state.models import Step, StepKind, Token
from buildfarm_cli.httpclient import HttpClient

from apikit import Api, running_api
from debpkgs import make_package
from helpers import wait_for
from localfarmkit import BUILDFARM

RATE = 400
UPLOAD_LIMIT = 64 * 1024


def _upload_and_submit(client: httpx.Client, manifest_path: Path, **override: Any) -> httpx.Response:
    manifest = load_manifest(manifest_path)
    sources = {}
    for index, package in enumerate(manifest.packages):
        assert package.path is not None
        blob = pack_tree(manifest_path.parent / package.path)
        import hashlib

        sha = hashlib.sha256(blob).hexdigest()
        missing = client.post("/api/v1/sources/missing", json={"sha256": [sha]}).json()["missing"]
        if missing:
            put = client.put(
                f"/api/v1/sources/{sha}", content=blob, headers={"Content-Type": "application/octet-stream"}
            )
            assert put.status_code == 201, put.text
        sources[str(index)] = sha
    body = {"manifest": manifest.model_dump(mode="json") | override, "sources": sources}
    return client.post("/api/v1/builds", json=body)


def _manifest(root: Path, names: list[str], project: str, kind: str = "nightly", **build: str) -> Path:
    for name in names:
        make_package(root, name, **build)  # type: ignore[arg-type]
    path = root / "buildfarm.yaml"
    path.write_text(
        f"project: {project}\nbranch: main\nkind: {kind}\npackages:\n"
        + "".join(f"  - path: {n}\n" for n in names)
    )
    return path


def _wait(client: httpx.Client, build_id: int, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/api/v1/builds/{build_id}").json()
        if view["state"] in ("succeeded", "failed", "cancelled"):
            return dict(view)
        time.sleep(0.3)
    raise AssertionError(f"build {build_id} did not finish")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(
        tmp_path_factory,
        postgres_url,
        redis_url,
        "api_farm",
        {
            "BUILDFARM_API_RATE_PER_MINUTE": str(RATE),
            "BUILDFARM_API_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
            "BUILDFARM_API_MAX_RUNNING_BUILDS": "2",
        },
        redis_db=3,
    ) as started:
        yield started


def test_submit_from_a_directory_follow_and_apt(api: Api, tmp_path: Path) -> None:
    token = api.user("carol", "web", "builder")
    manifest = _manifest(tmp_path / "src", ["api-one", "api-two"], "web")
    with api.client(token) as client:
        created = _upload_and_submit(client, manifest)
        assert created.status_code == 201, created.text
        build_id = created.json()["id"]
        view = _wait(client, build_id)
        assert view["state"] == "succeeded" and view["user"] == "carol"
        known = {step["id"]: step["revision"] for step in view["steps"]}
        unchanged = client.post(f"/api/v1/builds/{build_id}/changes", json={"known": known}).json()
        assert unchanged["state"] == "succeeded" and unchanged["steps"] == []  # --wait's poll: nothing new
        everything = client.post(f"/api/v1/builds/{build_id}/changes", json={}).json()
        assert everything["steps"] == view["steps"]
        log = client.get(f"/api/v1/builds/{build_id}/steps/api-one/log")
        assert log.status_code == 200 and "succeeded" in log.text
        assert int(log.headers["X-Next-Offset"]) == len(log.content)
        assert log.headers["X-Step-Live"] == "0"
        followed = client.get(f"/api/v1/builds/{build_id}/steps/api-two/log", params={"follow": True})
        assert "succeeded" in followed.text
        line = client.get("/api/v1/repos/web/main/sources").json()["line"]
        key = httpx.get(f"{api.url}/api/v1/repos/key").json()  # public, like the repositories
        listed = client.get("/api/v1/builds", params={"project": "web", "per_page": 1}).json()
        assert listed["total"] >= 1 and len(listed["items"]) == 1 and listed["per_page"] == 1
    assert line.startswith(f"deb [signed-by={key['signed_by']}] ")
    apt = AptClient(tmp_path / "apt", line, key["public_key"])
    apt.update()
    assert apt.download("api-one").name.startswith("api-one_1.0")


def test_a_tree_dpkg_source_refuses_after_the_build_is_recorded_fails_it_once(
    api: Api, tmp_path: Path
) -> None:
    """The build is recorded before its trees are packed: a tree that reads well but that
    ``dpkg-source -b`` refuses (a native version with a revision) fails the build with that one
    line, which the submit still answers, and nothing is published."""
    token = api.user("dana", "late", "builder")
    src = tmp_path / "src"
    make_package(src, "late-good")
    make_package(src, "late-bad", version="1.0-1")
    manifest = src / "buildfarm.yaml"
    manifest.write_text(
        "project: late\nbranch: main\nkind: nightly\npackages:\n  - path: late-good\n  - path: late-bad\n"
    )
    with api.client(token) as client:
        refused = _upload_and_submit(client, manifest)
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]["message"]
        assert message.startswith("packages[1] (late-bad): dpkg-source -b failed: ")
        assert "native package version may not have a revision" in message
        (build,) = client.get("/api/v1/builds", params={"project": "late"}).json()["items"]
        view = _wait(client, build["id"])
    assert (view["state"], view["error"], view["published"]) == ("failed", message, None)
    assert {step["state"] for step in view["steps"]} <= {"cancelled", "succeeded"}


def test_status_lists_each_node_with_the_labels_it_advertises(api: Api) -> None:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
    with api.client(api.admin) as client:

        def labelled() -> dict[str, list[str]] | None:
            nodes = client.get("/api/v1/status").json()["nodes"]
            found = {name: node["labels"] for name, node in nodes.items() if node["labels"]}
            return found if len(found) == 2 else None

        nodes = wait_for(labelled, 60, "both nodes to report their labels")
    for labels in nodes.values():
        assert f"arch={arch.stdout.strip()}" in labels and "builder=host" in labels


def test_authentication_and_roles(api: Api, tmp_path: Path) -> None:
    builder = api.user("dave", "shop", "builder")
    other = api.user("erin", "shop", "builder")
    viewer = api.user("vera", "shop", "viewer")
    with api.client(None) as anonymous:
        response = anonymous.get("/api/v1/builds")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    with api.client("bf_not-a-real-token") as wrong:
        assert wrong.get("/api/v1/whoami").status_code == 401
    manifest = _manifest(tmp_path / "src", ["shop-pkg"], "shop", build="sleep 4")
    with api.client(viewer) as client:
        denied = (
            _upload_and_submit(client, manifest)
            if False
            else client.post(
                "/api/v1/builds",
                json={"manifest": load_manifest(manifest).model_dump(mode="json"), "sources": {}},
            )
        )
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    with api.client(builder) as client:
        release = _upload_and_submit(client, manifest, kind="release")
        assert release.status_code == 403  # a release needs a maintainer
        build_id = _upload_and_submit(client, manifest).json()["id"]
    with api.client(other) as client:
        refused = client.post(f"/api/v1/builds/{build_id}/cancel")
        assert refused.status_code == 403
        assert "another user's build" in refused.json()["error"]["message"]
    with api.client(builder) as client:
        assert client.post(f"/api/v1/builds/{build_id}/cancel").json()["state"] == "cancelled"
        personal = _upload_and_submit(client, manifest, kind="personal").json()["id"]
        _wait(client, personal)
    with api.client(other) as client:
        assert client.get(f"/api/v1/builds/{personal}").status_code == 404
        assert client.post(f"/api/v1/builds/{personal}/changes", json={}).status_code == 404
        ids = [b["id"] for b in client.get("/api/v1/builds", params={"project": "shop"}).json()["items"]]
        assert personal not in ids and build_id in ids
    with api.client(api.admin) as admin:
        assert admin.get(f"/api/v1/builds/{personal}").status_code == 200

    # revoked and expired tokens are refused; the token never comes back after creation
    with api.client(api.admin) as admin:
        created = admin.post("/api/v1/admin/users/dave/tokens", json={"name": "short"}).json()
        assert admin.delete(f"/api/v1/admin/tokens/{created['id']}").status_code == 204
    with api.client(created["token"]) as revoked:
        assert revoked.get("/api/v1/whoami").json()["error"]["message"] == "this token was revoked"
    with api.client(api.admin) as admin:
        expiring = admin.post("/api/v1/admin/users/dave/tokens", json={"name": "old"}).json()
    db = Database(api.database_url)
    with db.session() as session:
        session.execute(
            update(Token)
            .where(Token.id == expiring["id"])
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    db.dispose()
    with api.client(expiring["token"]) as expired:
        assert expired.get("/api/v1/whoami").json()["error"]["message"] == "this token has expired"
    with api.client(builder) as client:
        assert builder not in client.get("/api/v1/whoami").text
    logs = "".join(p.read_text(errors="replace") for p in (api.farm.state_dir / "logs").glob("*.log"))
    for secret in (builder, other, viewer, api.admin, created["token"]):
        assert secret not in logs


def test_bad_input_is_4xx_and_leaves_nothing(api: Api, tmp_path: Path) -> None:
    token = api.user("frank", "lab", "builder")
    with api.client(token) as client:
        before = client.get("/api/v1/builds", params={"project": "lab"}).json()["total"]
        bad = client.post(
            "/api/v1/builds",
            json={
                "manifest": {
                    "project": "lab",
                    "branch": "../x",
                    "kind": "nightly",
                    "packages": [{"path": "a"}],
                }
            },
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_manifest"
        assert "branch" in bad.json()["error"]["message"]
        unknown = client.post(
            "/api/v1/builds",
            json={
                "manifest": {
                    "project": "nowhere",
                    "branch": "main",
                    "kind": "nightly",
                    "packages": [{"path": "a"}],
                }
            },
        )
        assert unknown.status_code == 404 and "nowhere" in unknown.json()["error"]["message"]
        missing = client.post(
            "/api/v1/builds",
            json={
                "manifest": {
                    "project": "lab",
                    "branch": "main",
                    "kind": "nightly",
                    "packages": [{"path": "a"}],
                },
                "sources": {"0": "0" * 64},
            },
        )
        assert missing.status_code == 400 and "was not uploaded" in missing.json()["error"]["message"]

        big = b"x" * (UPLOAD_LIMIT + 1)
        import hashlib

        too_big = client.put(f"/api/v1/sources/{hashlib.sha256(big).hexdigest()}", content=big)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"

        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = b"evil"
            info = tarfile.TarInfo("../../escape")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        evil = raw.getvalue()
        traversal = client.put(f"/api/v1/sources/{hashlib.sha256(evil).hexdigest()}", content=evil)
        assert traversal.status_code == 400 and traversal.json()["error"]["code"] == "bad_source"
        liar = client.put(f"/api/v1/sources/{'a' * 64}", content=b"not that")
        assert liar.status_code == 400 and "not " + "a" * 64 in liar.json()["error"]["message"]

        cyclic = tmp_path / "cyc"
        make_package(cyclic, "c-one", build_depends=("c-two",))
        make_package(cyclic, "c-two", build_depends=("c-one",))
        manifest = cyclic / "m.yaml"
        manifest.write_text(
            "project: lab\nbranch: main\nkind: nightly\npackages:\n  - path: c-one\n  - path: c-two\n"
        )
        cycle = _upload_and_submit(client, manifest)
        assert cycle.status_code == 400 and "cycle" in cycle.json()["error"]["message"]
        assert client.get("/api/v1/builds", params={"project": "lab"}).json()["total"] == before
    assert not list((api.farm.state_dir / "work").glob("upload-*"))
    # found by the fuzzer: a NUL byte in a filter or a name must be a 4xx, never a database error
    with api.client(api.admin) as admin:
        for params in ({"branch": "a\x00b"}, {"user": "\x00"}, {"project": "p\x00"}):
            response = admin.get("/api/v1/builds", params=params)
            assert response.status_code == 400, (params, response.text)
        assert admin.post("/api/v1/admin/users/%00/tokens", json={"name": "t"}).status_code == 400
        assert admin.post("/api/v1/admin/users/frank/tokens", json={"name": "a\x00"}).status_code == 422


def test_rate_limit_and_running_cap(api: Api, tmp_path: Path) -> None:
    token = api.user("gina", "fast", "builder")
    # The limit counts per one-minute window: start the burst early in a window, or a window that
    # rolls over mid-burst (seen under load) lets request RATE + 2 through.
    into_window = time.time() % WINDOW_SECONDS
    if into_window > WINDOW_SECONDS - 25:
        time.sleep(WINDOW_SECONDS - into_window + 0.2)
    with api.client(token) as client:
        codes = [client.get("/api/v1/whoami").status_code for _ in range(RATE + 1)]
        assert codes[:RATE] == [200] * RATE
        limited = client.get("/api/v1/whoami")
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
    token = api.user("hank", "slow", "builder")
    with api.client(token) as client:
        ids = []
        for index in range(2):
            manifest = _manifest(tmp_path / f"s{index}", [f"slow-{index}"], "slow", build="sleep 5")
            created = _upload_and_submit(client, manifest)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        third = _upload_and_submit(client, _manifest(tmp_path / "s2", ["slow-2"], "slow"))
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_builds"
        for build_id in ids:
            client.post(f"/api/v1/builds/{build_id}/cancel")


IMAGE_MANIFEST = """\
project: pics
branch: main
kind: nightly
packages:
  - path: pic-tool
images:
  - name: pic-image
    path: {context}
    depends: [pic-tool]   # waits for a slow package: the test cancels before buildah would run
    build_args: {{MOOD: calm}}
"""


def _image_tree(root: Path, context: str = "images/pic") -> Path:
    """A package and an image context beside it, as a user's checkout holds them; the manifest."""
    make_package(root, "pic-tool", build="sleep 5")
    directory = root / context
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text("FROM scratch\nCOPY motd /etc/motd\n")
    (directory / "motd").write_text("hello from the context\n")
    manifest = root / "buildfarm.yaml"
    manifest.write_text(IMAGE_MANIFEST.format(context=context))
    return manifest


def _remote_cli(api: Api, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = api.farm.env | {"BUILDFARM_TOKEN": token}
    return subprocess.run(
        [*BUILDFARM, "--farm", api.url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_remote_submit_uploads_image_contexts(api: Api, tmp_path: Path) -> None:
    token = api.user("ivan", "pics", "builder")
    manifest = _image_tree(tmp_path / "src")
    context = manifest.parent / "images" / "pic"
    tarball = pack_tree(context)
    with HttpClient(api.url, token) as client:
        build_id = client.submit(manifest, None)
        assert client.uploads == 2  # the package's tree and the image's context
        assert client.cancel(build_id).state == "cancelled"
    db = Database(api.database_url)
    with db.session() as session:
        steps = {s.name: s for s in session.scalars(select(Step).where(Step.build_id == build_id))}
        recorded = {
            name: (step.kind, step.source_sha256, step.depends_on, step.image_spec)
            for name, step in steps.items()
        }
    db.dispose()
    assert recorded["pic-image"] == (
        StepKind.IMAGE,
        hashlib.sha256(tarball).hexdigest(),
        ["pic-tool"],
        {"dockerfile": "Dockerfile", "builder": "kaniko", "build_args": {"MOOD": "calm"}},
    )
    assert recorded["pic-tool"][0] == StepKind.PACKAGE
    stored = api.farm.state_dir / "artifacts" / "objects" / "sha256" / recorded["pic-image"][1][:2]
    assert (stored / recorded["pic-image"][1]).read_bytes() == tarball

    # the API alone: an image context must come with the submit, and only path images take one
    body = load_manifest(manifest).model_dump(mode="json")
    with api.client(token) as http:
        none = http.post("/api/v1/builds", json={"manifest": body, "sources": {}})
        assert none.status_code == 400 and none.json()["error"]["code"] == "bad_source"
        # the package's uploaded tree (its step's source is the source package the API made of it)
        package_sha = hashlib.sha256(pack_tree(manifest.parent / "pic-tool")).hexdigest()
        answers = [
            http.post("/api/v1/builds", json={"manifest": body, "sources": {"0": package_sha}, **extra})
            for extra in (
                {},
                {"contexts": {"0": "0" * 64}},
                {"contexts": {"0": package_sha, "1": package_sha}},
            )
        ]
    messages = [a.json()["error"]["message"] for a in answers]
    assert [a.status_code for a in answers] == [400, 400, 400], messages
    assert messages == [
        "images[0] (images/pic): no uploaded context given in 'contexts'",
        f"images[0] (images/pic): context {'0' * 64} was not uploaded",
        "'contexts' given for images that are not path images: ['1']",
    ]


def test_image_context_mistakes_are_one_line(api: Api, tmp_path: Path) -> None:
    token = api.user("judy", "pics", "builder")
    missing = _image_tree(tmp_path / "missing")
    shutil.rmtree(missing.parent / "images")
    escaping = _image_tree(tmp_path / "escaping")
    (escaping.parent / "images" / "pic" / "passwd").symlink_to("../../../../../../etc/passwd")
    large = _image_tree(tmp_path / "large")
    (large.parent / "images" / "pic" / "noise").write_bytes(os.urandom(UPLOAD_LIMIT + 1))
    size, limit = len(pack_tree(large.parent / "images" / "pic")), f"{UPLOAD_LIMIT}-byte limit"
    expected: list[tuple[Path, type[BuildfarmError], str]] = [
        (missing, ManifestError, "images[0].path: directory 'images/pic' does not exist"),
        (escaping, PermanentError, "symlink passwd -> ../../../../../../etc/passwd points outside"),
        (
            large,
            PermanentError,
            f"images[0] (images/pic): source tarball of {size} bytes is over the {limit}",
        ),
    ]
    with HttpClient(api.url, token) as client:
        for manifest, kind, message in expected:
            with pytest.raises(kind, match=re.escape(message)) as raised:
                client.submit(manifest, None)
            assert "\n" not in str(raised.value)
        listed = client.list(project="pics", user="judy")
    assert listed == []  # nothing was recorded
    for manifest, _kind, message in expected:  # the CLI prints the same single line, exit 1
        result = _remote_cli(api, token, "build", "submit", str(manifest))
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    # a crafted context tarball whose symlink leaves the tree is refused at upload
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        link = tarfile.TarInfo("Dockerfile")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(link)
    evil = raw.getvalue()
    with api.client(token) as http:
        refused = http.put(f"/api/v1/sources/{hashlib.sha256(evil).hexdigest()}", content=evil)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_source", refused.text
    assert "outside" in refused.json()["error"]["message"]
