"""`make bench` at toy sizes: the benchmarks still run (nothing in the suite ran them, and they
broke twice unseen). Their figures are not checked here, only that each part works."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "ops" / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"buildfarm_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass finds its module there
    spec.loader.exec_module(module)
    return module


def test_retention_bench_selects_and_sweeps(tmp_path: Path) -> None:
    bench = _load("retention")
    db = bench.fresh_db(tmp_path, "select")
    bench.populate(db, None, kept=200, expired=20)
    _seconds, found = bench.time_selection(db, rounds=1)
    assert found == 20
    # builds 1..20 are each branch's first, whose package every later build reuses: only the
    # objects of the expired builds after them are free to go
    _took, _selection, builds, objects = bench.time_sweep(tmp_path, kept=100, expired=60)
    assert builds == 60 and objects > 0


def test_sbuild_bench_plans_the_example_packages() -> None:
    plan = _load("run").example_plan()
    assert set(plan.order()) == {
        "libgreet",
        "hello-standalone",
        "greet-cli",
        "greet-count",
        "greet-docs",
        "greet-quilt",
    }


def test_api_bench_runs_with_make_s_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("api_latency")
    monkeypatch.setattr(bench, "SHOWS", 3)
    monkeypatch.setattr(bench, "SUBMITS", 2)
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(tmp_path / "the-demo-farm"))  # what make exports
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "API GET  /builds/{id}" in out and "(n=3)" in out and "(n=2)" in out


def test_quilt_bench_gives_the_farm_the_real_package_it_builds_by_hand(tmp_path: Path) -> None:
    """Its build parts cost minutes (two sbuilds and a farm): only its inputs are checked here, the
    cached Debian package (fetched once, shared with test_real_sources_debian) and the manifest."""
    from buildfarm.model.debsource import source_package
    from buildfarm.model.manifest import load_manifest

    bench = _load("quilt")
    dsc = bench.copy_source(bench.debian_source(*bench.PACKAGE), tmp_path / "src")
    manifest = load_manifest(bench.farm_manifest(dsc, tmp_path))
    [entry] = manifest.packages
    assert entry.dsc == "src/rsakeyfind_1.0-8.dsc"
    package = source_package(tmp_path / entry.dsc, entry.dsc)
    assert package.name == "rsakeyfind" and package.format == "3.0 (quilt)"


def test_control_plane_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    _load("controlplane").main(packages=3, steps=20)
    printed = capsys.readouterr().out
    assert "packages fetched over the build: 3 (before: 6)" in printed
    assert "steps loaded as objects: 0 (before: 20;" in printed  # even the one it makes ready is a row


def test_packing_bench_packs_each_way(capsys: pytest.CaptureFixture[str]) -> None:
    _load("packing").main(count=2, rounds=1)  # each forked and command pack checks its exit status
    printed = capsys.readouterr().out
    assert "packing 2 trivial trees a way, 1 rounds alternated" in printed
    assert "dpkg-source -b, CPU a pack (median): forked " in printed
    assert "the tree's copy, CPU (median): through a tarball " in printed


def test_cli_start_bench_runs_each_command_against_its_owner_socket(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _load("clistart").main(runs=1) == 0  # each command's exit status is checked
    printed = capsys.readouterr().out
    measured = [
        line.split(" this: CPU ")[0].strip() for line in printed.splitlines() if " this: CPU " in line
    ]
    assert measured == ["--help", "build show", "build submit --wait"]


def test_scale_bench_reruns_a_submit_as_reused(capsys: pytest.CaptureFixture[str]) -> None:
    _load("scale").main(packages=3, farm=False)
    assert "(3 of 3 steps reused; goal <= 5 s)" in capsys.readouterr().out


def test_rerun_bench_reruns_from_its_snapshot_as_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("rerun")
    monkeypatch.setattr(bench, "SNAPSHOT_DIR", tmp_path)
    bench.main(packages=3, runs=2)
    printed = capsys.readouterr().out
    assert "making the snapshot of 3 packages" in printed
    assert printed.count("3 of 3 reused") == 2
    assert "release loop" in printed and "place (links)" in printed
    bench.main(packages=3, runs=1)  # the snapshot is kept: not made again
    printed = capsys.readouterr().out
    assert "making the snapshot" not in printed and "3 of 3 reused" in printed


def test_scheduler_simulation_runs_every_step_through_the_real_claim_once(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The simulation on the real claim/finish/advance path, tiny: every step (chained ones too,
    released by advance; the release step submitted half-way) is claimed exactly once, no
    schedule beats the lower bound, and every class gets a fairness index."""
    bench = _load("scheduler")
    config = bench.Config(nodes=4, steps=80, tenants=8, build_steps=20)
    result = bench.run(config, database_url, tmp_path)
    assert result.steps == 81
    assert sorted(result.claims) == sorted(set(result.claims)) and len(result.claims) == 81
    assert set(result.claims.values()) == {1}
    assert result.tickets_unused == 0
    assert result.critical_path <= result.bound <= result.makespan
    assert result.total_work / config.nodes <= result.bound
    assert set(result.jain) == {"release", "on-demand", "nightly", "personal"}
    assert all(0 < index <= 1.0 + 1e-9 for index in result.jain.values())
    assert result.release_wait >= 0
    bench.report(config, result)
    assert "makespan" in capsys.readouterr().out


