"""What the CLI asks of a farm, whichever way it reaches it.

:class:`FarmClient` is the one interface the commands call: :class:`LocalClient` runs the
engine against this machine's local farm, :class:`HttpClient` talks to a farm's REST API through
the typed client (:mod:`buildfarm_client`).  Both return the API's wire models
(:mod:`buildfarm_client.models`) and raise the same errors, so every command prints one way and
exits with one code whichever client served it.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any, Protocol

from buildfarm_cli.config import ClientConfig
from buildfarm_cli.httpclient import HttpClient
from buildfarm_cli.localclient import LocalClient
from buildfarm_cli.output import PhaseProgress
from buildfarm_client.models import (
    BuildView,
    MirrorOut,
    MirrorSyncOut,
    RepoKeyOut,
    ScheduleOut,
    SourcesOut,
    StorageReportOut,
    SweepReportOut,
    TokenOut,
    UserOut,
)

__all__ = ["FarmClient", "HttpClient", "LocalClient", "make_client"]


class FarmClient(Protocol):
    @property
    def where(self) -> str:
        """``in <state dir>`` or ``at <url>``: completes "farm ..." in messages."""
        ...

    def submit(self, manifest_path: Path, user: str | None) -> int:
        """Submit the build of a manifest file (its ``path`` packages read next to it); its id."""
        ...

    def show(self, build_id: int) -> BuildView: ...

    def changes(self, build_id: int, known: dict[int, str]) -> BuildView:
        """The build with only the steps whose ``revision`` differs from ``known`` (id -> revision)."""
        ...

    def list(
        self,
        *,
        project: str | None = None,
        branch: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        user: str | None = None,
        limit: int = 50,
    ) -> list[BuildView]:
        """Builds newest first, at most ``limit``; ``counts`` holds each one's steps by state."""
        ...

    def read_log(self, build_id: int, step: str, offset: int) -> tuple[bytes, int, bool]:
        """The log of a step's latest attempt from ``offset``: (chunk, next offset, step still live)."""
        ...

    def cancel(self, build_id: int) -> BuildView: ...

    def retry(self, build_id: int) -> BuildView: ...

    def sources(self, project: str, branch: str, build_id: int | None = None) -> SourcesOut: ...

    def repo_key(self) -> RepoKeyOut:
        """The public key published repositories are signed with; NotFoundError if they are not."""
        ...

    def status(self) -> dict[str, Any]:
        """Nodes, queues and running steps (and, locally, the state directory and processes)."""
        ...

    def add_user(self, name: str, *, admin: bool = False, service: bool = False) -> UserOut: ...

    def create_token(self, user: str, name: str = "default", days: int = 90) -> TokenOut: ...

    def revoke_token(self, token_id: int) -> None: ...

    def add_project(self, name: str) -> None: ...

    def grant(self, user: str, project: str, role: str) -> None: ...

    def mirrors(self) -> builtins.list[MirrorOut]:
        """The configured 3rd-party mirrors; ``source`` is set on those builds can use now."""
        ...

    def sync_mirror(self, name: str, timeout: float) -> MirrorSyncOut:
        """Sync one mirror (admins only through the API), waiting at most ``timeout`` seconds."""
        ...

    def schedules(self) -> builtins.list[ScheduleOut]:
        """The configured schedules (those of projects the caller may view), next and last runs."""
        ...

    def run_retention(self, dry_run: bool, progress: PhaseProgress | None = None) -> SweepReportOut:
        """Apply the retention policy (admins only); ``progress`` is called while it sweeps locally."""
        ...

    def storage_report(self) -> StorageReportOut:
        """Bytes by class, project and branch, and what the next sweep would free (admins only)."""
        ...

    def close(self) -> None: ...


def make_client(config: ClientConfig) -> FarmClient:
    """The REST API's client when a farm URL is configured, else the local farm's."""
    if config.url is not None:
        return HttpClient(config.url, config.token)
    return LocalClient()
