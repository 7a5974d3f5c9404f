"""What packing a trivial tree costs at submit: ``dpkg-source -b`` forked from the preloaded
Perl (:mod:`buildfarm.engine.dpkgsource`) beside ``dpkg-source -b`` as a command, alternated,
and the tree's copy (:func:`buildfarm.model.sources.copy_tree`) beside the tarball it replaced.

``python ops/bench/packing.py [N] [ROUNDS]`` (default 40 trees, 3 rounds): per round, N packs each
way, CPU seconds a pack of the processes they start (the forked runs: the Perl's children, read
from /proc, so its own start is apart, printed as such); and the wall time of a submit's first
pack with its Perl started then (as every submit did) or before (as the API's Perls are now).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from buildfarm.engine.dpkgsource import DpkgSourceForks  # noqa: E402
from buildfarm.engine.srcpkg import dpkg_source_env  # noqa: E402
from buildfarm.model.sources import copy_tree, pack_tree, unpack_tree  # noqa: E402

from debpkgs import make_package  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _trees(root: Path, count: int) -> list[Path]:
    """``count`` directories, each holding one trivial native tree ``pkgN-1.0``."""
    out = []
    for index in range(count):
        work = root / str(index)
        work.mkdir(parents=True)
        os.rename(make_package(work, f"pkg{index}"), work / f"pkg{index}-1.0")
        out.append(work)
    return out


def _children_cpu(pid: int) -> float:
    """CPU seconds of the waited-for children of process ``pid`` (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICKS


def forked(root: Path, count: int) -> tuple[float, float]:
    """(CPU a pack, the Perl's own start in CPU s) of ``count`` packs forked from one Perl."""
    works = _trees(root, count + 1)
    forks = DpkgSourceForks(dpkg_source_env())
    try:
        started = resource.getrusage(resource.RUSAGE_CHILDREN)
        first = forks.run(["-b", "pkg0-1.0"], works[0], 60)  # starts the Perl
        assert first is not None and first[0] == 0, first
        (perl,) = forks.idle_pids()
        before = _children_cpu(perl)
        for index, work in enumerate(works[1:], 1):
            done = forks.run(["-b", f"pkg{index}-1.0"], work, 60)
            assert done is not None and done[0] == 0, done
        cpu = _children_cpu(perl) - before
    finally:
        forks.close()
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ended.ru_utime + ended.ru_stime - started.ru_utime - started.ru_stime
    return cpu / count, total - cpu - cpu / count  # less the runs and the first one: its start


def first_pack(root: Path) -> tuple[float, float]:
    """Wall seconds of a submit's first pack: (its Perl started by it, as each submit did before;
    its Perl started before, as the API does at its start and keeps between submits)."""
    works = _trees(root, 3)
    spent = []
    forks = DpkgSourceForks(dpkg_source_env())
    try:
        begun = time.monotonic()
        assert forks.run(["-b", "pkg0-1.0"], works[0], 60) is not None  # starts the Perl
        spent.append(time.monotonic() - begun)
        forks.start(1)
        assert forks.run(["-b", "pkg1-1.0"], works[1], 60) is not None  # the Perl has loaded
        begun = time.monotonic()
        assert forks.run(["-b", "pkg2-1.0"], works[2], 60) is not None  # the idle Perl
        spent.append(time.monotonic() - begun)
    finally:
        forks.close()
    return spent[0], spent[1]


def commands(root: Path, count: int) -> float:
    """CPU a pack of ``count`` ``dpkg-source -b`` commands."""
    works = _trees(root, count)
    started = resource.getrusage(resource.RUSAGE_CHILDREN)
    for index, work in enumerate(works):
        subprocess.run(
            ["dpkg-source", "-b", f"pkg{index}-1.0"],
            cwd=work,
            env=dpkg_source_env(),
            check=True,
            capture_output=True,
        )
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ended.ru_utime + ended.ru_stime - started.ru_utime - started.ru_stime) / count


def copies(root: Path, count: int) -> tuple[float, float]:
    """CPU a copy of a trivial tree: (through pack_tree's tarball, copy_tree)."""
    tree = make_package(root, "copied")
    spent = []
    for way in ("tarball", "copy"):
        begun = time.process_time()
        for index in range(count):
            dest = root / f"{way}{index}"
            if way == "copy":
                copy_tree(tree, dest)
            else:
                tarball = root / "tree.tar.gz"
                tarball.write_bytes(pack_tree(tree))
                unpack_tree(tarball, dest)
        spent.append((time.process_time() - begun) / count)
    return spent[0], spent[1]


def main(count: int = 40, rounds: int = 3) -> None:
    print(f"packing {count} trivial trees a way, {rounds} rounds alternated (load {os.getloadavg()[0]:.1f})")
    results: dict[str, list[float]] = {
        "forked": [],
        "start": [],
        "command": [],
        "tarball": [],
        "copy": [],
        "first": [],
        "first started": [],
    }
    for _round in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
            work = Path(tmp)
            each, start = forked(work / "forked", count)
            results["forked"].append(each)
            results["start"].append(start)
            results["command"].append(commands(work / "command", count))
            first, started = first_pack(work / "first")
            results["first"].append(first)
            results["first started"].append(started)
            tarball, copy = copies(work / "copies", count)
            results["tarball"].append(tarball)
            results["copy"].append(copy)
            shutil.rmtree(work / "forked")
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"  dpkg-source -b, CPU a pack (median): forked {med['forked'] * 1000:.1f} ms, as a command "
        f"{med['command'] * 1000:.1f} ms; a Perl's start {med['start'] * 1000:.0f} ms (one a packing thread)"
    )
    print(
        f"  a submit's first pack, wall (median): its Perl started then {med['first'] * 1000:.0f} ms, "
        f"started before (at the API's start) {med['first started'] * 1000:.0f} ms"
    )
    print(
        f"  the tree's copy, CPU (median): through a tarball {med['tarball'] * 1000:.2f} ms, "
        f"copy_tree {med['copy'] * 1000:.2f} ms (load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
