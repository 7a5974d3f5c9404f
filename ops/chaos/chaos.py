"""``make chaos``: kill -9 each process of a local farm mid-build, and SIGSTOP its repository server.

One local farm (host runner, two nodes, short leases), on loopback only, in a temp directory.
For each case a one-package build is submitted whose builder waits for a flag file, so the fault
always strikes while the step runs; then the fault, then the flag, then what an operator does
(``buildfarm start``, which starts only what is missing), then the build is followed to its end.
Each case checks that:

* the build ends, once, succeeded (``lost`` counts builds that did not);
* its package is published once, in its build's tree and in ``latest`` (``duplicated``);
* ``buildfarm repo verify`` gets from apt exactly the bytes that were built;
* no process of the farm is left over: every process carrying the farm's state dir in its
  environment belongs to a process the farm knows (``leftovers``; and none at all after stop).

Further cases: ``builder`` kills -9 the ``dpkg-buildpackage`` alone (the host runner's sbuild; what
the OOM killer does): the step must be built again, succeeding on attempt 2, once.
``repos-readonly``/``repos-full`` (and ``artifacts-*``) put a read-only bind mount or a filled tmpfs
over the state dir's ``repos`` (``artifacts``) while the build finishes (needs root), for
``FAULT_HOLD_SECONDS`` after the build first says so (its error; for the artifact store, the
step's log: ``storing outputs waits``), then unmount: the build must wait, then
publish once. ``branch-20`` submits ``CONCURRENT_BUILDS`` builds of different packages to one
branch at once: each succeeds, ``latest`` lists each package once, apt downloads each from
``latest`` with the bytes its build made.  ``CASES="builder branch-20" make chaos`` runs some.

It prints a table: case, recovery seconds (fault to build succeeded with the farm whole again),
lost, duplicated, leftovers; exits 1 when any case lost, duplicated or left something. Bounded:
every wait has a deadline (a case at most ``CASE_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from debpkgs import make_package, write_manifest  # noqa: E402

CASE_TIMEOUT_SECONDS = 240.0
"""Bound on one case: fault, recovery and the build's end (lease 4 s; a loaded 2-core machine)."""
FLAG_WAIT = "touch {running}; for i in $$(seq 1200); do test -e {flag} && break; sleep 0.1; done"
"""The builder says it runs, then waits for the flag file (at most ~120 s): the fault strikes
while the builder process itself runs, always."""
ENV = {
    "BUILDFARM_REPO_PORT": "0",
    "BUILDFARM_API_PORT": "0",
    "BUILDFARM_LEASE_SECONDS": "4",
    "BUILDFARM_HEARTBEAT_SECONDS": "1",
    "BUILDFARM_REAPER_SECONDS": "1",
    "BUILDFARM_REDISPATCH_SECONDS": "5",
    "BUILDFARM_REPOSITORY_RETRY_MIN_SECONDS": "1",
    "BUILDFARM_REPOSITORY_RETRY_MAX_SECONDS": "3",
}
FAULT_HOLD_SECONDS = 4.0
"""How long a disk fault stays after the build first met it, before the operator clears it."""
CONCURRENT_BUILDS = 20
"""Builds of different packages submitted at once to one branch (``branch-20``)."""


@dataclass
class Row:
    case: str
    recovery_seconds: float
    lost: int
    duplicated: int
    leftovers: int
    note: str = ""


class ChaosFarm:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.state = work / "state"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
        self.env |= ENV | {"BUILDFARM_STATE_DIR": str(self.state), "XDG_CONFIG_HOME": str(work / "xdg")}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "buildfarm_cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str) -> Any:
        result = self.cli("--output", "json", *args)
        if result.returncode != 0:
            raise RuntimeError(
                f"buildfarm {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return json.loads(result.stdout)

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in (self.state / "run").glob("*.pid")}

    def strays(self) -> list[str]:
        """Processes with this farm's state dir in their environment that descend from no process
        the farm knows (a builder that outlived its node, a second copy of a process), as
        ``name[pid]``. The farm's gpg-agent is known too: signing starts it, ``buildfarm stop``
        stops it."""
        known = set(self.pids().values())
        marker = f"BUILDFARM_STATE_DIR={self.state}".encode()
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if marker not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                name = (proc / "comm").read_text().strip()
                pid = int(proc.name)
                if name != "gpg-agent" and _state(pid) != "Z" and not _descends(pid, known):
                    found.append(f"{name}[{pid}]")
            except (OSError, ValueError):
                continue  # gone meanwhile, or not ours to read
        return found


