"""One real Pulp server (pulpcore + pulp_deb) per test session, for any test module that needs it.

``from pulpkit import pulp_server`` in a test module makes the fixture available there.  The
server is started the way ``make demo PROFILE=pulp`` starts it (ops/pulp/pulpstack.py): API,
content app and one worker, every file under a session temp dir, and its own database on the
session's private PostgreSQL server (``postgres_url``).  Its ORPHAN_PROTECTION_TIME is 0: an
orphan cleanup frees storage at once (production keeps Pulp's default of a day).  The stack
registers the signing service ``buildfarm`` with a key made for the session (what
``pulpstack.py start --signing-key-file`` does); ``settings(signed=True)`` makes a farm use it,
plain ``settings()`` publishes unsigned.  A machine without .venv-pulp gets it from
ops/pulp/install.sh first (~30 s, once).  Modules importing the
fixture share one server: the fixture body only hands out a stack started once and stopped when
the session ends.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.engine import make_url

from buildfarm.backends.signing import HOME_NAME, generate_key, stop_agent

if TYPE_CHECKING:
    from buildfarm.backends.pulp import PulpRepository

REPO_ROOT = Path(__file__).resolve().parents[1]
PULPSTACK = REPO_ROOT / "ops" / "pulp" / "pulpstack.py"
PULP_DATABASE = "pulp_test"


@dataclass(frozen=True)
class PulpServer:
    """Where the session's Pulp listens and how to log in; timings of its install and start."""

    base_url: str
    username: str
    password: str
    content_origin: str
    root: Path
    install_seconds: float
    start_seconds: float
    signing_service: str | None = None
    signing_key_file: Path | None = None

    def repository(self, **options: Any) -> PulpRepository:
        """A client of this server as the farm makes one (``task_timeout_seconds`` 60 unless given)."""
        from buildfarm.backends.pulp import PulpRepository

        options = {"task_timeout_seconds": 60, **options}
        return PulpRepository(self.base_url, self.username, self.password, self.content_origin, **options)

    def settings(self, *, signed: bool = False) -> dict[str, object]:
        """Farm settings selecting this server as the package repository (signing its build
        publications with the session's key when ``signed``)."""
        return {
            "repository": "pulp",
            "pulp_url": self.base_url,
            "pulp_username": self.username,
            "pulp_password": self.password,
            "pulp_content_origin": self.content_origin,
            "pulp_task_timeout_seconds": 60,
            **({"pulp_signing_service": self.signing_service} if signed and self.signing_service else {}),
        }


def _load_pulpstack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("buildfarm_ops_pulpstack", PULPSTACK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


_started: dict[str, PulpServer] = {}


def _start(postgres_url: str, root: Path, config: pytest.Config) -> PulpServer:
    pulpstack = _load_pulpstack()
    try:
        install_seconds = pulpstack.ensure_installed()
    except pulpstack.PulpStackError as exc:
        pytest.fail(f"installing the Pulp server failed: {exc}", pytrace=False)
    database = make_url(postgres_url)
    key_file = generate_key(root / "farm-key")
    stop_agent(root / "farm-key" / HOME_NAME)  # the stack imports the key into a home of its own
    stack: Any = pulpstack.PulpStack(
        root=root,
        db_host=database.host or "127.0.0.1",
        db_port=database.port or 5432,
        db_user=database.username or "postgres",
        db_password=database.password or "",
        db_name=PULP_DATABASE,
        orphan_protection_minutes=0,  # retention tests measure storage shrinking right after a sweep
        signing_key_file=key_file,
    )
    started = time.monotonic()
    try:
        stack.prepare()
        stack.start()
    except pulpstack.PulpStackError as exc:
        stack.stop()
        pytest.fail(f"starting Pulp failed: {exc}", pytrace=False)
    config.add_cleanup(stack.stop)  # once, at the very end of the session
    return PulpServer(
        base_url=stack.base_url,
        username=pulpstack.ADMIN_USER,
        password=stack.password,
        content_origin=stack.content_origin,
        root=root,
        install_seconds=install_seconds,
        start_seconds=time.monotonic() - started,
        signing_service=pulpstack.SIGNING_SERVICE,
        signing_key_file=stack.signing_key_file,
    )


@pytest.fixture(scope="session")
def pulp_server(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[PulpServer]:
    """The session's Pulp: API at ``base_url``, content app at ``content_origin``, admin login."""
    if "server" not in _started:
        _started["server"] = _start(postgres_url, tmp_path_factory.mktemp("pulp"), pytestconfig)
    yield _started["server"]
