"""A farm with its REST API (uvicorn, started by `buildfarm start`) on a private PostgreSQL
database and Redis, plus an admin token: shared by the API test modules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from buildfarm import accounts
from buildfarm.dispatch.context import make_context
from buildfarm.model.settings import load_settings

from helpers import wait_until
from test_local_farm import Farm


class Api:
    def __init__(self, farm: Farm, url: str, admin: str, database_url: str) -> None:
        self.farm, self.url, self.admin, self.database_url = farm, url, admin, database_url

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def user(self, name: str, project: str, role: str) -> str:
        """Create (or reuse) a user with ``role`` in ``project``; return a fresh token of theirs."""
        with self.client(self.admin) as admin:
            added = admin.post("/api/v1/admin/users", json={"name": name})
            assert added.status_code in (201, 409), added.text
            admin.post("/api/v1/admin/projects", json={"name": project})
            granted = admin.put(f"/api/v1/admin/projects/{project}/grants/{name}", json={"role": role})
            assert granted.status_code == 200, granted.text
            created = admin.post(f"/api/v1/admin/users/{name}/tokens", json={"name": "t"})
            assert created.status_code == 201, created.text
            return str(created.json()["token"])


@contextmanager
def running_api(  # noqa: PLR0917
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
    database: str,
    env: dict[str, str],
    redis_db: int,
) -> Iterator[Api]:
    """A farm on its own PostgreSQL database and Redis database number (no stale messages shared)."""
    redis_url = redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    server = make_url(postgres_url)
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    engine.dispose()
    database_url = server.set(database=database).render_as_string(hide_password=False)
    farm = Farm(tmp_path_factory.mktemp(database) / "state")
    farm.env |= {"BUILDFARM_DATABASE_URL": database_url, "BUILDFARM_REDIS_URL": redis_url, **env}
    farm.cli("start", "--runner", "host", "--nodes", "2", timeout=120)
    try:
        port = json.loads((farm.state_dir / "farm.json").read_text())["api_port"]
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200, 30, "API")
        settings = load_settings(state_dir=farm.state_dir, database_url=database_url, redis_url=redis_url)
        ctx = make_context(settings)
        admin = accounts.init_admin(ctx).token
        ctx.db.dispose()
        yield Api(farm, url, admin, database_url)
    finally:
        farm.cli("stop", check=False)