def _descends(pid: int, ancestors: set[int]) -> bool:
    """Whether ``pid`` is one of ``ancestors`` or below one (bounded walk up the parents)."""
    for _ in range(64):
        if pid in ancestors:
            return True
        if pid <= 1:
            return False
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "X"


def _wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


def _kill_group(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)
    _wait(lambda: _state(pid) in ("X", "Z"), 30, f"pid {pid} to die")


def _builder_pid(farm: ChaosFarm) -> int:
    """The running ``dpkg-buildpackage`` of the farm (the host runner's builder; sbuild's twin)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not any(a.endswith(b"dpkg-buildpackage") for a in argv[:2]):
                continue
            if os.readlink(proc / "cwd").startswith(str(farm.state)):
                return int(proc.name)
        except OSError:
            continue
    raise RuntimeError("no dpkg-buildpackage of the farm runs")


def _mount_fault(target: Path, kind: str) -> None:
    """Make ``target`` read-only (a read-only bind mount over itself) or full (a filled tmpfs)."""
    target.mkdir(parents=True, exist_ok=True)
    if kind == "readonly":
        subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(target)], check=True)
    with open(target / "filler", "wb") as filler:  # fill it: every later write meets ENOSPC
        try:
            for _ in range(1024):
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def _release_fault(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], check=False)


def run_disk_case(farm: ChaosFarm, case: str) -> Row:
    """A read-only or full filesystem under the repositories (or the artifact store) while the
    build publishes: the build must wait, then publish exactly once after the fault clears."""
    where, kind = case.split("-", 1)
    name = f"chaos-{case}"
    flag = farm.work / f"{case}.go"
    builder_runs = farm.work / f"{case}.running"
    make_package(farm.work / "src" / case, name, build=FLAG_WAIT.format(flag=flag, running=builder_runs))
    manifest = write_manifest(farm.work / "src" / case, [name], project="chaos", branch=case)
    build_id = int(farm.json("build", "submit", str(manifest))["id"])
    _wait(builder_runs.exists, 120, f"{name}'s builder to run")
    target = farm.state / where
    view: dict[str, Any] = {}

    def met_fault() -> bool:
        view.update(farm.json("build", "show", str(build_id)))
        if view.get("error") or view["state"] in ("succeeded", "failed", "cancelled"):
            return True
        if where != "artifacts":
            return False
        # a step storing its outputs waits out the artifact store in its log, not in the build's error
        log = farm.cli("build", "logs", str(build_id), str(view["steps"][0]["name"]), timeout=120).stdout
        waits = [line for line in log.splitlines() if "storing outputs waits" in line]
        waits = waits or _waits_under(under, build_id)
        if waits:
            view["error"] = waits[-1].removeprefix("buildfarm: ")
        return bool(waits)

    target.mkdir(parents=True, exist_ok=True)
    under = os.open(target, os.O_RDONLY | os.O_DIRECTORY)  # the directory the fault will cover
    _mount_fault(target, kind)
    start = time.monotonic()
    try:
        flag.touch()
        try:
            _wait(met_fault, 90, f"{name} to meet the fault", interval=0.5)
            during = f"during: {view['state']}, {view.get('error') or 'no error'}"
        except TimeoutError:
            during = f"during: still {view.get('state')} with no error after 90 s"
        time.sleep(FAULT_HOLD_SECONDS)  # the fault lasts a while: publishing must keep waiting
    finally:
        _release_fault(target)
        os.close(under)
    return _follow(farm, case, build_id, start=start, note=during, orphans=[], expect_attempt=None)


def _waits_under(directory_fd: int, build_id: int) -> list[str]:
    """The ``storing outputs waits`` lines of build ``build_id``'s step logs in the artifact
    store ``directory_fd``, opened before a tmpfs covered it: the step's log file is open there,
    hidden from every path (``build logs`` finds no log) while a full tmpfs covers the store.
    A disk that fills up hides nothing; only the harness's way of filling it does."""
    waits = []
    for top, _dirs, files in os.walk(f"/proc/self/fd/{directory_fd}/logs/{build_id}"):
        for name in files:
            with open(os.path.join(top, name), "rb") as log:
                lines = log.read().decode("utf-8", "replace").splitlines()
            waits += [line for line in lines if "storing outputs waits" in line]
    return waits


