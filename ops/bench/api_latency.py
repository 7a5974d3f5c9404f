"""``make bench`` part 2: REST API latency for submit and show, median and p90, on a local farm.

A farm with 2 host-runner nodes and its API (uvicorn) on SQLite; one admin token. ``show`` is
measured on a finished build; ``submit`` on a one-package manifest whose source tarball is
already uploaded (what a CI re-submit costs: plan, record, dispatch — the build itself runs
afterwards on the nodes). Prints numbers; asserts nothing about speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from buildfarm import accounts  # noqa: E402
from buildfarm.dispatch.context import make_context  # noqa: E402
from buildfarm.model.manifest import load_manifest  # noqa: E402
from buildfarm.model.settings import load_settings  # noqa: E402
from buildfarm.model.sources import pack_tree  # noqa: E402

from debpkgs import make_package, write_manifest  # noqa: E402

SHOWS = 200
SUBMITS = 30


def _cli(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "buildfarm_cli", *args], env=env, check=True, capture_output=True)


def _percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return (
        f"median {statistics.median(ms):6.1f} ms   p90 {ms[int(len(ms) * 0.9) - 1]:6.1f} ms   (n={len(ms)})"
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="buildfarm-apibench-") as tmp:
        work = Path(tmp)
        state = work / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
        env |= {
            "BUILDFARM_STATE_DIR": str(state),
            "BUILDFARM_REPO_PORT": "0",
            "BUILDFARM_API_PORT": "0",
            "BUILDFARM_API_MAX_RUNNING_BUILDS": "1000",
            "BUILDFARM_API_RATE_PER_MINUTE": "100000",
        }
        _cli(env, "start", "--runner", "host", "--nodes", "2")
        try:
            farm = json.loads((state / "farm.json").read_text())
            ctx = make_context(load_settings(state_dir=state))
            token = accounts.init_admin(ctx).token
            accounts.add_project(ctx, "bench")
            make_package(work / "src", "bench-pkg")
            manifest_path = write_manifest(work / "src", ["bench-pkg"], project="bench")
            manifest = load_manifest(manifest_path).model_dump(mode="json")
            blob = pack_tree(work / "src" / "bench-pkg")
            sha = hashlib.sha256(blob).hexdigest()
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(
                base_url=f"http://127.0.0.1:{farm['api_port']}", headers=headers, timeout=60
            ) as api:
                api.put(f"/api/v1/sources/{sha}", content=blob).raise_for_status()
                first = api.post("/api/v1/builds", json={"manifest": manifest, "sources": {"0": sha}}).json()
                deadline = time.monotonic() + 60
                while api.get(f"/api/v1/builds/{first['id']}").json()["state"] != "succeeded":
                    if time.monotonic() > deadline:
                        raise SystemExit("the warm-up build did not finish in 60 s")
                    time.sleep(0.2)
                shows = []
                for _ in range(SHOWS):
                    started = time.perf_counter()
                    api.get(f"/api/v1/builds/{first['id']}").raise_for_status()
                    shows.append(time.perf_counter() - started)
                submits = []
                for _ in range(SUBMITS):
                    started = time.perf_counter()
                    api.post(
                        "/api/v1/builds", json={"manifest": manifest, "sources": {"0": sha}}
                    ).raise_for_status()
                    submits.append(time.perf_counter() - started)
            ctx.db.dispose()
        finally:
            _cli(env, "stop")
    print(f"API GET  /builds/{{id}}  {_percentiles(shows)}")
    print(f"API POST /builds       {_percentiles(submits)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
