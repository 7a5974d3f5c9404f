"""dpkg-source forked from a preloaded Perl makes the bytes dpkg-source run as a command makes,
says the same errors, is killed past its timeout, and leaves to the command what it cannot run;
the Perls are the process's, kept across submits, stopped when its environment or dpkg-source's
file changes and at its exit."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.engine.dpkgsource import PACK_THREADS, DpkgSourceForks, close_shared, shared_forks
from buildfarm.engine.srcpkg import _dpkg_source, dpkg_source_env, warm_up
from buildfarm.model.errors import PermanentError, TemporaryError

from debpkgs import make_package

pytestmark = pytest.mark.skipif(shutil.which("dpkg-source") is None, reason="needs dpkg-dev")


def _quilt_tree(root: Path) -> Path:
    """A 3.0 (quilt) tree with its upstream tarball beside it and a change to upstream (a patch
    dpkg-source -b must make, with --auto-commit)."""
    tree = make_package(root, "quilted", version="1.0-1")
    (tree / "debian" / "source" / "format").write_text("3.0 (quilt)\n")
    subprocess.run(
        ["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--exclude=debian", "-czf",
         str(root / "quilted_1.0.orig.tar.gz"), "-C", str(root), tree.name],
        check=True,
    )  # fmt: skip
    (tree / "payload.txt").write_text("changed downstream\n")
    return tree


def _pack_both_ways(tmp_path: Path, make: object, *options: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``dpkg-source <options> -b`` of the same tree as a command and forked: each directory's files."""
    made = {}
    forks = DpkgSourceForks(dpkg_source_env())
    try:
        for way in ("command", "forked"):
            root = tmp_path / way
            root.mkdir()
            tree = make(root)  # type: ignore[operator]
            os.rename(tree, root / "pkg-1.0")
            args = [*options, "-b", "pkg-1.0"]
            _dpkg_source(args, root, "test", forks if way == "forked" else None)
            shutil.rmtree(root / "pkg-1.0")
            made[way] = {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}
    finally:
        forks.close()
    return made["command"], made["forked"]


def test_a_native_package_forked_is_the_same_bytes(tmp_path: Path) -> None:
    command, forked = _pack_both_ways(tmp_path, lambda root: make_package(root, "pkg"))
    assert sorted(command) == ["pkg_1.0.dsc", "pkg_1.0.tar.xz"]
    assert forked == command


def test_a_quilt_package_with_a_patch_to_make_forked_is_the_same_bytes(tmp_path: Path) -> None:
    command, forked = _pack_both_ways(tmp_path, _quilt_tree, "--auto-commit")
    assert "quilted_1.0-1.debian.tar.xz" in command
    assert forked == command


def test_an_error_is_dpkg_sources_own_line(tmp_path: Path) -> None:
    tree = make_package(tmp_path, "broken")
    (tree / "debian" / "changelog").write_text("not a changelog\n")
    os.rename(tree, tmp_path / "broken-1.0")
    with pytest.raises(PermanentError) as as_command:
        _dpkg_source(["-b", "broken-1.0"], tmp_path, "packages[0]")
    forks = DpkgSourceForks(dpkg_source_env())
    try:
        with pytest.raises(PermanentError) as forked:
            _dpkg_source(["-b", "broken-1.0"], tmp_path, "packages[0]", forks)
    finally:
        forks.close()
    assert str(forked.value) == str(as_command.value)
    assert str(forked.value).startswith("packages[0]: dpkg-source -b failed: dpkg-source: error:")


def test_the_perls_are_reused_and_end_when_closed(tmp_path: Path) -> None:
    forks = DpkgSourceForks(dpkg_source_env())
    for name in ("one", "two", "three"):
        make_package(tmp_path, name)
        os.rename(tmp_path / name, tmp_path / f"{name}-1.0")
        assert forks.run(["-b", f"{name}-1.0"], tmp_path, 60) is not None
    assert len(forks._idle) == 1  # one thread asked: one Perl served all three
    (perl,) = forks._idle
    forks.close()
    assert perl.process.poll() is not None
    assert forks.run(["--version"], tmp_path, 60) is None  # closed: the caller runs the command


def test_what_a_request_line_cannot_carry_is_left_to_the_command(tmp_path: Path) -> None:
    forks = DpkgSourceForks(dpkg_source_env())
    try:
        assert forks.run(["-b", "a\tb"], tmp_path, 60) is None
        assert forks.run(["-b", "a\nb"], tmp_path, 60) is None
    finally:
        forks.close()


def test_a_run_past_its_timeout_is_killed(tmp_path: Path) -> None:
    """A dpkg-source that never ends (its changelog is a FIFO nobody writes) is killed with its
    Perl, and the Perl is not used again."""
    tree = make_package(tmp_path, "slow")
    (tree / "debian" / "changelog").unlink()
    os.mkfifo(tree / "debian" / "changelog")
    os.rename(tree, tmp_path / "slow-1.0")
    forks = DpkgSourceForks(dpkg_source_env())
    try:
        with pytest.raises(TimeoutError):
            forks.run(["-b", "slow-1.0"], tmp_path, 2)
        assert forks._idle == []
    finally:
        forks.close()