def run_branch_case(farm: ChaosFarm, case: str) -> Row:
    """``CONCURRENT_BUILDS`` builds of different packages submitted at once to one branch: each
    succeeds, ``latest`` lists every package exactly once, apt agrees."""
    from concurrent.futures import ThreadPoolExecutor

    names = [f"chaos-b{i:02d}" for i in range(CONCURRENT_BUILDS)]
    manifests = []
    for name in names:
        make_package(farm.work / "src" / name, name)
        manifests.append(write_manifest(farm.work / "src" / name, [name], project="chaos", branch=case))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENT_BUILDS) as pool:
        ids = list(pool.map(lambda m: int(farm.json("build", "submit", str(m))["id"]), manifests))
    submitted = f"submitted in {time.monotonic() - start:.0f} s (load {os.getloadavg()[0]:.1f})"
    views: dict[int, dict[str, Any]] = {}

    def all_finished() -> bool:
        for build_id in ids:
            if views.get(build_id, {}).get("state") not in ("succeeded", "failed", "cancelled"):
                views[build_id] = farm.json("build", "show", str(build_id))
        return all(v["state"] in ("succeeded", "failed", "cancelled") for v in views.values())

    try:
        _wait(all_finished, CASE_TIMEOUT_SECONDS * 2, f"{len(ids)} builds to finish", interval=1.0)
    except TimeoutError:
        unfinished = [str(i) for i in ids if views.get(i, {}).get("state") != "succeeded"]
        return Row(
            case,
            time.monotonic() - start,
            len(unfinished),
            0,
            len(farm.strays()),
            f"{submitted}; unfinished: {', '.join(unfinished)}",
        )
    recovery = time.monotonic() - start
    failed = [f"{i}: {v.get('error')}" for i, v in views.items() if v["state"] != "succeeded"]
    latest = farm.state / "repos" / "chaos" / case / "latest" / "Packages"
    packages = latest.read_text() if latest.is_file() else ""
    missing = [n for n in names if packages.count(f"Package: {n}\n") == 0]
    twice = [n for n in names if packages.count(f"Package: {n}\n") > 1]
    verify = farm.json("repo", "verify", "chaos", case)  # the farm's own check: the last build's packages
    wrong = [item for item in verify if not item["identical"]]
    differ = _apt_latest(farm, case, {n: _deb_sha256(views[i]) for n, i in zip(names, ids, strict=True)})
    lost = len(failed) + len(missing) + int(bool(wrong)) + len(differ)
    note = (
        f"{submitted}; {len(ids) - len(failed)}/{len(ids)} succeeded; "
        f"latest lists {len(names) - len(missing)}/{len(names)}; "
        f"apt gets {len(names) - len(differ)}/{len(names)} from latest as built; "
        f"repo verify checks {len(verify)} ({len(wrong)} differ)"
    )
    if missing:
        note += f"; missing from latest: {', '.join(missing)}"
    if differ:
        note += f"; apt: {'; '.join(differ[:3])}"
    if failed:
        note += f"; failed: {'; '.join(failed[:3])}"
    strays = farm.strays()
    note += f"; left: {', '.join(strays)}" if strays else ""
    return Row(case, recovery, lost, len(twice), len(strays), note)


