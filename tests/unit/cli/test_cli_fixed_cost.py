"""What every CLI command pays before and after its work (issue 16 part 5: the fixed cost of
``build submit --wait``): no library only some farms use is imported at start, and the objects a
command leaves are frozen out of the exit's garbage collections."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from buildfarm_cli.main import run

NOT_AT_START = ("minio", "alembic")
"""The S3 client (an S3 artifact store or backup target only) and the migration tool (``start``
and the admin routes only): 0.5 s of CPU of every command on a 2-core machine before."""


def test_a_local_farm_command_does_not_import_what_only_some_farms_use() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, buildfarm_cli.main, buildfarm.local.inprocess, buildfarm.wiring;"
            f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert loaded == []


def test_the_objects_of_a_command_are_frozen_before_the_interpreter_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["buildfarm", "build", "list"])  # no farm: one error line, exit 1
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as ended:
            run()
        assert ended.value.code == 1
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