def test_without_a_perl_dpkg_source_it_runs_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = DpkgSourceForks(dpkg_source_env())
    forks.script = None  # as when dpkg-source is not a Perl script
    assert forks.run(["--version"], tmp_path, 60) is None
    _dpkg_source(["--version"], tmp_path, "test", forks)  # the command ran instead, and succeeded
    forks.close()


@pytest.fixture
def no_shared_perls() -> Iterator[None]:
    """The process's Perls stopped before and after the test: it sees only the ones it starts."""
    close_shared()
    yield
    close_shared()


@pytest.mark.usefixtures("no_shared_perls")
def test_two_submits_pack_through_the_same_perls_and_leave_them_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every resolver packs through the process's Perls, started before (as the API does at its
    start): two submits take them, no third, and leave them idle, running, for the next."""
    from buildfarm.engine.submit import submit_build
    from buildfarm.model.manifest import load_manifest

    from debpkgs import write_manifest
    from farmkit import make_test_context

    warm_up()
    forks = shared_forks(dpkg_source_env())
    started = forks.idle_pids()
    forked: list[tuple[int, str] | None] = []
    run = forks.run

    def counted(args: list[str], cwd: Path, timeout: float) -> tuple[int, str] | None:
        forked.append(run(args, cwd, timeout))
        return forked[-1]

    monkeypatch.setattr(forks, "run", counted)
    assert len(started) == PACK_THREADS
    ctx = make_test_context(tmp_path / "farm", f"sqlite:///{tmp_path / 'farm.db'}")
    for submit in ("a", "b"):
        src = tmp_path / submit
        names = [f"{submit}{i}" for i in range(3)]
        for name in names:
            make_package(src, name)
        submit_build(ctx, load_manifest(write_manifest(src, names)), src, "tests")
        assert sorted(forks.idle_pids()) == sorted(started)
    assert len(forked) == 6 and all(done is not None and done[0] == 0 for done in forked)
    assert shared_forks(dpkg_source_env()) is forks
    assert all(perl.process.poll() is None for perl in forks._idle)
    ctx.db.dispose()


@pytest.mark.usefixtures("no_shared_perls")
def test_perls_of_another_environment_are_stopped(tmp_path: Path) -> None:
    """A test process that changes its environment keeps the idle Perls of the last one alone."""
    first = shared_forks(dpkg_source_env())
    first.start(PACK_THREADS)
    old = [perl.process for perl in first._idle]
    assert len(old) == PACK_THREADS
    second = shared_forks(dpkg_source_env() | {"BUILDFARM_TEST_OTHER": "1"})
    assert second is not first
    assert all(process.poll() is not None for process in old)
    assert first.run(["--version"], tmp_path, 60) is None  # stopped: a run left to the command
    second.start(PACK_THREADS)
    second.start(PACK_THREADS)  # started again: no more than PACK_THREADS idle
    assert len(second.idle_pids()) == PACK_THREADS


@pytest.mark.usefixtures("no_shared_perls")
def test_a_forked_child_does_not_use_its_parents_perls() -> None:
    """A child forked by the process (no exec) would send its runs down the parent's pipes: it
    has its own set, and the parent's stay the parent's."""
    parents = shared_forks(dpkg_source_env())
    parents.start(1)
    pid = os.fork()
    if pid == 0:  # the child: exits 0 when it sees a set of its own, with no Perl yet
        mine = shared_forks(dpkg_source_env())
        os._exit(0 if mine is not parents and mine.idle_pids() == [] else 1)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared_forks(dpkg_source_env()) is parents
    assert all(perl.process.poll() is None for perl in parents._idle)


def test_no_more_than_keep_perls_stay_idle(tmp_path: Path) -> None:
    """Perls given back beyond ``keep`` (more runs at once than packing threads) are stopped."""
    forks = DpkgSourceForks(dpkg_source_env(), keep=1)
    try:
        one, two = forks._take(), forks._take()
        assert one is not None and two is not None
        forks._give_back(one)
        forks._give_back(two)
        assert forks.idle_pids() == [one.process.pid]
        assert two.process.poll() is not None
        forks.start(3)
        assert forks.idle_pids() == [one.process.pid]
    finally:
        forks.close()


def test_resolvers_share_the_processs_perls(tmp_path: Path) -> None:
    from buildfarm.engine.srcpkg import SourceResolver

    from farmkit import make_test_context

    ctx = make_test_context(tmp_path / "farm", f"sqlite:///{tmp_path / 'farm.db'}")
    resolvers = [SourceResolver(ctx, tmp_path, tmp_path / str(i)) for i in range(3)]
    assert {id(resolver.forks) for resolver in resolvers} == {id(shared_forks(dpkg_source_env()))}
    ctx.db.dispose()


_EXITS = """
import os, sys
from buildfarm.engine.dpkgsource import shared_forks
from buildfarm.engine.srcpkg import dpkg_source_env
forks = shared_forks(dpkg_source_env())
forks.start(1)
print(*forks.idle_pids(), flush=True)
os._exit(0) if sys.argv[1] == "killed" else sys.exit(0)
"""


def test_the_perls_end_at_the_processs_exit(tmp_path: Path) -> None:
    """At its exit the process stops its Perls (atexit: gone, waited for, when it has exited);
    ended without its exit handlers, its Perls end anyway, their input closed."""
    ended = subprocess.run(
        [sys.executable, "-c", _EXITS, "exits"], capture_output=True, text=True, check=True
    )
    (pid,) = ended.stdout.split()
    assert not Path(f"/proc/{pid}").exists()
    killed = subprocess.run(
        [sys.executable, "-c", _EXITS, "killed"], capture_output=True, text=True, check=True
    )
    (pid,) = killed.stdout.split()
    try:
        pidfd = os.pidfd_open(int(pid))
    except ProcessLookupError:
        return  # already ended
    try:
        ready, _w, _x = select.select([pidfd], [], [], 120)  # readable when it has exited
    finally:
        os.close(pidfd)
    assert ready == [pidfd]


def test_timeout_error_is_the_submits_temporary_error(tmp_path: Path) -> None:
    class Slow(DpkgSourceForks):
        def run(self, args: list[str], cwd: Path, timeout: float) -> tuple[int, str] | None:
            raise TimeoutError("dpkg-source -b took over 600 s")

    with pytest.raises(TemporaryError, match="took over"):
        _dpkg_source(["-b", "x"], tmp_path, "packages[0]", Slow({}))


def test_dpkg_sources_temporary_files_are_removed_in_the_forked_child(tmp_path: Path) -> None:
    """The child ends without Perl's global destruction, after the END blocks that remove
    temporary files: a native and a quilt pack (its patch made in a temporary file) leave
    nothing in TMPDIR."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    forks = DpkgSourceForks(dpkg_source_env() | {"TMPDIR": str(tmpdir)})
    try:
        for name, make, options in (
            ("native", lambda root: make_package(root, "pkg"), []),
            ("quilt", _quilt_tree, ["--auto-commit"]),
        ):
            root = tmp_path / name
            root.mkdir()
            os.rename(make(root), root / "pkg-1.0")
            status, output = forks.run([*options, "-b", "pkg-1.0"], root, 60) or (None, "")
            assert status == 0, output
            assert "dpkg-source: info: building" in output  # its output flushed before it ends
    finally:
        forks.close()
    assert list(tmpdir.iterdir()) == []


