"""Which farm the CLI talks to: --farm > BUILDFARM_URL > client.yaml; a token file others can read
is refused; the token never shows; API error bodies become the engine's errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from buildfarm.accounts import AuthError, ForbiddenError
from buildfarm.model.errors import (
    BuildfarmError,
    ConflictError,
    ManifestError,
    NotFoundError,
    PermanentError,
    ServiceUnavailableError,
    TemporaryError,
)
from buildfarm_cli.client import HttpClient, make_client
from buildfarm_cli.config import ClientConfig, config_path, resolve

from helpers import free_port

SECRET = "bf_unit-test-secret-token-value"


def _write_config(home: Path, text: str, mode: int) -> Path:
    path = home / "buildfarm" / "client.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _cli(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    base |= {"BUILDFARM_STATE_DIR": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    return subprocess.run(
        [sys.executable, "-m", "buildfarm_cli", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_precedence_flag_env_file(tmp_path: Path) -> None:
    path = _write_config(tmp_path, f"url: http://file:1/\ntoken: {SECRET}-file\n", 0o600)
    env = {"BUILDFARM_URL": "http://env:2", "BUILDFARM_TOKEN": f"{SECRET}-env"}
    assert resolve("http://flag:3", env, path) == ClientConfig("http://flag:3", f"{SECRET}-env", "flag")
    assert resolve(None, env, path) == ClientConfig("http://env:2", f"{SECRET}-env", "env")
    assert resolve(None, {}, path) == ClientConfig("http://file:1", f"{SECRET}-file", "file")
    assert resolve(None, {}, tmp_path / "absent.yaml") == ClientConfig(None, None, "local")
    local = make_client(resolve(None, {}, tmp_path / "absent.yaml"))
    assert local.local is not None and local.where == f"in {local.local.settings.state_dir}"
    local.close()
    client = make_client(resolve(None, {}, path))
    assert isinstance(client, HttpClient) and client.url == "http://file:1"
    client.close()


def test_config_path_follows_xdg(tmp_path: Path) -> None:
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "buildfarm" / "client.yaml"
    assert config_path({"XDG_CONFIG_HOME": "relative", "HOME": "/h"}) == Path(
        "/h/.config/buildfarm/client.yaml"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url: ftp://x\n", "the farm URL must look like http://host:port"),
        ("url: http://u:p@x\n", "not in the URL"),
        ("server: http://x\n", "unknown key 'server'"),
        ("[1, 2]\n", "must be a mapping"),
        ("url: [\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = _write_config(tmp_path, text, 0o600)
    with pytest.raises(PermanentError, match=message.replace("[", r"\[")):
        resolve(None, {}, path)


def test_readable_token_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = _write_config(tmp_path / "cfg", f"url: http://127.0.0.1:1\ntoken: {SECRET}\n", 0o644)
    result = _cli(tmp_path, "build", "list", env={})
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"error: {path} holds a token but is readable by group or others (mode 0644): run `chmod 600 {path}`"
    ]
    assert SECRET not in result.stdout + result.stderr
    # a URL alone is no secret: a world-readable file without a token is fine
    _write_config(tmp_path / "cfg", "url: http://127.0.0.1:1\n", 0o644)
    assert resolve(None, {}, path).url == "http://127.0.0.1:1"


def test_unreachable_farm_is_temporary_and_token_is_never_shown(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _cli(tmp_path, "--farm", url, "build", "show", "1", env={"BUILDFARM_TOKEN": SECRET})
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert f"cannot reach the farm at {url}" in result.stderr and "try again later" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stdout + result.stderr
    assert SECRET not in repr(HttpClient(url, SECRET)) and SECRET not in repr(
        resolve(url, {"BUILDFARM_TOKEN": SECRET})
    )


def test_local_only_commands_refuse_farm(tmp_path: Path) -> None:
    result = _cli(tmp_path, "--farm", "http://127.0.0.1:1", "admin", "init", env={})
    assert result.returncode == 1
    assert "works on the local farm only" in result.stderr


def _answer(status: int, code: str, headers: dict[str, str] | None = None) -> HttpClient:
    def handler(_request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": code, "message": f"{code} happened"}}
        return httpx.Response(status, json=body, headers=headers)

    return HttpClient("http://farm.invalid", SECRET, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "bad_request", PermanentError),
        (400, "bad_manifest", ManifestError),
        (400, "bad_source", PermanentError),
        (401, "unauthenticated", AuthError),
        (403, "forbidden", ForbiddenError),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (413, "too_large", PermanentError),
        (422, "invalid", PermanentError),
        (503, "unavailable", ServiceUnavailableError),
        (500, "internal", BuildfarmError),
    ],
)
def test_error_bodies_become_the_engines_errors(status: int, code: str, kind: type[Exception]) -> None:
    with _answer(status, code) as client, pytest.raises(kind, match=f"{code} happened") as raised:
        client.show(1)
    assert not isinstance(raised.value, TemporaryError) or code == "unavailable"
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize("code", ["rate_limited", "too_many_builds"])
def test_429_is_temporary_with_retry_after(code: str) -> None:
    with _answer(429, code, {"Retry-After": "7"}) as client, pytest.raises(TemporaryError) as raised:
        client.list()
    assert raised.value.retry_after == 7 and not isinstance(raised.value, PermanentError)
