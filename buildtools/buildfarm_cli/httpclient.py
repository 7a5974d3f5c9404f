"""The CLI's one way to a farm: the typed client (:mod:`buildfarm_client`) and the API's routes.

A remote farm is reached at its URL; the local farm (no URL configured) through the same
application, served as its owner's by the farm's running API process on a unix socket
(:mod:`buildfarm.local.owner`), or, when none answers there, called in-process
(:mod:`buildfarm.local.inprocess`): every command takes one code path and prints one way, and a
local command imports the server stack only when the farm's API process does not run.  This
adapter adds what only the CLI does: submitting a manifest file from a checkout, and turning the
client's errors into the farm's own (:mod:`buildfarm.model.errors`), so the CLI prints the same
line and exits with the same code whichever farm refused.

Submitting to a remote farm packs each ``path`` package and each ``path`` image context of the
manifest into the same deterministic tarball the farm would make
(:func:`buildfarm.model.sources.pack_tree`), asks which of them the farm lacks and uploads only
those: resubmitting a tree that changed in one package sends one tarball.  The local farm reads
the checkout itself (``POST /local/builds``).  The bearer token is sent and never shown: not in
messages, not in ``repr``.
"""

from __future__ import annotations

import builtins
import getpass
import hashlib
import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import httpx

import buildfarm_client as api
from buildfarm.local import owner
from buildfarm.model.errors import (
    AuthError,
    BuildfarmError,
    ConflictError,
    ForbiddenError,
    ManifestError,
    NotFoundError,
    PermanentError,
    ServiceUnavailableError,
    TemporaryError,
)
from buildfarm.model.statedir import sets_nothing_else, state_dir_alone
from buildfarm_cli.output import PhaseProgress
from buildfarm_client.limits import DEFAULT_TOKEN_DAYS
from buildfarm_client.models import (
    BuildView,
    CheckoutSubmitIn,
    MirrorOut,
    MirrorSyncOut,
    RepoKeyOut,
    ScheduleOut,
    SourcesOut,
    StorageReportOut,
    SubmitIn,
    SweepReportOut,
    TokenOut,
    UserOut,
)

if TYPE_CHECKING:
    from buildfarm.local.inprocess import LocalFarm
    from buildfarm.model.manifest import ImageSource, PackageSource

_P = ParamSpec("_P")
_T = TypeVar("_T")

_PERMANENT: dict[type[api.PermanentApiError], type[PermanentError]] = {
    api.ForbiddenError: ForbiddenError,
    api.NotFoundError: NotFoundError,
    api.ConflictError: ConflictError,
    api.BadManifestError: ManifestError,
}


@contextmanager
def farm_errors(has_token: bool) -> Iterator[None]:
    """The client's errors as the farm's own, with the same messages."""
    try:
        yield
    except api.UnavailableError as exc:
        raise ServiceUnavailableError(str(exc), exc.retry_after) from exc
    except api.TemporaryApiError as exc:
        raise TemporaryError(str(exc), exc.retry_after) from exc
    except api.UnauthenticatedError as exc:
        hint = "" if has_token else " (set BUILDFARM_TOKEN or token: in the client configuration file)"
        raise AuthError(f"{exc}{hint}") from exc
    except api.PermanentApiError as exc:
        raise _PERMANENT.get(type(exc), PermanentError)(str(exc)) from exc
    except api.ApiError as exc:
        raise BuildfarmError(str(exc)) from exc