def _deb_sha256(view: dict[str, Any]) -> str:
    return next(
        (str(o["sha256"]) for s in view["steps"] for o in s["outputs"] if o["filename"].endswith(".deb")), ""
    )


def _apt_latest(farm: ChaosFarm, branch: str, built: dict[str, str]) -> list[str]:
    """apt-get update on the branch's ``latest`` and download every package in ``built`` (name to
    the sha256 its build produced): what differs or cannot be downloaded, one line each.
    ``buildfarm repo verify`` checks only the packages of the build behind ``latest``."""
    from buildfarm.local.aptclient import AptClient, AptError

    source = farm.json("repo", "sources", "chaos", branch)
    key = farm.json("repo", "key")["public_key"] if source.get("signed_by") else None
    differ = []
    with tempfile.TemporaryDirectory(prefix="buildfarm-chaos-apt-") as workdir:
        apt = AptClient(Path(workdir), source["line"], key)
        try:
            apt.update()
        except AptError as exc:
            return [f"apt-get update: {str(exc).strip().splitlines()[-1]}"]
        for package, sha256 in built.items():
            try:
                got = hashlib.sha256(apt.download(package).read_bytes()).hexdigest()
            except AptError as exc:
                differ.append(f"{package}: {str(exc).strip().splitlines()[-1]}")
                continue
            if got != sha256:
                differ.append(f"{package}: apt got {got[:12]}, built {sha256[:12]}")
    return differ


def run_case(farm: ChaosFarm, case: str) -> Row:
    if case.startswith(("repos-", "artifacts-")):
        return run_disk_case(farm, case)
    if case == "branch-20":
        return run_branch_case(farm, case)
    name = f"chaos-{case}"
    flag = farm.work / f"{case}.go"
    builder_runs = farm.work / f"{case}.running"
    make_package(farm.work / "src" / case, name, build=FLAG_WAIT.format(flag=flag, running=builder_runs))
    manifest = write_manifest(farm.work / "src" / case, [name], project="chaos", branch=case)
    build_id = int(farm.json("build", "submit", str(manifest))["id"])
    running: dict[str, Any] = {}

    _wait(builder_runs.exists, 120, f"{name}'s builder to run")
    running.update(farm.json("build", "show", str(build_id))["steps"][0])  # it runs: the node is known
    target = str(running["node"]) if case == "node" else case.removesuffix("-sigstop")
    pid = _builder_pid(farm) if case == "builder" else farm.pids()[target]
    start = time.monotonic()
    note = ""
    orphans: list[str] = []
    if case.endswith("-sigstop"):
        os.killpg(pid, signal.SIGSTOP)
        flag.touch()
        _wait(lambda: farm.json("build", "show", str(build_id))["steps"][0]["state"] != "running", 120, name)
        verify = farm.cli("repo", "verify", "chaos", case, timeout=120)
        note = f"repo verify while stopped: exit {verify.returncode}"
        os.killpg(pid, signal.SIGCONT)
    elif case == "builder":  # the system kills one process (the OOM killer): not its group
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: _state(pid) in ("X", "Z"), 30, f"pid {pid} to die")
        flag.touch()
    else:
        _kill_group(pid)
        orphans = farm.strays()  # before the flag lets an orphaned builder finish
        flag.touch()
        note = f"orphaned: {', '.join(orphans)}" if orphans else ""
    started = farm.json("start")["started"]  # what the operator does: start only what is missing
    note = "; ".join(filter(None, [note, f"restarted: {', '.join(started) or 'nothing'}"]))
    expect = 2 if case == "builder" else None  # the farm builds a killed builder's step again, once
    return _follow(farm, case, build_id, start=start, note=note, orphans=orphans, expect_attempt=expect)


