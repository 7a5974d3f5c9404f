"""The web dashboard in a real browser (issue 17): Debian's chromium driven by Playwright against
a farm that really builds (uvicorn API, Celery workers, PostgreSQL, Redis).

A user logs in with a token, watches a build go green without reloading, follows a running
step's log, opens a failed step's log and downloads it, cancels a running build, and cannot see
another user's personal build.  Builds that must still be running when the page is looked at
wait for a flag file the test creates, so nothing depends on timing.  Screenshots and the page
load time of a 200-step build go to ``test-artifacts/web/`` (git-ignored) or
``$BUILDFARM_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from buildfarm.model.manifest import load_manifest
from buildfarm.model.sources import pack_tree
from buildfarm.state.db import Database
from buildfarm.state.models import Build, Step

from apikit import Api, running_api
from debpkgs import make_package, write_manifest
from helpers import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = "/usr/bin/chromium"
PROJECT = "webui"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    path = Path(os.environ.get("BUILDFARM_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make deps` (installs Debian's chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(tmp_path_factory, postgres_url, redis_url, "web_farm", {}, redis_db=9) as started:
        yield started


def submit(api: Api, token: str, manifest_path: Path) -> dict[str, Any]:
    """Upload the sources and submit the build through the REST API, as the token's user."""
    manifest = load_manifest(manifest_path)
    sources = {}
    with api.client(token) as client:
        for index, package in enumerate(manifest.packages):
            assert package.path is not None
            blob = pack_tree(manifest_path.parent / package.path)
            sha = hashlib.sha256(blob).hexdigest()
            put = client.put(
                f"/api/v1/sources/{sha}", content=blob, headers={"Content-Type": "application/octet-stream"}
            )
            assert put.status_code in (200, 201), put.text
            sources[str(index)] = sha
        response = client.post(
            "/api/v1/builds", json={"manifest": manifest.model_dump(mode="json"), "sources": sources}
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


def build_state(api: Api, token: str, build_id: int) -> str:
    with api.client(token) as client:
        return str(client.get(f"/api/v1/builds/{build_id}").json()["state"])


def step_state(api: Api, token: str, build_id: int, step: str) -> str:
    with api.client(token) as client:
        steps = client.get(f"/api/v1/builds/{build_id}").json()["steps"]
    return str(next(s["state"] for s in steps if s["name"] == step))


def login(browser: Browser, api: Api, token: str) -> Page:
    page = browser.new_context(base_url=api.url, viewport={"width": 1280, "height": 900}).new_page()
    page.goto("/ui/builds")
    expect(page).to_have_url(f"{api.url}/ui/login?next=/ui/builds")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{api.url}/ui/builds")
    return page


def gated_package(
    src: Path, name: str, flag: Path, *, fail: bool = False, build_depends: tuple[str, ...] = ()
) -> None:
    """A package whose build prints a marker, waits (bounded) for ``flag``, then ends."""
    wait = f"for i in $$(seq 1200); do [ -e {flag} ] && break; sleep 0.1; done"
    end = "exit 1" if fail else "true"
    # "MARK""ER-..." prints MARKER-...: make's echo of the command line never matches it
    build = f'echo "MARK""ER-{name}-start"; {wait}; echo "MARK""ER-{name}-end"; {end}'
    make_package(src, name, build=build, build_depends=build_depends)


def test_wrong_token_is_refused(browser: Browser, api: Api) -> None:
    page = browser.new_context(base_url=api.url).new_page()
    page.goto("/ui/login")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown token")


def test_watch_a_build_go_green_and_follow_its_log(
    browser: Browser, api: Api, tmp_path: Path, artifacts: Path
) -> None:
    token = api.user("wanda", PROJECT, "builder")
    first, second = tmp_path / "first", tmp_path / "second"
    src = tmp_path / "src"
    gated_package(src, "web-slow", first)
    gated_package(src, "web-after", second, build_depends=("web-slow",))
    view = submit(api, token, write_manifest(src, ["web-slow", "web-after"], project=PROJECT))
    build_id = view["id"]
    wait_for(
        lambda: step_state(api, token, build_id, "web-slow") == "running" or None, 60, "web-slow running"
    )

    page = login(browser, api, token)
    expect(page.locator(f'tr[data-build="{build_id}"]')).to_contain_text("running")
    page.goto(f"/ui/builds/{build_id}/steps/web-slow")
    expect(page.locator("#log")).to_contain_text("MARKER-web-slow-start")
    expect(page.locator(".following")).to_be_visible()
    expect(page.locator("#log")).not_to_contain_text("MARKER-web-slow-end")
    first.touch()
    # no reload: htmx appends what the log gains until the step ends
    expect(page.locator("#log")).to_contain_text("MARKER-web-slow-end", timeout=60_000)
    expect(page.locator(".done")).to_have_text("log complete", timeout=60_000)
    page.screenshot(path=str(artifacts / "live-log.png"), full_page=True)

    wait_for(
        lambda: step_state(api, token, build_id, "web-after") == "running" or None, 60, "web-after running"
    )
    page.goto(f"/ui/builds/{build_id}")
    expect(page.locator("#build-state")).to_have_text("running")
    second.touch()
    # no reload: htmx swaps the live part in until the build is done
    expect(page.locator("#build-state")).to_have_text("succeeded", timeout=120_000)
    # both steps are the critical path: web-after waited for web-slow
    for step in ("web-slow", "web-after"):
        node = page.locator(f'g.node[data-step="{step}"]')
        expect(node).to_have_class(re.compile(r"state-succeeded critical"))
    expect(page.locator("svg.gantt rect.bar")).to_have_count(2)
    page.screenshot(path=str(artifacts / "build-graph.png"), full_page=True)

    page.goto("/ui/nodes")
    for node in ("node1", "node2"):
        expect(page.locator(f'tr[data-node="{node}"]')).to_contain_text("yes")
    page.goto("/ui/repos")
    expect(page.locator("pre.apt").first).to_contain_text(f"/{PROJECT}/main/latest")
    page.goto("/ui/schedules")
    expect(page.get_by_text("No schedule configured.")).to_be_visible()
    denied = page.goto("/ui/storage")
    assert denied is not None and denied.status == 403  # every project's sizes: admins only

    admin = login(browser, api, api.admin)
    admin.goto("/ui/storage")
    expect(admin.locator("svg.storage rect.bar").first).to_be_visible()
    expect(admin.locator("table")).to_contain_text(f"{PROJECT} / main")
    admin.screenshot(path=str(artifacts / "storage.png"), full_page=True)


def test_open_and_download_a_failed_steps_log(
    browser: Browser, api: Api, tmp_path: Path, artifacts: Path
) -> None:
    token = api.user("fred", PROJECT, "builder")
    src = tmp_path / "src"
    make_package(src, "web-broken", build='echo "MARK""ER-broken-why"; exit 1')
    build_id = submit(api, token, write_manifest(src, ["web-broken"], project=PROJECT, branch="broken"))["id"]
    wait_for(lambda: build_state(api, token, build_id) == "failed" or None, 120, "the failed build")

    page = login(browser, api, token)
    page.goto(f"/ui/builds/{build_id}")
    page.locator("table.steps").get_by_role("link", name="web-broken").click()
    expect(page).to_have_url(f"{api.url}/ui/builds/{build_id}/steps/web-broken")
    expect(page.locator("#log")).to_contain_text("MARKER-broken-why")
    page.screenshot(path=str(artifacts / "failed-step-log.png"), full_page=True)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the log").click()
    saved = tmp_path / "downloaded.log"
    download.value.save_as(saved)
    assert "MARKER-broken-why" in saved.read_text()


def test_cancel_a_running_build(browser: Browser, api: Api, tmp_path: Path) -> None:
    token = api.user("carla", PROJECT, "builder")
    flag = tmp_path / "never"
    src = tmp_path / "src"
    gated_package(src, "web-stuck", flag)
    build_id = submit(api, token, write_manifest(src, ["web-stuck"], project=PROJECT, branch="stuck"))["id"]
    wait_for(
        lambda: step_state(api, token, build_id, "web-stuck") == "running" or None, 60, "web-stuck running"
    )

    page = login(browser, api, token)
    page.goto(f"/ui/builds/{build_id}")
    page.get_by_role("button", name="Cancel build").click()
    expect(page.locator("#build-state")).to_have_text("cancelled", timeout=60_000)
    flag.touch()  # lets the builder end if the cancel had not stopped it


def test_a_personal_build_is_invisible_to_another_user(browser: Browser, api: Api, tmp_path: Path) -> None:
    owner = api.user("pam", PROJECT, "builder")
    other = api.user("otto", PROJECT, "builder")
    src = tmp_path / "src"
    make_package(src, "web-mine")
    manifest = write_manifest(src, ["web-mine"], project=PROJECT, branch="pam-topic", kind="personal")
    build_id = submit(api, owner, manifest)["id"]

    mine = login(browser, api, owner)
    mine.goto(f"/ui/builds?kind=personal&project={PROJECT}")
    expect(mine.locator(f'tr[data-build="{build_id}"]')).to_be_visible()

    theirs = login(browser, api, other)
    theirs.goto(f"/ui/builds?project={PROJECT}")
    expect(theirs.locator("table.builds")).to_be_visible()
    expect(theirs.locator(f'tr[data-build="{build_id}"]')).to_have_count(0)
    response = theirs.goto(f"/ui/builds/{build_id}")
    assert response is not None and response.status == 404
    expect(theirs.get_by_role("alert")).to_contain_text("does not exist")


def test_page_load_of_a_200_step_build(browser: Browser, api: Api, artifacts: Path) -> None:
    """Measured, not asserted (speed belongs in `make bench`): written to page-load.json."""
    token = api.user("bella", PROJECT, "builder")
    db = Database(api.database_url)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    try:
        with db.session() as session:
            build = Build(
                project=PROJECT,
                branch="big",
                kind="nightly",
                user="bella",
                state="succeeded",
                manifest={},
                environment_id="env",
                created_at=start,
                finished_at=start + dt.timedelta(minutes=50),
            )
            session.add(build)
            session.flush()
            for i in range(200):
                deps = [f"pkg-{j:03d}" for j in (i - 1, i - 7, i - 20) if j >= 0 and i % 10 != 0]
                began = start + dt.timedelta(seconds=10 * i)
                session.add(
                    Step(
                        build_id=build.id,
                        name=f"pkg-{i:03d}",
                        version="1.0",
                        origin="test",
                        source_sha256="0" * 64,
                        tree_hash="0" * 64,
                        input_key=f"{i:064d}",
                        depends_on=deps,
                        state="succeeded",
                        attempt=1,
                        node=f"node{i % 4 + 1}",
                        started_at=began,
                        finished_at=began + dt.timedelta(seconds=25),
                        ready_at=began,
                    )
                )
            build_id = build.id
    finally:
        db.dispose()

    page = login(browser, api, token)
    timings = []
    for _ in range(5):
        begin = time.perf_counter()
        response = page.goto(f"/ui/builds/{build_id}", wait_until="load")
        timings.append(round(time.perf_counter() - begin, 3))
        assert response is not None and response.status == 200
        server = response.headers.get("server-timing", "")
    expect(page.locator("svg.graph g.node")).to_have_count(200)
    expect(page.locator("svg.gantt rect.bar")).to_have_count(200)
    page.screenshot(path=str(artifacts / "build-200-steps.png"))
    with httpx.Client(base_url=api.url, cookies={"buildfarm_session": token}) as client:
        size = len(client.get(f"/ui/builds/{build_id}").content)
    record = {
        "steps": 200,
        "load_seconds": timings,
        "median": sorted(timings)[2],
        "server_timing": server,
        "html_bytes": size,
    }
    (artifacts / "page-load.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n200-step build page: {record}")
    phone = browser.new_context(base_url=api.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.add_cookies([{"name": "buildfarm_session", "value": token, "url": api.url + "/ui"}])
    small = phone.new_page()
    small.goto("/ui/builds")
    expect(small.locator("table.builds")).to_be_visible()
    small.screenshot(path=str(artifacts / "builds-phone.png"), full_page=True)
