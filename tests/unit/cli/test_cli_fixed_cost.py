"""What every CLI command pays before and after its work (issue 16 part 5: the fixed cost of
``build submit --wait``): no library only some farms use is imported at start, what only some
commands use is imported by those commands, and the objects a command leaves are frozen out of
the exit's garbage collections."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.core import TyperGroup
from typer.models import TyperInfo
from typer.testing import CliRunner

from buildfarm_cli import client, groups
from buildfarm_cli.config import ClientConfig
from buildfarm_cli.httpclient import HttpClient
from buildfarm_cli.main import app, run
from buildfarm_client.models import BuildView

NOT_AT_START = ("minio", "alembic")
"""The S3 client (an S3 artifact store or backup target only) and the migration tool (``start``
and the admin routes only): 0.5 s of CPU of every command on a 2-core machine before."""


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter has imported after running ``code``."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys\n{code}\nprint(' '.join(m for m in {names!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()


def test_a_local_farm_command_does_not_import_what_only_some_farms_use() -> None:
    code = "import buildfarm_cli.main, buildfarm.local.inprocess, buildfarm.wiring"
    assert _loaded_after(code, NOT_AT_START) == []


NOT_FOR_EVERY_COMMAND = (
    "buildfarm.model.settings",  # pydantic-settings and the setting groups: the local farm's commands
    "pydantic_settings",
    "buildfarm_cli.client",  # the farm client: httpx, pydantic and the wire models
    "buildfarm_client.client",
    "buildfarm_client.models",
    "httpx",
    "pydantic",
    "yaml",  # a client file or a manifest to read
    "buildfarm.model.manifest",
    "rich.live",  # `build submit --wait` and progress bars
    "rich.progress",
    "rich.console",  # what prints for people: not a command printing JSON
    "rich.table",
)
"""Imported by the commands that use them, not at start: `--help` and every command paid for all
of them before (0.25 s of CPU, issue 16)."""


def test_the_cli_imports_a_commands_dependencies_when_the_command_runs() -> None:
    assert _loaded_after("import buildfarm_cli.main", NOT_FOR_EVERY_COMMAND) == []


def test_a_command_line_makes_only_the_group_of_commands_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """typer reads the signature of every command it makes: a command does not pay for the 30-odd
    others (``--help`` lists every group, so it makes them all)."""
    made: list[str] = []
    make = groups.get_group_from_info

    def get_group_from_info(info: TyperInfo, **settings: Any) -> TyperGroup:
        made.append(str(info.name))
        return make(info, **settings)

    monkeypatch.setattr(groups, "get_group_from_info", get_group_from_info)
    shown = CliRunner().invoke(app, ["build", "show", "--help"])
    assert shown.exit_code == 0, shown.output
    assert "One build with its steps" in shown.output
    assert made == ["build"]
    made.clear()
    listed = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    names = ["build", "repo", "admin", "mirror", "schedule", "retention", "storage", "env", "node", "backup"]
    assert sorted(made) == sorted(names)
    rows = [line.split() for line in listed.output.splitlines() if line.startswith("│ ")]
    listed_names = [row[1] for row in rows if len(row) > 1]
    assert listed_names[-len(names) :] == names  # after the top level's own commands, in their order


def test_a_command_does_not_import_the_command_line_of_httpx() -> None:
    """Its click, pygments and rich progress bars (the farm's Celery installs click, so httpx
    imports them all): a farm's client never runs it."""
    code = (
        "sys.argv = ['buildfarm', '--farm', 'http://127.0.0.1:9', '-o', 'json', 'build', 'show', '7']\n"
        "from buildfarm_cli.main import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass"
    )
    assert _loaded_after(code, ("httpx", "click", "pygments", "rich.syntax")) == ["httpx"]


def test_printing_json_needs_no_rich() -> None:
    code = (
        "import contextlib, io\n"
        "from buildfarm_cli.output import emit_json\n"
        "from buildfarm_client.models import BuildView\n"
        "view = BuildView(id=7, project='p', branch='main', kind='nightly', user='ann', state='failed',"
        " created_at='2026-01-01T00:00:00+00:00', finished_at=None, published=None, error='x')\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    emit_json(view)"
    )
    assert _loaded_after(code, ("rich",)) == []


def test_following_a_build_for_json_needs_no_rich() -> None:
    """``build submit --wait --output json`` draws no live table."""
    code = (
        "from buildfarm_cli.main import _follow_build\n"
        "from buildfarm_cli.output import OutputFormat\n"
        "from buildfarm_client.models import BuildView\n"
        "class Farm:\n"
        "    def show(self, build_id):\n"
        "        return BuildView(id=build_id, project='p', branch='main', kind='nightly', user='ann',"
        " state='succeeded', created_at='2026-01-01T00:00:00+00:00', finished_at=None, published=None,"
        " error=None)\n"
        "assert _follow_build(Farm(), 7, 60.0, OutputFormat.JSON).id == 7"
    )
    assert _loaded_after(code, ("rich",)) == []


def test_the_farm_client_reads_settings_and_manifests_only_for_the_commands_that_need_them(
    tmp_path: Path,
) -> None:
    """`build show` of a remote farm reads neither; the manifest reader is for `build submit`, YAML
    for a client file that exists."""
    code = (
        "from pathlib import Path\n"
        "from buildfarm_cli.client import make_client\n"
        "from buildfarm_cli.config import resolve\n"
        f"make_client(resolve('http://farm.invalid:8781', {{}}, Path({str(tmp_path / 'client.yaml')!r})))"
    )
    assert _loaded_after(code, ("buildfarm.model.settings", "buildfarm.model.manifest", "yaml")) == []


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
        assert gc.isenabled()  # paused while the command started, whatever its outcome
    finally:
        gc.unfreeze()


def test_a_command_starts_with_the_collector_off_and_does_its_work_with_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, bool] = {}
    made = client.make_client

    def make_client(config: ClientConfig, *, in_process: bool = False) -> HttpClient:
        seen["starting"] = gc.isenabled()
        return made(config, in_process=in_process)

    def show(self: HttpClient, build_id: int) -> BuildView:
        seen["working"] = gc.isenabled()
        return BuildView(
            id=build_id, project="p", branch="main", kind="nightly", user="ann", state="succeeded",
            created_at="2026-01-01T00:00:00+00:00", finished_at=None, published=None, error=None,
        )  # fmt: skip

    monkeypatch.setattr(client, "make_client", make_client)
    monkeypatch.setattr(HttpClient, "show", show)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    farm = "http://farm.invalid:8781"
    monkeypatch.setattr(sys, "argv", ["buildfarm", "--farm", farm, "-o", "json", "build", "show", "7"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as ended:
            run()
        assert ended.value.code == 0
    finally:
        gc.unfreeze()
    assert json.loads(capsys.readouterr().out)["id"] == 7
    assert seen == {"starting": False, "working": True}
    assert gc.isenabled()
