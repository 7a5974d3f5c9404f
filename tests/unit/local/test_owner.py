"""The owner socket of a local farm's API process: found only while something listens on it, and
answered only for the farm's own uid (``SO_PEERCRED``), by the real uvicorn protocol it serves."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.responses import JSONResponse, PlainTextResponse

from buildfarm.local import owner
from buildfarm.local.serve import OwnerOnly
from buildfarm.model import settings
from buildfarm.model.errors import PermanentError
from buildfarm_cli.httpclient import HttpClient

NOBODY = 65534


def test_the_socket_is_found_only_while_something_listens(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    assert owner.answering_socket(state) is None  # never started
    path = owner.socket_path(state)
    assert path == state / "run" / "api.sock"
    sock = owner.listen(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert owner.answering_socket(state) == path
    sock.close()  # a killed API process leaves its file behind: it refuses connections
    assert path.is_socket() and owner.answering_socket(state) is None
    assert owner.socket_path(tmp_path / ("d" * 120)) is None  # too long for sun_path: in-process


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user may enter (pytest's own tmp dirs are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="bf-owner-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


async def _app(scope: dict[str, object], receive: object, send: object) -> None:
    await PlainTextResponse("ok")(scope, receive, send)  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_a_peer_of_another_uid_is_hung_up_on(open_dir: Path) -> None:
    path = open_dir / "api.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    path.chmod(0o666)  # only SO_PEERCRED stands between another user and the farm here
    listening.listen(8)
    server = uvicorn.Server(uvicorn.Config(_app, http=OwnerOnly, lifespan="off", log_level="critical"))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[listening]),))
    thread.start()  # the socket listens already: connections wait in its backlog until served
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://owner") as mine:
            assert mine.get("/").text == "ok"
        other = subprocess.run(
            [
                "/usr/bin/python3",
                "-c",
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "s.connect(sys.argv[1])\n"
                "try:\n"
                "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: owner\\r\\n\\r\\n')\n"
                "    data = s.recv(100)\n"
                "except (BrokenPipeError, ConnectionResetError):\n"
                "    data = b''\n"
                "print(repr(data) if data else 'closed')\n",
                str(path),
            ],
            user=NOBODY,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert other.stdout.strip() == "closed"  # unanswered
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


def test_a_peer_is_known_by_its_uid() -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX)
    with mine, theirs:
        assert owner.peer_uid(mine) == os.getuid() and owner.is_owner(mine)


@contextmanager
def _api_process(state: Path) -> Iterator[list[tuple[str, str]]]:
    """A stand-in API process on ``state``'s owner socket (the real uvicorn protocol it serves),
    answering every request with one build; yields the (path, login) of each request."""
    asked: list[tuple[str, str]] = []

    async def api(scope: dict[str, object], receive: object, send: object) -> None:
        headers = dict(scope["headers"])  # type: ignore[call-overload]
        asked.append((str(scope["path"]), headers[owner.LOGIN_HEADER.lower().encode()].decode()))
        build = {
            "id": 7, "project": "p", "branch": "main", "kind": "nightly", "user": "ann", "state": "succeeded",
            "created_at": "2026-01-01T00:00:00+00:00", "finished_at": None, "published": None, "error": None,
        }  # fmt: skip
        await JSONResponse(build)(scope, receive, send)  # type: ignore[arg-type]

    (state / "run").mkdir(parents=True)
    path = owner.socket_path(state)
    assert path is not None
    listening = owner.listen(path)
    server = uvicorn.Server(uvicorn.Config(api, http=OwnerOnly, lifespan="off", log_level="critical"))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[listening]),))
    thread.start()
    try:
        yield asked
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


def _only_state_dir(monkeypatch: pytest.MonkeyPatch, state: Path) -> None:
    for name in [name for name in os.environ if name.upper().startswith("BUILDFARM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(state))


def test_the_cli_asks_the_api_process_over_its_owner_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's local client speaks plain HTTP on the socket, as its owner (no TLS context of a
    network client: it read the CA bundle, 25 ms of every local command).  With no setting in
    the environment it reads none: the farm checked its own when it started."""
    state = tmp_path / "state"
    _only_state_dir(monkeypatch, state)
    read: list[bool] = []
    monkeypatch.setattr(settings, "load_settings", lambda **_: read.append(True))
    with _api_process(state) as asked, HttpClient.local_farm() as client:
        assert client.local is None and client.where == f"in {state}"
        assert client.show(7).state == "succeeded"
    assert asked == [("/api/v1/builds/7", getpass.getuser())]
    assert read == []


@pytest.mark.parametrize(
    ("variable", "value", "refused"),
    [
        ("BUILDFARM_LEASE_SECONDS", "abc", "setting lease_seconds"),
        ("BUILDFARM_LEAS_SECONDS", "30", "unknown setting BUILDFARM_LEAS_SECONDS"),
        ("buildfarm_lease_seconds", "-5", "setting lease_seconds"),
    ],
)
def test_a_bad_setting_is_refused_while_the_api_process_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, refused: str
) -> None:
    state = tmp_path / "state"
    _only_state_dir(monkeypatch, state)
    monkeypatch.setenv(variable, value)
    with _api_process(state) as asked, pytest.raises(PermanentError, match=refused):
        HttpClient.local_farm()
    assert asked == []
