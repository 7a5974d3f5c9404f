"""Notifications from a real farm (issue 17): the scheduler sends a signed webhook to a local
HTTP receiver and a mail to a real SMTP server (aiosmtpd) after builds fail and are fixed,
retries a receiver that answers 503, and never tells a project's hook about a personal build."""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from buildfarm.notify import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from buildfarm.state.db import Database
from buildfarm.state.models import Notification

from apikit import Api, running_api
from debpkgs import make_package, write_manifest
from helpers import free_port, wait_for

pytestmark = pytest.mark.integration

SECRET = b"s3cret-hook-key"


class Receiver(ThreadingHTTPServer):
    """A webhook receiver that checks each signature; answers 503 to the first ``refuse`` posts."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.posts: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            if not hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), sign(SECRET, body)):
                self.server.bad_signatures += 1
                self.send_response(401)
            elif self.server.refuse > 0:
                self.server.refuse -= 1
                self.send_response(503)
            else:
                post = json.loads(body)
                post["_path"], post["_event"] = self.path, self.headers[EVENT_HEADER]
                post["_delivery"] = self.headers[DELIVERY_HEADER]
                self.server.posts.append(post)
                self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver(refuse=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
    receiver: Receiver,
    mailbox: tuple[Mailbox, int],
) -> Iterator[Api]:
    secret = tmp_path_factory.mktemp("hook") / "secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    hook = f"http://127.0.0.1:{receiver.server_address[1]}"
    targets = [
        {
            "name": "nt-project",
            "project": "nt",
            "webhook": f"{hook}/project",
            "secret_file": str(secret),
            "email": ["team@example.org"],
        },
        {
            "name": "nt-mine",
            "user": "ntuser",
            "events": ["finished"],
            "webhook": f"{hook}/mine",
            "secret_file": str(secret),
        },
    ]
    env = {
        "BUILDFARM_NOTIFICATIONS": json.dumps(targets),
        "BUILDFARM_NOTIFY_SMTP_HOST": "127.0.0.1",
        "BUILDFARM_NOTIFY_SMTP_PORT": str(mailbox[1]),
        "BUILDFARM_NOTIFY_TICK_SECONDS": "1",
        "BUILDFARM_NOTIFY_RETRY_SECONDS": "1",
        "BUILDFARM_NOTIFY_DASHBOARD_URL": "https://farm.example.org",
    }
    with running_api(tmp_path_factory, postgres_url, redis_url, "notify_farm", env, redis_db=8) as started:
        yield started


def _submit(api: Api, manifest: Path) -> dict[str, Any]:
    result = api.farm.cli("--output", "json", "build", "submit", str(manifest), "--wait", check=False)
    return dict(json.loads(result.stdout))


def test_failed_then_fixed_reach_the_hook_and_the_mailbox(
    api: Api, receiver: Receiver, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    broken, fixed = tmp_path / "broken", tmp_path / "fixed"
    make_package(broken, "nt-pkg", build="exit 1")
    make_package(fixed, "nt-pkg", build="true")
    first = _submit(api, write_manifest(broken, ["nt-pkg"], project="nt"))
    assert first["state"] == "failed"
    second = _submit(api, write_manifest(fixed, ["nt-pkg"], project="nt"))
    assert second["state"] == "succeeded"

    def project_posts() -> list[dict[str, Any]] | None:
        posts = [p for p in receiver.posts if p["_path"] == "/project"]
        return posts if len(posts) == 2 else None

    posts = wait_for(project_posts, 60, "two signed project webhooks", interval=0.2)
    by_event = {p["event"]: p for p in posts}
    assert set(by_event) == {"failed", "fixed"}
    assert by_event["failed"]["build"]["id"] == first["id"]
    assert by_event["failed"]["failed_steps"] == ["nt-pkg"]
    assert by_event["fixed"]["build"]["id"] == second["id"]
    assert by_event["fixed"]["build"]["url"] == f"https://farm.example.org/ui/builds/{second['id']}"
    assert all(p["_event"] == p["event"] for p in posts)
    assert receiver.bad_signatures == 0

    box, _port = mailbox
    messages = wait_for(lambda: box.messages if len(box.messages) == 2 else None, 60, "two mails")
    subjects = sorted(str(m["Subject"]) for _, m in messages)
    assert subjects == [
        f"[buildfarm] nt/main build {first['id']} failed",
        f"[buildfarm] nt/main build {second['id']} fixed",
    ]
    assert all(rcpt == ["team@example.org"] for rcpt, _ in messages)

    # the receiver refused the first post: that delivery took two attempts, and all are settled
    db = Database(api.database_url)
    try:
        with db.session() as session:
            rows = session.query(Notification).filter(Notification.target == "nt-project").all()
            assert sorted(r.state for r in rows) == ["delivered"] * 4
            assert sorted(r.attempts for r in rows if r.channel == "webhook") == [1, 2]
    finally:
        db.dispose()


def test_personal_build_reaches_only_its_user(api: Api, receiver: Receiver, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "nt-own", build="exit 1")
    manifest = write_manifest(src, ["nt-own"], project="nt", branch="mine", kind="personal")
    api.farm.env["USER"] = "ntuser"
    api.farm.env["LOGNAME"] = "ntuser"
    try:
        personal = _submit(api, manifest)
    finally:
        api.farm.env.pop("USER")
        api.farm.env.pop("LOGNAME")
    assert personal["state"] == "failed" and personal["user"] == "ntuser", personal

    def mine() -> dict[str, Any] | None:
        return next(
            (p for p in receiver.posts if p["_path"] == "/mine" and p["build"]["id"] == personal["id"]), None
        )

    post = wait_for(mine, 60, "the user's own webhook", interval=0.2)
    assert post["event"] == "failed" and post["build"]["kind"] == "personal"
    # discovery weighs every target at once: the user's row exists, so the project's was decided
    db = Database(api.database_url)
    try:
        with db.session() as session:
            rows = session.query(Notification).filter(Notification.build_id == personal["id"]).all()
            assert {(r.target, r.channel) for r in rows} == {("nt-mine", "webhook")}
    finally:
        db.dispose()
    assert not [p for p in receiver.posts if p["_path"] == "/project" and p["build"]["id"] == personal["id"]]
