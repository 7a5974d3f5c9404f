"""What the CLI costs before and after its one request: ``--help``, ``build show`` and
``build submit --wait`` of a local farm, each a fresh ``python -m buildfarm_cli`` (issue 16: the
CLI's start is on the critical path of every submit).

The farm is a stand-in API process on the owner socket of a temporary state directory (the
stdlib's HTTP server: it answers every request with one finished build), so only the CLI is
measured: its imports, its settings, its client, its exit.  ``--old TREE`` runs a second checkout
(its ``services``, ``buildtools`` and ``buildtools/client`` first on ``PYTHONPATH``) alternately
with this one, for a side-by-side comparison; ``python -X importtime`` totals are printed beside.

``python ops/bench/clistart.py [--old TREE] [RUNS]`` (default 10 runs).  Prints medians (CPU:
user + sys of the CLI process) and whether every run printed the same; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from buildfarm.local import owner  # noqa: E402

from debpkgs import make_package, write_manifest  # noqa: E402

STEP = {
    "id": 1, "name": "hello", "version": "1.0", "state": "succeeded", "node": "node1", "attempt": 1,
    "depends_on": [], "input_key": "0" * 64, "reused_from": None, "started_at": "2026-01-01T00:00:00+00:00",
    "finished_at": "2026-01-01T00:00:01+00:00", "duration_seconds": 1.0, "log": "logs/7/hello/1.log",
    "error": None, "revision": "1",
}  # fmt: skip
BUILD = {
    "id": 7, "project": "bench", "branch": "main", "kind": "nightly", "user": "bench", "state": "succeeded",
    "created_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:02+00:00",
    "published": "bench/main/7", "error": None, "steps": [STEP],
}  # fmt: skip
COMMANDS = {
    "--help": ["--help"],
    "build show": ["build", "show", "7"],
    "build submit --wait": ["--output", "json", "build", "submit", "{manifest}", "--wait"],
}


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the client keeps its connection, as with the farm's uvicorn

    def _build(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(BUILD).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _build

    def address_string(self) -> str:
        return "owner"  # a unix socket's peer has no address

    def log_message(self, format: str, *args: object) -> None:
        pass


class _OwnerSocket(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _pythonpath(tree: Path) -> str:
    return os.pathsep.join(str(tree / part) for part in ("buildtools", "buildtools/client", "services"))


def _run(tree: Path, args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, bytes]:
    """(wall s, CPU s, -X importtime total s, stdout) of one command run from ``tree``."""
    env = env | {"PYTHONPATH": _pythonpath(tree)}
    command = [sys.executable, "-m", "buildfarm_cli", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.PIPE).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:]],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ).stderr
    imports = 0  # the cumulative time of each top-level import (its own imports are inside it)
    for line in traced.splitlines():
        parts = line.removeprefix("import time:").split("|")
        top_level = len(parts) == 3 and not parts[2].startswith("  ")
        if line.startswith("import time:") and top_level and parts[1].strip().isdigit():
            imports += int(parts[1])
    return wall, cpu, imports / 1e6, out


def main(runs: int = 10, old: Path | None = None) -> int:
    trees = {"this": ROOT} | ({"old": old.resolve()} if old else {})
    with tempfile.TemporaryDirectory(prefix="buildfarm-clistart-") as tmp:
        work = Path(tmp)
        state = work / "state"
        (state / "run").mkdir(parents=True)
        path = owner.socket_path(state)
        assert path is not None, f"{state} is too deep for a unix socket"
        server = _OwnerSocket(os.fspath(path), _Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        make_package(work / "src", "hello")
        manifest = write_manifest(work / "src", ["hello"], project="bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
        env |= {"BUILDFARM_STATE_DIR": str(state), "XDG_CONFIG_HOME": str(work / "config")}
        samples: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        outputs: dict[str, set[bytes]] = {}  # what each command printed, every run of every tree
        try:
            print(
                f"CLI start, {runs} runs each, alternated: {', '.join(f'{k} {v}' for k, v in trees.items())}"
            )
            print(f"  load before: {os.getloadavg()[0]:.2f}")
            for name, template in COMMANDS.items():
                args = [arg.format(manifest=manifest) for arg in template]
                for index in range(runs):
                    order = list(trees.items()) if index % 2 == 0 else list(reversed(trees.items()))
                    for label, tree in order:
                        wall, cpu, imports, out = _run(tree, args, env, work)
                        samples.setdefault((name, label), []).append((wall, cpu, imports))
                        outputs.setdefault(name, set()).add(out)
        finally:
            server.shutdown()
            server.server_close()
        for (name, label), rows in samples.items():
            wall, cpu, imports = (statistics.median(column) for column in zip(*rows, strict=True))
            print(
                f"  {name:20s} {label:4s}: CPU {cpu:.3f} s  wall {wall:.3f} s  "
                f"-X importtime total {imports:.3f} s  (medians)"
            )
        for name, printed in outputs.items():
            print(f"  {name:20s} output: {'the same in every run' if len(printed) == 1 else 'DIFFERS'}")
        print(f"  load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=10)
    parser.add_argument("--old", type=Path, help="a second checkout to run alternately (e.g. main's)")
    options = parser.parse_args()
    sys.exit(main(options.runs, options.old))
