"""Which farm the CLI talks to, and with which token.

The farm's URL comes from ``--farm``, else ``BUILDFARM_URL``, else ``url:`` in the client
configuration file ``${XDG_CONFIG_HOME:-~/.config}/buildfarm/client.yaml``; the token from
``BUILDFARM_TOKEN``, else ``token:`` in the same file.  No URL anywhere means the local farm.
A file that holds a token must be readable by its owner only: the CLI refuses to use it
otherwise, as ssh does with a private key.  The token never appears in a message.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from buildfarm.model.errors import PermanentError

CONFIG_NAME = Path("buildfarm") / "client.yaml"
URL_ENV = "BUILDFARM_URL"
TOKEN_ENV = "BUILDFARM_TOKEN"
CONFIG_KEYS = frozenset({"url", "token"})
MAX_CONFIG_BYTES = 64 << 10
"""A client configuration is two lines; anything past 64 KiB is the wrong file."""


@dataclass(frozen=True)
class ClientConfig:
    """Where the farm is (None: the local farm) and the token to show it (never printed)."""

    url: str | None
    token: str | None = field(default=None, repr=False)
    source: str = "local"  # which setting gave the URL: flag, env, file or local


def config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/buildfarm/client.yaml``; a relative XDG_CONFIG_HOME is ignored (XDG spec)."""
    base = env.get("XDG_CONFIG_HOME", "")
    root = (
        Path(base) if base and Path(base).is_absolute() else Path(env.get("HOME") or Path.home()) / ".config"
    )
    return root / CONFIG_NAME


def read_config_file(path: Path) -> dict[str, str]:
    """The file's ``url``/``token`` ({} if there is none); refuses a token others can read."""
    try:
        info = path.stat()
        raw = path.read_bytes()[:MAX_CONFIG_BYTES]
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise PermanentError(f"{path}: cannot read the client configuration: {exc.strerror}") from exc
    import yaml  # only when there is a file: most commands read no YAML

    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise PermanentError(f"{path}: not valid YAML ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise PermanentError(f"{path}: the client configuration must be a mapping with url and token")
    unknown = sorted(str(k) for k in data if k not in CONFIG_KEYS)
    if unknown:
        raise PermanentError(f"{path}: unknown key {unknown[0]!r} (known: url, token)")
    values = {str(k): v for k, v in data.items() if v is not None}
    for key, value in values.items():
        if not isinstance(value, str):
            raise PermanentError(f"{path}: {key} must be a string")
    if "token" in values and stat.S_IMODE(info.st_mode) & 0o077:
        raise PermanentError(
            f"{path} holds a token but is readable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}`"
        )
    return values


def check_url(url: str, where: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"{where}: the farm URL must look like http://host:port, not {url!r}")
    if parts.username or parts.password:
        raise PermanentError(f"{where}: put the token in {TOKEN_ENV} or the client file, not in the URL")
    return url.strip().rstrip("/")


def resolve(
    flag_url: str | None, env: Mapping[str, str] | None = None, path: Path | None = None
) -> ClientConfig:
    """The farm and token to use: flag > environment > file for the URL, environment > file for the token."""
    env = os.environ if env is None else env
    path = path or config_path(env)
    file = read_config_file(path)
    token = env.get(TOKEN_ENV) or file.get("token") or None
    for source, value, where in (
        ("flag", flag_url, "--farm"),
        ("env", env.get(URL_ENV), URL_ENV),
        ("file", file.get("url"), str(path)),
    ):
        if value:
            return ClientConfig(check_url(value, where), token, source)
    return ClientConfig(None, token)