class HttpClient:
    """One farm's API at ``url`` (``http://host:port``), as the user behind ``token``; or this
    machine's farm as its user: in-process with ``local``, over ``transport`` (its owner socket)
    with ``where`` (``in <state dir>``)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        local: LocalFarm | None = None,
        where: str | None = None,
    ) -> None:
        if local is not None:
            transport, where = local.transport(), local.where
        login = {owner.LOGIN_HEADER: getpass.getuser()} if where is not None else None
        self.api = api.Client(
            url, token, transport=transport, user_agent="buildfarm-cli", where=where, headers=login
        )
        self.url = self.api.url
        self.local = local
        self.reads_checkout = where is not None
        """This machine's farm: it reads a manifest's trees from the checkout itself."""
        self.uploads = 0  # source tarballs sent by submit(): the ones the farm did not have
        self._log_keys: dict[tuple[int, str], str] = {}  # the attempt's log a follower last read
        self._long_poll = True  # the farm holds a changes request (False: an older farm refused it)
        self._state_only = True  # ... and holds it for the build's state alone (False: it refused that)

    @classmethod
    def local_farm(cls, *, in_process: bool = False) -> HttpClient:
        """This machine's farm (``BUILDFARM_STATE_DIR``): over its API process's owner socket when
        that answers, else its API called in-process (``in_process``: always).

        The settings are read, and a bad or unknown ``BUILDFARM_*`` variable refused, first;
        unless the environment sets nothing but the state directory and the farm's API process
        answers: then there is no setting here to refuse, the farm runs on the settings it checked
        when it started, and only the socket is needed (reading the settings is pydantic-settings
        and the setting groups, 0.09 s of CPU of every local command)."""
        if not in_process and sets_nothing_else(os.environ):
            state_dir = state_dir_alone(os.environ)
            path = owner.answering_socket(state_dir)
            if path is not None:
                return cls._owner(path, state_dir)
        from buildfarm.model.settings import load_settings

        settings = load_settings()
        path = None if in_process else owner.answering_socket(settings.state_dir)
        if path is None:
            from buildfarm.local.inprocess import LocalFarm

            return cls(owner.LOCAL_URL, None, local=LocalFarm(settings))
        return cls._owner(path, settings.state_dir)

    @classmethod
    def _owner(cls, path: Path, state_dir: Path) -> HttpClient:
        """The farm's API process at its owner socket ``path``."""
        # The owner socket speaks plain HTTP: its transport gets a TLS context that trusts nothing
        # rather than the default one, which reads the whole CA bundle (20 ms of every command).
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        transport = httpx.HTTPTransport(uds=os.fspath(path), verify=tls)
        return cls(owner.LOCAL_URL, None, transport=transport, where=owner.where(state_dir))

    def __repr__(self) -> str:
        return f"HttpClient({self.url!r})"

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.api.close()

    @property
    def where(self) -> str:
        """``in <state dir>`` or ``at <url>``: completes "farm ..." in messages."""
        return self.api.where

    def _call(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with farm_errors(self.api.has_token):
            return call(*args, **kwargs)

    # -- builds ----------------------------------------------------------------------------

    def submit(self, manifest_path: Path, user: str | None) -> int:
        """Submit the build of a manifest file (its ``path`` trees read next to it); its id."""
        from buildfarm.model.manifest import load_manifest

        manifest = load_manifest(manifest_path)  # a wrong manifest is reported before any farm is asked
        if self.reads_checkout:
            checkout = CheckoutSubmitIn(manifest_path=str(manifest_path.resolve()), user=user)
            body = checkout.model_dump(mode="json")
            answer = self._call(self.api.request, "POST", "/local/builds", json=body)
            return BuildView.model_validate_json(answer.content).id
        if user is not None:
            raise PermanentError(
                f"--user is for the local farm: the farm at {self.url} records the token's user"
            )
        from buildfarm.model.debsource import files_to_upload, pack_files  # python-debian: for submit only
        from buildfarm.model.sources import pack_tree

        root = manifest_path.parent.resolve()
        for index, package in enumerate(manifest.packages):
            if package.stx is not None:  # its revision counts need the git history, not a tree
                raise PermanentError(
                    f"packages[{index}] ({package.describe()}): a StarlingX directory is built by a "
                    "local farm reading the checkout; the remote CLI does not send git history"
                )
        tarballs: dict[str, bytes] = {}
        labels: dict[str, str] = {}  # digest -> the first tree it carries, for error messages
        uploaded: dict[str, dict[str, str]] = {"sources": {}, "contexts": {}, "files": {}}
        trees: builtins.list[tuple[str, str, int, PackageSource | ImageSource]] = [
            ("sources", "packages", index, package) for index, package in enumerate(manifest.packages)
        ]
        trees += [("contexts", "images", index, image) for index, image in enumerate(manifest.images)]
        for field, kind, index, tree in trees:
            if tree.path is None:
                continue  # a git package or context is fetched by the farm itself
            data = pack_tree((root / tree.path).resolve())
            digest = hashlib.sha256(data).hexdigest()
            tarballs[digest] = data
            labels.setdefault(digest, f"{kind}[{index}] ({tree.path})")
            uploaded[field][str(index)] = digest
        for index, package in enumerate(manifest.packages):
            local = files_to_upload(package, root, f"packages[{index}] ({package.describe()})")
            if not local:
                continue  # nothing beside it, or the farm fetches it itself
            data = pack_files(local)
            digest = hashlib.sha256(data).hexdigest()
            tarballs[digest] = data
            labels.setdefault(digest, f"packages[{index}] ({package.describe()}): its files")
            uploaded["files"][str(index)] = digest
        if tarballs:
            for digest in self._call(self.api.missing_sources, sorted(tarballs)):
                if digest in tarballs:
                    self._upload(digest, tarballs[digest], labels[digest])
        request = SubmitIn.model_construct(
            manifest=manifest.model_dump(mode="json"),
            sources=uploaded["sources"],
            contexts=uploaded["contexts"],
            files=uploaded["files"],
        )
        return self._call(self.api.submit, request).id

    def _upload(self, digest: str, data: bytes, label: str) -> None:
        """PUT one tarball; a refusal (too large, unsafe) names the tree it carries."""
        try:
            self._call(self.api.upload_source, digest, data)
        except PermanentError as exc:
            if type(exc) is not PermanentError:  # forbidden, unauthenticated: not about this tree
                raise
            raise PermanentError(f"{label}: {exc}") from exc
        self.uploads += 1

    def show(self, build_id: int) -> BuildView:
        return self._call(self.api.build, build_id)

    def changes(
        self,
        build_id: int,
        known: dict[int, str],
        *,
        state: str | None = None,
        wait: float = 0.0,
        state_only: bool = False,
    ) -> BuildView:
        """What changed since ``known``; with ``wait``, held by the farm until something did
        (with ``state_only``: until the build's state did).  A farm older than a field refuses it:
        it is asked without it from then on (without ``state_only``, then without the long poll)."""
        if wait and self._long_poll:
            state_only = state_only and self._state_only
            try:
                return self._call(
                    self.api.build_changes, build_id, known, state=state, wait=wait, state_only=state_only
                )
            except PermanentError as exc:
                cause = exc.__cause__
                if not (isinstance(cause, api.ApiError) and cause.status == 422):
                    raise
                if state_only:
                    self._state_only = False
                    return self.changes(build_id, known, state=state, wait=wait)
                self._long_poll = False
        return self._call(self.api.build_changes, build_id, known)

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
        return self._call(
            self.api.list_builds,
            limit=limit,
            project=project,
            branch=branch,
            state=state,
            kind=kind,
            user=user,
        )

    def read_log(self, build_id: int, step: str, offset: int) -> tuple[bytes, int, bool]:
        """The log of a step's latest attempt from ``offset``: (chunk, next offset, step still
        live); when the step was tried again since the last read, its new log from the start."""
        chunk = self._call(self.api.read_log, build_id, step, offset)
        if chunk.key is not None and self._log_keys.setdefault((build_id, step), chunk.key) != chunk.key:
            self._log_keys[(build_id, step)] = chunk.key
            if offset:
                chunk = self._call(self.api.read_log, build_id, step, 0)
        return chunk.data, chunk.next_offset, chunk.live

    def cancel(self, build_id: int) -> BuildView:
        return self._call(self.api.cancel, build_id)

    def retry(self, build_id: int) -> BuildView:
        return self._call(self.api.retry, build_id)

    def sources(self, project: str, branch: str, build_id: int | None = None) -> SourcesOut:
        return self._call(self.api.repo_sources, project, branch, build_id)

    def repo_key(self) -> RepoKeyOut:
        return self._call(self.api.repo_key)

    def status(self) -> dict[str, Any]:
        """Nodes, queues and running steps (and, locally, the state directory and processes)."""
        return self._call(self.api.status).model_dump(mode="json", exclude_unset=True)

    # -- accounts --------------------------------------------------------------------------

    def add_user(self, name: str, *, admin: bool = False, service: bool = False) -> UserOut:
        return self._call(self.api.add_user, name, admin=admin, service=service)

    def create_token(self, user: str, name: str = "default", days: int = DEFAULT_TOKEN_DAYS) -> TokenOut:
        return self._call(self.api.create_token, user, name, days)

    def revoke_token(self, token_id: int) -> None:
        self._call(self.api.revoke_token, token_id)

    def add_project(self, name: str) -> None:
        self._call(self.api.add_project, name)

    def grant(self, user: str, project: str, role: str) -> None:
        self._call(self.api.grant, user, project, role)

    # -- mirrors, schedules, retention -----------------------------------------------------

    def mirrors(self) -> builtins.list[MirrorOut]:
        return self._call(self.api.mirrors)

    def sync_mirror(self, name: str, timeout: float) -> MirrorSyncOut:
        """The farm answers when the sync is done: this one request may read for ``timeout`` seconds."""
        return self._call(self.api.sync_mirror, name, timeout)

    def schedules(self) -> builtins.list[ScheduleOut]:
        return self._call(self.api.schedules)

    def run_retention(self, dry_run: bool, progress: PhaseProgress | None = None) -> SweepReportOut:
        """One request that answers when the sweep is done; the local farm's in-process sweep
        reports to ``progress`` meanwhile (a remote one has nothing to show)."""
        if self.local is None:
            return self._call(self.api.run_retention, dry_run)
        self.local.sweep_progress = progress
        try:
            return self._call(self.api.run_retention, dry_run)
        finally:
            self.local.sweep_progress = None

    def storage_report(self) -> StorageReportOut:
        return self._call(self.api.storage_report)
