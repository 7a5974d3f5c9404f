"""Dependency layers: named by what they hold, checked before use, least recently used evicted.

The layers here are small real tarballs written by the test's maker; what is tested is the
cache's logic.  A layer made with apt for real is in tests/integration/runners/test_sbuild_farm.py.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest
from envkit import LayerMaker

from buildfarm.environments import LAYER_LOOKUPS, DependencySet, LayerCache
from buildfarm.environments.resolve import _trusted, _url, dependency_string
from buildfarm.metrics.worker import REGISTRY

ENV = "a" * 64
LIBS = ("libpopt-dev:amd64=1.19+dfsg-1", "zlib1g-dev:amd64=1:1.2.13.dfsg-1")


def _age(cache: LayerCache, key: str, seconds_ago: float) -> None:
    """Pretend the layer was last used ``seconds_ago`` (its record's mtime is its last use)."""
    meta = cache.root / f"{key}.json"
    then = meta.stat().st_mtime - seconds_ago
    os.utime(meta, (then, then))


def test_key_is_the_environment_and_the_sorted_package_set() -> None:
    one = DependencySet(ENV, LIBS)
    assert DependencySet(ENV, tuple(reversed(LIBS)) + LIBS[:1]).key() == one.key()  # order, repeats
    assert DependencySet("b" * 64, LIBS).key() != one.key()  # another environment
    assert DependencySet(ENV, (LIBS[0], "zlib1g-dev:amd64=1:1.2.13.dfsg-1+deb12u1")).key() != one.key()
    assert DependencySet(ENV, LIBS[:1]).key() != one.key()


def test_made_once_then_a_hit(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers", max_bytes=1 << 30)
    maker = LayerMaker()
    deps = DependencySet(ENV, LIBS)
    layer, hit = cache.ensure(deps, maker)
    again, hit_again = cache.ensure(DependencySet(ENV, tuple(reversed(LIBS))), maker)
    assert (hit, hit_again, maker.calls) == (False, True, 1)
    assert again.path == layer.path == cache.root / f"{deps.key()}.tar" and again.deps == deps
    assert [e.key for e in cache.entries()] == [deps.key()]


def test_least_recently_used_goes_first_when_over_the_bound(tmp_path: Path) -> None:
    maker = LayerMaker(size=10_000)
    cache = LayerCache(tmp_path / "layers", max_bytes=1 << 30)
    sets = [DependencySet(ENV, (f"lib{n}-dev:amd64=1",)) for n in range(4)]
    for n, deps in enumerate(sets[:3]):
        layer, _ = cache.ensure(deps, maker)
        _age(cache, deps.key(), 100 - n)  # 0 is the oldest use
    cache.max_bytes = 3 * layer.size  # three fit, not four
    assert cache.find(sets[0]) is not None  # used again: now the most recent
    cache.ensure(sets[3], maker)  # over the bound: the least recently used (1) goes
    assert {e.key for e in cache.entries()} == {sets[0].key(), sets[2].key(), sets[3].key()}
    assert not (cache.root / f"{sets[1].key()}.tar").exists()
    assert sum(e.size for e in cache.entries()) <= cache.max_bytes


def test_a_layer_bigger_than_the_bound_is_still_used_once(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers", max_bytes=100)
    layer, hit = cache.ensure(DependencySet(ENV, LIBS), LayerMaker())
    assert not hit and layer.path.is_file()  # the step that made it uses it; the next one evicts it


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_layer_is_removed_and_made_again(tmp_path: Path, damage: str) -> None:
    cache = LayerCache(tmp_path / "layers", max_bytes=1 << 30)
    maker = LayerMaker()
    deps = DependencySet(ENV, LIBS)
    layer, _ = cache.ensure(deps, maker)
    size = layer.path.stat().st_size
    if damage == "truncate":
        with layer.path.open("r+b") as handle:
            handle.truncate(size // 2)
    elif damage == "flip":
        with layer.path.open("r+b") as handle:
            handle.seek(700)
            handle.write(b"X")
    else:
        layer.path.unlink()
    assert cache.find(deps) is None  # never used
    assert not (cache.root / f"{deps.key()}.json").exists()
    again, hit = cache.ensure(deps, maker)
    assert not hit and maker.calls == 2 and cache.check(again)


def test_half_written_layer_leaves_no_entry(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers", max_bytes=1 << 30)
    deps = DependencySet(ENV, LIBS)

    def dies(dest: Path) -> None:
        dest.write_bytes(b"half a layer")
        raise OSError("apt was killed")

    with pytest.raises(OSError, match="killed"):
        cache.ensure(deps, dies)
    assert cache.entries() == [] and cache.find(deps) is None
    leftover = cache.root / f".new-{deps.key()}-1-dead"  # what a maker killed by SIGKILL leaves
    leftover.mkdir()
    (leftover / "layer.tar").write_bytes(b"half")
    (cache.root / f"{deps.key()}.tar").write_bytes(b"renamed, record never written")
    assert cache.find(deps) is None
    _, hit = cache.ensure(deps, LayerMaker())
    assert not hit and not leftover.exists()


def test_two_layers_are_made_at_once_and_the_same_one_only_once(tmp_path: Path) -> None:
    """While one layer is being made, another node makes a different one to the end; a node
    asking for the one being made waits for it and finds it made.  Each "node" is a cache of
    its own over the same directory (its own open lock files, as another process has)."""
    root = tmp_path / "layers"
    one, two = DependencySet(ENV, LIBS), DependencySet(ENV, ("libfoo-dev:amd64=1",))
    made_two: list[tuple[object, bool]] = []
    same: list[tuple[object, bool]] = []
    second_maker, same_maker = LayerMaker(), LayerMaker()
    waiter: list[threading.Thread] = []
    finished_inside: list[bool] = []

    def make_one(dest: Path) -> None:
        other = threading.Thread(
            target=lambda: made_two.append(LayerCache(root, 1 << 30).ensure(two, second_maker))
        )
        other.start()
        other.join(timeout=120)  # a bound for the old code's single lock only: it returns at once
        finished_inside.append(not other.is_alive())
        asking = threading.Thread(
            target=lambda: same.append(LayerCache(root, 1 << 30).ensure(one, same_maker))
        )
        asking.start()  # waits for this making (the key's lock), joined after it
        waiter.append(asking)
        LayerMaker()(dest)

    layer, hit = LayerCache(root, 1 << 30).ensure(one, make_one)
    waiter[0].join()
    assert finished_inside == [True]  # two was made while one was being made
    assert made_two[0][1] is False and second_maker.calls == 1
    assert hit is False and same == [(layer, True)] and same_maker.calls == 0  # one made only once
    assert {e.key for e in LayerCache(root, 1 << 30).entries()} == {one.key(), two.key()}


def test_a_layer_in_use_is_not_evicted_or_pruned(tmp_path: Path) -> None:
    """A step holds its layer from the check to the end of its sbuild: eviction passes over it."""
    maker = LayerMaker(size=10_000)
    cache = LayerCache(tmp_path / "layers", max_bytes=1 << 30)
    sets = [DependencySet(ENV, (f"lib{n}-dev:amd64=1",)) for n in range(3)]
    used = cache.acquire(sets[0], maker)  # a step unpacks it
    cache.max_bytes = used.layer.size  # one fits
    _age(cache, sets[0].key(), 100)  # and it is the least recently used
    cache.ensure(sets[1], maker)
    assert cache.check(used.layer) and {e.key for e in cache.entries()} == {sets[0].key(), sets[1].key()}
    pruned = cache.prune(set(), min_age_seconds=0)  # both of a pruned environment
    assert [layer.key for layer in pruned] == [sets[1].key()]  # not the one in use
    assert cache.check(used.layer)
    used.release()
    cache.ensure(sets[2], maker)  # over the bound again: now the released one goes
    assert [e.key for e in cache.entries()] == [sets[2].key()]
    assert not used.layer.path.exists()


def test_prune_removes_layers_of_pruned_environments(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "layers", max_bytes=1 << 30)
    maker = LayerMaker()
    live = DependencySet(ENV, LIBS)
    gone = DependencySet("b" * 64, LIBS)
    cache.ensure(live, maker)
    cache.ensure(gone, maker)
    assert cache.prune({ENV}, min_age_seconds=3600) == []  # just used: a step may be unpacking it
    _age(cache, gone.key(), 7200)
    dead = cache.root / f".new-{gone.key()}-1-dead"  # a maker killed by SIGKILL
    dead.mkdir()
    assert [layer.key for layer in cache.prune({ENV}, min_age_seconds=3600)] == [gone.key()]
    assert [layer.key for layer in cache.entries()] == [live.key()]
    assert not dead.exists() and not (cache.root / f".lock-{gone.key()}").exists()


def test_lookups_are_counted_on_the_workers_metrics() -> None:
    before = REGISTRY.get_sample_value("buildfarm_env_layer_lookups_total", {"result": "hit"}) or 0.0
    LAYER_LOOKUPS.labels("hit").inc()
    assert REGISTRY.get_sample_value("buildfarm_env_layer_lookups_total", {"result": "hit"}) == before + 1


def test_dependency_string_is_sbuilds_dummy_package(tmp_path: Path) -> None:
    dsc = tmp_path / "x_1.dsc"
    dsc.write_text(
        "Format: 3.0 (native)\nSource: x\nBuild-Depends: debhelper-compat (= 13),\n libpopt-dev [amd64],\n"
        " foo <!nocheck>\nBuild-Depends-Indep: python3\nBuild-Conflicts: libbad-dev\n"
        "Checksums-Sha256:\n abc 1 x_1.tar.xz\n"
    )
    depends, conflicts = dependency_string(dsc)
    assert depends == (
        "build-essential, fakeroot, debhelper-compat (= 13), libpopt-dev [amd64], foo <!nocheck>, python3"
    )
    assert conflicts == "libbad-dev"


def test_environment_sources_are_read_on_the_host_without_its_keys() -> None:
    assert _trusted("deb http://deb.debian.org/debian bookworm main") == (
        "deb [trusted=yes] http://deb.debian.org/debian bookworm main"
    )
    assert _trusted("deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://m/debian b main") == (
        "deb [trusted=yes arch=amd64] http://m/debian b main"
    )
    assert _url("deb [trusted=yes] http://m/debian bookworm main contrib") == "http://m/debian/"


def test_lean_layer_leaves_out_only_the_archive_lists(tmp_path: Path) -> None:
    """The layer of a step whose Build-Depends the environment has: apt there installs nothing
    from the archive, so its ~50 MB of lists would only be parsed for nothing."""
    from buildfarm.environments.layermaker import make_lean

    base = tmp_path / "env.tar"
    members = {
        "./var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": b"release",
        "./var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages": b"pkgs",
        "./var/lib/apt/lists/lock": b"",
        "./var/lib/dpkg/status": b"Package: debhelper\n",
        "./etc/apt/sources.list": b"deb http://deb.debian.org/debian bookworm main\n",
    }
    with tarfile.open(base, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    make_lean(base, tmp_path / "lean.tar")
    with tarfile.open(tmp_path / "lean.tar") as tar:
        assert sorted(tar.getnames()) == [
            "./etc/apt/sources.list",
            "./var/lib/apt/lists/lock",
            "./var/lib/dpkg/status",
        ]
    with tarfile.open(base) as tar:
        assert len(tar.getnames()) == len(members)  # the environment itself is untouched


def test_no_layers_where_the_hosts_apt_cannot_decide_for_the_environment(tmp_path: Path) -> None:
    """Sets are resolved with the host's apt: a cross-build (multi-arch) environment, or one of
    another apt series, keeps sbuild's own resolution in the bare environment."""
    from buildfarm.environments.resolve import _host_apt_version, _series, unlike_host

    host = _host_apt_version()
    view = tmp_path / "view"
    (view / "var" / "lib" / "dpkg").mkdir(parents=True)
    status = view / "var" / "lib" / "dpkg" / "status"
    status.write_text(
        f"Package: dpkg\nVersion: 1\n\nPackage: apt\nStatus: install ok installed\nVersion: {host}\n"
    )
    assert unlike_host(view) == ""
    status.write_text(f"Package: apt\nVersion: {_series(host)}.999\n")  # the same series, updated
    assert unlike_host(view) == ""
    status.write_text("Package: apt\nVersion: 1.8.2\n")
    assert "is not the host's" in unlike_host(view)
    status.write_text(f"Package: apt\nVersion: {host}\n")
    (view / "var" / "lib" / "dpkg" / "arch").write_text("amd64\narm64\n")
    assert "multi-architecture" in unlike_host(view)


def _environment_tarball(path: Path, packages: dict[str, str]) -> None:
    """A small real environment tarball: a dpkg database with ``packages`` (name: extra fields)
    installed, the host's apt among them, a sources.list and an archive list."""
    from buildfarm.environments.resolve import _host_apt_version

    stanzas = [
        f"Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n{extra}"
        for name, extra in packages.items()
    ]
    stanzas.append(
        f"Package: apt\nStatus: install ok installed\nArchitecture: amd64\nVersion: {_host_apt_version()}\n"
    )
    members = {
        "./var/lib/dpkg/status": "\n".join(stanzas).encode(),
        "./etc/apt/sources.list": b"deb http://deb.debian.org/debian bookworm main\n",
        "./var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": b"release",
    }
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _dsc(path: Path, build_depends: str) -> Path:
    path.write_text(
        f"Format: 3.0 (native)\nSource: p\nBinary: p\nArchitecture: any\nVersion: 1.0\n"
        f"Build-Depends: {build_depends}\n"
    )
    return path


TOOLCHAIN_STATUS = {
    "build-essential": "",
    "debhelper": "Provides: debhelper-compat (= 13)\n",
    "fakeroot": "",
}


@pytest.mark.parametrize(
    ("packages", "build_depends", "satisfied"),
    [
        (TOOLCHAIN_STATUS, "debhelper-compat (= 13)", True),
        (TOOLCHAIN_STATUS, "debhelper-compat (= 13), zlib1g-dev", False),
        # fakeroot is no Build-Essential package, but sbuild's dpkg-buildpackage -rfakeroot needs it
        ({k: v for k, v in TOOLCHAIN_STATUS.items() if k != "fakeroot"}, "debhelper-compat (= 13)", False),
    ],
)
def test_a_step_the_environment_satisfies_runs_with_nothing_to_install(
    tmp_path: Path, packages: dict[str, str], build_depends: str, satisfied: bool
) -> None:
    """Told on the host (dpkg-checkbuilddeps against the environment's dpkg database, with what
    sbuild adds): then the step gets the environment without its archive lists and sbuild runs
    without a resolver; otherwise apt resolves the set (nothing here: no apt lists to resolve
    from, so the step stays in its environment, where sbuild's apt resolver explains)."""
    from buildfarm.environments import Environment, EnvironmentSpec, LayerPolicy, step_tarball

    tarball = tmp_path / "env.tar"
    _environment_tarball(tarball, packages)
    spec = EnvironmentSpec("bookworm", "amd64", "http://deb.debian.org/debian")
    env = Environment("e" * 64, tarball, spec, "2026-01-01T00:00:00Z", tarball.stat().st_size, "")
    policy = LayerPolicy(LayerCache(tmp_path / "layers", 1 << 30), tmp_path / "views")
    (tmp_path / "work").mkdir()
    lines: list[str] = []
    chosen = step_tarball(
        env, _dsc(tmp_path / "p_1.0.dsc", build_depends), [], policy, work=tmp_path / "work", log=lines.append
    )
    try:
        assert chosen.satisfied is satisfied, lines
        if satisfied:
            assert chosen.path != tarball and "has every Build-Depends" in lines[0]
            with tarfile.open(chosen.path) as tar:  # the lean layer: no archive lists
                assert not any(n.startswith("./var/lib/apt/lists/deb") for n in tar.getnames())
        else:
            assert chosen.path == tarball
            assert not any("has every Build-Depends" in line for line in lines)
    finally:
        chosen.release()  # the lean layer is held in use until then
