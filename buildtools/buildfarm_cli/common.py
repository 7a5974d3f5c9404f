"""What every command shares: the global options and the farm client they choose."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Annotated

import typer

from buildfarm.model.errors import PermanentError
from buildfarm_cli.config import resolve
from buildfarm_cli.output import OutputFormat

if TYPE_CHECKING:  # imported by the commands that use them, not for `--help` or another command
    from buildfarm.model.settings import Settings
    from buildfarm_cli.client import FarmClient

OutputOpt = Annotated[OutputFormat | None, typer.Option("--output", "-o", help="text or json")]


def farm_settings(**overrides: object) -> Settings:
    """This machine's farm's settings (:func:`buildfarm.model.settings.load_settings`), imported
    by the first command that reads them: pydantic-settings and the setting groups cost every
    other command 0.06 s of CPU."""
    from buildfarm.model.settings import load_settings

    return load_settings(**overrides)


class CliState:
    """The global options of one invocation and the client made from them (once, on first use)."""

    def __init__(self) -> None:
        self.output = OutputFormat.TEXT
        self.farm_flag: str | None = None
        self._client: FarmClient | None = None
        self._collector_paused = False

    def pause_collector(self) -> None:
        """Turn the garbage collector off while the command starts (the console entry point
        does): what it imports and makes then (typer's and the client's pydantic, the settings,
        the wire models, an in-process farm) lives until the process ends, and the collections
        that walked it all were 0.04 s of CPU of ``build submit --wait`` and ``build show``."""
        gc.disable()
        self._collector_paused = True

    def resume_collector(self) -> None:
        """The command has started (its client made, or its local work begun): the objects that
        exist now are frozen out of every later collection and the collector runs again, for a
        command that follows a build for hours.  Nothing if it was not paused."""
        if self._collector_paused:
            self._collector_paused = False
            gc.freeze()
            gc.enable()

    def fmt(self, override: OutputFormat | None) -> OutputFormat:
        return override or self.output

    def client(self, *, in_process: bool = False) -> FarmClient:
        """The farm named by --farm, BUILDFARM_URL or the client file; else the local farm
        (``in_process``: its API called in this process even when the farm's API process runs,
        for what only this process can show, a sweep's progress)."""
        if self._client is None:
            from buildfarm_cli.client import make_client

            self._client = make_client(resolve(self.farm_flag), in_process=in_process)
            self.resume_collector()
        return self._client

    def local(self, command: str) -> None:
        """Refuse --farm for a command that works on this machine's farm only (every such command
        asks first: its work runs with the collector on)."""
        if self.farm_flag:
            raise PermanentError(f"`buildfarm {command}` works on the local farm only: drop --farm")
        self.resume_collector()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


state = CliState()