def _follow(
    farm: ChaosFarm,
    case: str,
    build_id: int,
    *,
    start: float,
    note: str,
    orphans: list[str],
    expect_attempt: int | None,
) -> Row:
    """Follow the build to its end and check it: once, published once, apt agrees, nothing left."""
    name = f"chaos-{case}"
    view: dict[str, Any] = {}

    def finished() -> bool:
        view.update(farm.json("build", "show", str(build_id)))
        return view["state"] in ("succeeded", "failed", "cancelled")

    try:
        _wait(finished, CASE_TIMEOUT_SECONDS, f"{name} to finish", interval=0.5)
    except TimeoutError:
        return Row(
            case,
            time.monotonic() - start,
            1,
            0,
            len(farm.strays()) + len(orphans),
            f"{note}; still {view.get('state')}",
        )
    recovery = time.monotonic() - start
    lost = int(view["state"] != "succeeded")
    step = view["steps"][0]
    note += f"; attempt {step['attempt']} on {step['node']}"
    if expect_attempt is not None and step["attempt"] != expect_attempt:
        lost += 1
        note += f" (expected attempt {expect_attempt})"
    debs = [o for o in step["outputs"] if o["filename"].endswith(".deb")]
    duplicated = int(len(debs) > 1)
    if lost:
        note += f"; {view['state']}: {step.get('error') or view.get('error')}"
    if not lost:
        branch_dir = farm.state / "repos" / "chaos" / case
        for tree in (branch_dir / "latest", branch_dir / "builds" / str(build_id)):
            packages = (tree / "Packages").read_text() if (tree / "Packages").is_file() else ""
            duplicated += int(packages.count(f"Package: {name}\n") > 1)
            lost += int(packages.count(f"Package: {name}\n") == 0)
        verify = farm.json("repo", "verify", "chaos", case)
        lost += int(not verify or not all(item["identical"] for item in verify))
    strays = farm.strays()
    note += f"; left: {', '.join(strays)}" if strays else ""
    return Row(case, recovery, lost, duplicated, len(strays) + len(orphans), note)


CASES = [
    "node",
    "scheduler",
    "api",
    "repo-server",
    "redis",
    "registry",
    "repo-server-sigstop",
    "builder",
    "repos-readonly",
    "repos-full",
    "artifacts-readonly",
    "artifacts-full",
    "branch-20",
]


def main() -> int:
    only = sys.argv[1:]
    unknown = [c for c in only if c not in CASES]
    if unknown:
        print(f"chaos: unknown case(s) {', '.join(unknown)}; cases: {' '.join(CASES)}", file=sys.stderr)
        return 2
    cases = [c for c in CASES if not only or c in only]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="buildfarm-chaos-") as tmp:
        farm = ChaosFarm(Path(tmp))
        begun = time.monotonic()
        started = farm.cli("start", "--runner", "host", "--nodes", "2", timeout=300)
        if started.returncode != 0:
            print(f"chaos: the farm did not start: {started.stderr.strip()}", file=sys.stderr)
            return 1
        try:
            for case in cases:
                try:
                    rows.append(run_case(farm, case))
                except (TimeoutError, subprocess.TimeoutExpired, RuntimeError, OSError, KeyError) as exc:
                    load = os.getloadavg()[0]  # a harness deadline passed on a loaded machine, or not
                    rows.append(
                        Row(case, float("nan"), 1, 0, len(farm.strays()), f"error: {exc} (load {load:.1f})")
                    )
        finally:
            farm.cli("stop")
            after_stop = farm.strays()
            if after_stop:
                for stray in after_stop:  # never leave them on the machine; they were counted
                    try:
                        os.kill(int(stray.rsplit("[", 1)[1].rstrip("]")), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
        rows.append(Row("buildfarm stop", 0.0, 0, 0, len(after_stop), ", ".join(after_stop)))
        total = time.monotonic() - begun
    print(f"{'case':<22} {'recovery s':>10} {'lost':>5} {'duplicated':>10} {'leftovers':>9}  note")
    for row in rows:
        print(
            f"{row.case:<22} {row.recovery_seconds:>10.1f} {row.lost:>5} {row.duplicated:>10} "
            f"{row.leftovers:>9}  {row.note}"
        )
    print(f"{len(rows) - 1} case(s) in {total:.0f} s")
    return int(any(r.lost or r.duplicated or r.leftovers for r in rows))


if __name__ == "__main__":
    raise SystemExit(main())