def test_concurrent_dispatch_claims_every_step_once_across_processes(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The scheduler bench's concurrent part, tiny: two worker processes claiming, finishing and
    advancing the same builds at once claim every step (chained ones too) exactly once."""
    bench = _load("scheduler")
    config = bench.Config(steps=60, tenants=6, build_steps=20)
    result = bench.concurrent(config, database_url, tmp_path, workers=2)
    assert len(result.claims) == 60
    assert sorted(set(result.claims)) == sorted(result.claims)
    bench.report_concurrent(result)
    assert "2 worker processes at once" in capsys.readouterr().out


def test_makespan_bench_bounds_the_build_by_its_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """The 2-node bound from a build's steps: max(critical path, total work / 2), as measured
    (the chain lib -> app, 10 + 12 s, beats 31 s / 2) and with setup removed (sbuild Build-Time
    only: 12 s / 2 beats the chain's 2 + 3 s); without a Build-Time the latter is left out."""

    def step(name: str, seconds: int, depends_on: list[str], started: int) -> dict[str, object]:
        return {
            "name": name,
            "state": "succeeded",
            "duration_seconds": float(seconds),
            "depends_on": depends_on,
            "node": "node1",
            "started_at": f"2026-01-02T03:00:{started:02d}+00:00",
            "finished_at": f"2026-01-02T03:00:{started + seconds:02d}+00:00",
        }

    bench = _load("makespan")
    steps = [
        step("lib", 10, [], 0),
        step("app", 12, ["lib"], 10),
        step("doc", 5, [], 0),
        step("man", 4, [], 5),
    ]
    logs = {
        "lib": "Build-Time: 2\n",
        "app": "x\nBuild-Time: 3\n",
        "doc": "Build-Time: 4\n",
        "man": "Build-Time: 3",
    }
    bench.summarize(30.0, steps, logs)
    measured, setup_removed = capsys.readouterr().out.split("steps' setup removed")
    assert "steps' span (first start, last end)     22.0 s" in measured
    assert "bound    22.0 s   (critical path 22.0 s, total work 31.0 s / 2 = 15.5 s)" in measured
    assert "ratio makespan / bound      1.36" in measured
    assert "bound     6.0 s   (critical path 5.0 s, total work 12.0 s / 2 = 6.0 s)" in setup_removed
    assert "ratio makespan / bound      5.00" in setup_removed
    bench.summarize(30.0, steps, logs | {"doc": "no summary"})
    assert "not available (no Build-Time in the log of doc)" in capsys.readouterr().out


def test_envsetup_bench_splits_an_sbuild_log_into_its_setup_phases() -> None:
    """Where a step's setup goes, from when sbuild's log lines came (seconds since its start)."""
    bench = _load("envsetup")
    timed = [
        (0.5, "sbuild (Debian sbuild) 0.85.0"),
        (0.75, "Unpacking /cache/lean.tar to /dev/shm/x/sbuild.abc..."),
        (2.0, "I: NOTICE: Log filtering will replace 'sbuild-unshare-dummy-location' with '<<CHROOT>>'"),
        (3.5, "| Install package build dependencies                            |"),
        (3.5, "Null resolver: not installing main dependencies"),
        (4.0, "| Check architectures                                            |"),
        (9.0, "Build-Time: 2"),
    ]
    assert bench.phases(timed, wall=9.5, build=2.0) == {
        "sbuild start": 0.75,
        "unpack, chroot users": 1.25,
        "resolver setup, source in": 1.5,
        "build dependencies": 0.5,
        "rest of the session": 3.5,
    }
