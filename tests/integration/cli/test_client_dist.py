"""The API client's own distribution (buildtools/client) installs into an empty virtualenv with
only what it declares (httpx, pydantic), and works there: no Celery, SQLAlchemy, Kubernetes or
MinIO comes along, and none of the farm's packages is needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FARM_RUNTIME = [
    "celery",
    "sqlalchemy",
    "kubernetes",
    "minio",
    "redis",
    "fastapi",
    "buildfarm",
    "buildfarm_cli",
]
PIP_SECONDS = 900
"""Bound on each pip run: it resolves httpx and pydantic from the configured index."""


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=PIP_SECONDS
    )


def test_client_distribution_installs_and_runs_alone(tmp_path: Path) -> None:
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, ROOT / "buildtools/client"
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("buildfarm_client-*.whl")
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv/bin/python"
    installed = _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    assert installed.returncode == 0, installed.stderr
    script = textwrap.dedent(
        f"""
        import importlib.util
        import httpx
        from buildfarm_client import Client, NotFoundError

        present = [m for m in {FARM_RUNTIME!r} if importlib.util.find_spec(m) is not None]
        def answer(request):
            return httpx.Response(404, json={{"error": {{"code": "not_found", "message": "no build 7"}}}})
        try:
            Client("http://farm.invalid", transport=httpx.MockTransport(answer)).build(7)
        except NotFoundError as exc:
            print(present, exc)
        """
    )
    result = _run(python, "-I", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] no build 7"
