"""Work directories removed beside a node's next steps (:mod:`buildfarm.engine.workdirs`)."""

from __future__ import annotations

from pathlib import Path

from buildfarm.engine.workdirs import Removals


def _tree(root: Path) -> Path:
    (root / "src" / "debian").mkdir(parents=True)
    (root / "src" / "debian" / "rules").write_text("#!/usr/bin/make -f\n")
    (root / "pkg_1_all.deb").write_bytes(b"!<arch>\n")
    return root


def test_a_removal_is_waited_for_by_its_path_or_with_all(tmp_path: Path) -> None:
    removals = Removals()
    one, two = _tree(tmp_path / "1-a-1"), _tree(tmp_path / "1-b-1")
    removals.start(one)
    removals.wait(one)
    assert not one.exists()
    removals.start(two)
    removals.wait()
    assert not two.exists()
    removals.wait(tmp_path / "never-started")  # nothing to wait for
    removals.wait(timeout=0)


def test_a_directory_already_gone_is_no_error(tmp_path: Path) -> None:
    removals = Removals()
    removals.start(tmp_path / "gone")
    removals.wait()
    assert list(tmp_path.iterdir()) == []