_SCRIPT = """#!/usr/bin/perl
use strict;
use warnings;
my $word = shift @ARGV;
sub said { print "said $word\\n" }
said();
exit 3;
"""


@pytest.mark.parametrize("tail", ["", "__END__\n"], ids=["compiled-once", "run-as-a-file"])
def test_each_run_has_its_own_file_scope_and_exit_status(tmp_path: Path, tail: str) -> None:
    """Each child runs the script once, compiled in the Perl (or, when it cannot be compiled as
    a sub's body, as ``__END__`` makes it, run as a file): its subs see that run's variables,
    its printed output and its exit status are the run's."""
    script = tmp_path / "script"
    script.write_text(_SCRIPT + tail)
    forks = DpkgSourceForks(dpkg_source_env())
    forks.script = script
    try:
        assert forks.run(["one"], tmp_path, 60) == (3, "said one\n")
        assert forks.run(["two"], tmp_path, 60) == (3, "said two\n")
    finally:
        forks.close()


@pytest.mark.parametrize("change", ["rewritten", "replaced"])
def test_a_changed_script_is_run_by_a_new_perl(tmp_path: Path, change: str) -> None:
    """An upgrade changes dpkg-source's file (its size or mtime, or a new file in its place):
    the idle Perl that compiled the old one is stopped, and the run is the new one's."""
    script = tmp_path / "script"
    script.write_text(_SCRIPT)
    forks = DpkgSourceForks(dpkg_source_env())
    forks.script = script
    try:
        assert forks.run(["one"], tmp_path, 60) == (3, "said one\n")
        (old,) = forks._idle
        assert forks.run(["two"], tmp_path, 60) == (3, "said two\n")
        assert forks.idle_pids() == [old.process.pid]  # unchanged: the same Perl
        upgraded = _SCRIPT.replace("said $word", "told $word")  # same size: a new file
        if change == "rewritten":
            upgraded = upgraded.replace("exit 3", "exit 33")  # another size: the same file
        if change == "rewritten":
            script.write_text(upgraded)
        else:
            (tmp_path / "new").write_text(upgraded)
            os.replace(tmp_path / "new", script)
        assert forks.run(["three"], tmp_path, 60) == (33 if change == "rewritten" else 3, "told three\n")
        assert old.process.poll() is not None
        assert forks.idle_pids() != [old.process.pid]
        script.unlink()
        assert forks.run(["four"], tmp_path, 60) is None  # gone: left to the command
    finally:
        forks.close()
