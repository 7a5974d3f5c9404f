"""dpkg-source forked from a preloaded Perl makes the bytes dpkg-source run as a command makes,
says the same errors, is killed past its timeout, and leaves to the command what it cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildfarm.engine.dpkgsource import DpkgSourceForks
from buildfarm.engine.srcpkg import _dpkg_source, dpkg_source_env
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
    assert perl.poll() is not None
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


def test_a_submit_packs_through_forked_perls_and_ends_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submit's resolver packs every tree through its Perls and closes them at its end."""
    from buildfarm.engine import srcpkg

    made: list[DpkgSourceForks] = []
    real = srcpkg.DpkgSourceForks

    def recording(env: dict[str, str]) -> DpkgSourceForks:
        made.append(real(env))
        return made[-1]

    monkeypatch.setattr(srcpkg, "DpkgSourceForks", recording)
    from buildfarm.engine.submit import submit_build
    from buildfarm.model.manifest import load_manifest

    from debpkgs import write_manifest
    from farmkit import make_test_context

    src = tmp_path / "src"
    names = [f"p{i}" for i in range(3)]
    for name in names:
        make_package(src, name)
    ctx = make_test_context(tmp_path / "farm", f"sqlite:///{tmp_path / 'farm.db'}")
    submit_build(ctx, load_manifest(write_manifest(src, names)), src, "tests")
    (forks,) = made
    assert forks._closed and forks._idle == []
    ctx.db.dispose()


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
