"""The farm's registry client authenticates when the registry requires an account (the chart's
registry does, with htpasswd), and stays anonymous otherwise (the local profile's)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from buildfarm.backends.registry import RegistryClient
from buildfarm.model.errors import ServiceUnavailableError
from buildfarm.model.settings import load_settings

EXPECTED = "Basic " + base64.b64encode(b"buildfarm:s3cret").decode()


class _Registry(BaseHTTPRequestHandler):
    """/v2/ answers 200 only to the right account, as distribution's htpasswd auth does."""

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == EXPECTED
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_client_sends_the_account(registry_url: str) -> None:
    RegistryClient(registry_url, auth=("buildfarm", "s3cret")).check()
    with pytest.raises(ServiceUnavailableError, match="HTTP 401"):
        RegistryClient(registry_url).check()


def test_settings_give_the_account_or_none(tmp_path: Path) -> None:
    assert load_settings(state_dir=tmp_path).registry.auth() is None
    settings = load_settings(state_dir=tmp_path, registry_username="buildfarm", registry_password="s3cret")
    assert settings.registry.auth() == ("buildfarm", "s3cret")
