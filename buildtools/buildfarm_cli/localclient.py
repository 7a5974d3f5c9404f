"""The local farm as a client: the engine itself, against the farm in the state directory.

It answers with the same wire models as the REST API (:mod:`buildfarm_client.models`), made
from the engine's views the way the API makes them, so every command prints one way.

Reading needs only the farm's state (its database and stores); changing builds needs its core
processes running; account commands need only the database, so an admin can create users and
tokens before the farm was ever started (the Helm chart's install hook does exactly that).
"""

from __future__ import annotations

import builtins
import getpass
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from buildfarm import accounts, mirrors
from buildfarm.backends.base import PackageRepository, require_signing_key
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import PermanentError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.settings import Settings, load_settings
from buildfarm.retention import run_sweep, storage_report
from buildfarm_cli.output import PhaseProgress
from buildfarm_client.models import (
    DEFAULT_TOKEN_DAYS,
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


class _NoDispatcher:
    """Stands in for Celery where no broker is configured: account commands never send work."""

    def _refuse(self) -> None:
        raise PermanentError("no Redis configured: start the local farm (`buildfarm start`)")

    def advance(self, build_id: int) -> None:
        self._refuse()

    def run_step(self, step_id: int, attempt: int, kind: str) -> None:
        self._refuse()

    def check(self) -> None:
        self._refuse()

    def prepare_environment(self) -> None:
        self._refuse()


class LocalClient:
    """The farm of this machine (``BUILDFARM_STATE_DIR``), through the engine's functions."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._contexts: dict[str, FarmContext] = {}
        # The log key a follower last read per step: a retried step starts a new log from 0.
        self._log_keys: dict[tuple[int, str], str] = {}
        self._repo: PackageRepository | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def where(self) -> str:
        return f"in {self.settings.state_dir}"

    def _context(self, *, changes: bool = False) -> FarmContext:
        """The farm to talk to. Reading needs only its state dir; changing it needs its core running."""
        from buildfarm.dispatch.context import make_context
        from buildfarm.local import farm

        settings = self.settings
        if not farm.was_started(settings):
            raise PermanentError(f"no local farm in {settings.state_dir}: run `buildfarm start`")
        if changes and not farm.core_alive(settings):
            raise PermanentError(f"the local farm in {settings.state_dir} is stopped: run `buildfarm start`")
        if "farm" in self._contexts:
            return self._contexts["farm"]
        if changes or settings.broker.url:
            self._contexts["farm"] = make_context(settings)
        else:  # a stopped farm (no broker recorded): reading needs only the database and the stores
            self._contexts["farm"] = self._offline_context(settings)
        return self._contexts["farm"]

    @staticmethod
    def _offline_context(settings: Settings) -> FarmContext:
        from buildfarm.state.db import Database
        from buildfarm.wiring import Wiring, make_repository, make_store

        return FarmContext(
            settings=settings,
            db=Database(settings.effective_database_url),
            store=make_store(settings),
            repo=make_repository(settings),
            dispatcher=_NoDispatcher(),
            parts=Wiring(settings),
        )

    def _accounts_context(self) -> FarmContext:
        """Only the database matters: no farm process needs to run, the schema is brought up to date."""
        if "accounts" in self._contexts:
            return self._contexts["accounts"]
        from buildfarm.dispatch.context import make_context
        from buildfarm.local.private import private_state_dir
        from buildfarm.state.db import upgrade

        settings = self.settings
        if settings.database.url is None:
            private_state_dir(settings.state_dir)  # the SQLite file lives there, its owner's alone
        upgrade(settings.effective_database_url)
        ctx = make_context(settings) if settings.broker.url else self._offline_context(settings)
        self._contexts["accounts"] = ctx
        return ctx

    # -- builds ----------------------------------------------------------------------------

    def submit(self, manifest_path: Path, user: str | None) -> int:
        from buildfarm.engine.submit import submit_build

        parsed = load_manifest(manifest_path)  # a wrong manifest is reported without a farm
        ctx = self._context(changes=True)
        return submit_build(ctx, parsed, manifest_path.parent.resolve(), user or getpass.getuser())

    def show(self, build_id: int) -> BuildView:
        return _build(control.show_build(self._context(), build_id))

    def list(
        self,
        *,
        project: str | None = None,
        branch: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        user: str | None = None,
        limit: int = 50,
    ) -> builtins.list[BuildView]:
        page = control.page_builds(self._context(), project, branch, state, limit, kind=kind, user=user)
        return [_build(view) for view in page.items]

    def read_log(self, build_id: int, step: str, offset: int) -> tuple[bytes, int, bool]:
        ctx = self._context()
        key, live = control.step_log_key(ctx, build_id, step)
        if key is None:
            return b"", 0, live
        if self._log_keys.setdefault((build_id, step), key) != key:
            self._log_keys[(build_id, step)] = key
            offset = 0
        chunk, next_offset = ctx.store.read_log(key, offset)
        return chunk, next_offset, live

    def cancel(self, build_id: int) -> BuildView:
        return _build(control.cancel_build(self._context(changes=True), build_id))

    def retry(self, build_id: int) -> BuildView:
        return _build(control.retry_build(self._context(changes=True), build_id))

    def sources(self, project: str, branch: str, build_id: int | None = None) -> SourcesOut:
        source = control.apt_sources(self._context(), project, branch, build_id)
        return SourcesOut(
            line=source.line(),
            url=source.url,
            suite=source.suite,
            components=list(source.components),
            signed_by=source.signed_by,
            source_line=source.source_line(),
        )

    def status(self) -> dict[str, Any]:
        from buildfarm.local import farm

        result = farm.status(self.settings)
        if result.running:
            result.running_steps = control.running_steps(self._context())
        return asdict(result)

    # -- accounts --------------------------------------------------------------------------

    def init_admin(self, name: str = "admin") -> TokenOut:
        """The first admin and its token (local only: it needs the farm's database itself)."""
        return _wire(TokenOut, accounts.init_admin(self._accounts_context(), name))

    def add_user(self, name: str, *, admin: bool = False, service: bool = False) -> UserOut:
        added = accounts.add_user(self._accounts_context(), name, admin=admin, service=service)
        return UserOut(name=added.user, admin=added.admin, service=added.service)

    def create_token(self, user: str, name: str = "default", days: int = DEFAULT_TOKEN_DAYS) -> TokenOut:
        return _wire(TokenOut, accounts.create_token(self._accounts_context(), user, name, days))

    def revoke_token(self, token_id: int) -> None:
        accounts.revoke_token(self._accounts_context(), token_id)

    def add_project(self, name: str) -> None:
        accounts.add_project(self._accounts_context(), name)

    def grant(self, user: str, project: str, role: str) -> None:
        accounts.grant(self._accounts_context(), user, project, role)

    # -- mirrors: only the settings and the repository backend, no farm process --------------

    def _repository(self) -> PackageRepository:
        if self._repo is None:
            from buildfarm.wiring import make_repository

            self._repo = make_repository(self.settings)
        return self._repo

    def repo_key(self) -> RepoKeyOut:
        key = require_signing_key(self._context().repo)
        return RepoKeyOut(
            fingerprint=key.fingerprint, public_key=key.public_key, signed_by=self.settings.signing.keyring
        )

    def mirrors(self) -> builtins.list[MirrorOut]:
        return [_wire(MirrorOut, view) for view in mirrors.list_mirrors(self.settings, self._repository())]

    def sync_mirror(self, name: str, timeout: float) -> MirrorSyncOut:
        """``timeout`` is for remote farms: here each Pulp task is bounded by pulp_task_timeout_seconds."""
        return _wire(MirrorSyncOut, mirrors.sync_mirror(self.settings, self._repository(), name))

    # -- schedules: only the database ------------------------------------------------------

    def schedules(self) -> builtins.list[ScheduleOut]:
        from buildfarm.schedules import list_schedules
        from buildfarm.state.models import utcnow

        return [_wire(ScheduleOut, view) for view in list_schedules(self._accounts_context(), utcnow())]

    # -- retention: the database and the stores, no farm process ------------------------------

    def run_retention(self, dry_run: bool, progress: PhaseProgress | None = None) -> SweepReportOut:
        report = run_sweep(self._accounts_context(), dry_run=dry_run, progress=progress)
        return SweepReportOut.model_validate(report.as_dict())

    def storage_report(self) -> StorageReportOut:
        return StorageReportOut.model_validate(storage_report(self._accounts_context()).as_dict())

    def farm_context(self) -> FarmContext:
        """The farm itself for operator actions (``buildfarm backup``): its database, brought up to
        date, and its stores; no farm process needs to run."""
        return self._accounts_context()

    def close(self) -> None:
        for ctx in self._contexts.values():
            ctx.db.dispose()
        self._contexts.clear()


_Wire = TypeVar("_Wire", bound=BaseModel)


def _wire(model: type[_Wire], view: object) -> _Wire:
    """An engine view as the API answers it."""
    return model.model_validate(view, from_attributes=True)


def _build(view: control.BuildView) -> BuildView:
    return _wire(BuildView, view)
