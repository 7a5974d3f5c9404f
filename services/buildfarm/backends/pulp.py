"""The package repository of production: Pulp (pulpcore + pulp_deb), driven through pulp-glue.

Many nodes, projects, branches and users share one Pulp; the farm talks to it only through
pulp-glue (its contexts call Pulp's own OpenAPI description), never by hand-written REST.
What lives in Pulp (``<p>``, ``<b>``, ``<u>`` are ``to_safe`` names)::

    repository buildfarm/<p>/<b>                 the branch: one version per successful build
    repository buildfarm/<p>/<b>/unpromoted      builds that must not move latest (e.g. failed)
    repository buildfarm/<p>/_personal/<u>       a user's personal builds
    repository buildfarm/<p>/<b>/staging/<id>    a running build; deleted with its staging
    distribution <p>/<b>/latest                  bound to the branch repository (see below)
    distribution <p>/<b>/<id>                    one build's publication, never changed again
    distribution <p>/_personal/<u>/<id>          a personal build's publication
    distribution <p>/<b>/staging/<id>            bound to the build's staging repository

``to_safe`` escapes ``_`` itself, so ``_personal`` is never a branch's name and no two projects,
branches or users share a repository or a base path.  Every publication is *structured*: apt
reads it as ``deb <origin>/pulp/content/<base path>/ <suite> main``.

Each build's version holds the branch's whole package set as of that build: the branch
repository's latest version with the packages the build rebuilt (same name and architecture)
replaced by its own.  A successful build writes it into the branch repository with one
``modify`` relative to whatever version is latest when Pulp runs the task: Pulp runs the tasks
of one repository one at a time, so concurrent builds of a branch never lose each other's
packages.  Builds that must not move latest write the same kind of set, built on the branch's
latest version as ``base_version``, into a repository of their own.

``latest`` is a distribution bound to the branch *repository*: Pulp serves the newest complete
publication of its newest published version, so creating the build's publication is the switch,
atomic for apt (a publication is served only once complete) and ordered by Pulp itself rather
than by whichever node updates a distribution last.

Uploads are deduplicated across the whole Pulp: a .deb whose sha256 Pulp already holds (from
any repository) is added by reference, never sent again.  Every wait on a Pulp task has a
deadline and every HTTP request a timeout; Pulp's errors become one
:class:`~buildfarm.model.errors.ServiceUnavailableError` (unreachable, 5xx, task deadline) or
:class:`~buildfarm.model.errors.PermanentError` (anything else) naming what failed.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pulp_glue.common.authentication import GlueAuthProvider
from pulp_glue.common.context import (
    EntityDefinition,
    PluginRequirement,
    PulpContentContext,
    PulpContext,
    PulpDistributionContext,
    PulpEntityContext,
    PulpPublicationContext,
    PulpRepositoryContext,
    PulpRepositoryVersionContext,
    _patch_api_hook,
)
from pulp_glue.common.exceptions import (
    OpenAPIError,
    PulpAuthenticationFailed,
    PulpException,
    PulpHTTPError,
    PulpNotAutorized,
    PulpNoWait,
)
from pulp_glue.common.openapi import OpenAPI

from buildfarm.backends.base import AptSource, BuildRef, PackageFile
from buildfarm.backends.fs import file_sha256
from buildfarm.model import names
from buildfarm.model.errors import BuildfarmError, NotFoundError, PermanentError, ServiceUnavailableError

log = logging.getLogger(__name__)

DEFAULT_SUITE = "buildfarm"
"""The apt distribution (suite) of every publication: ``deb <url> buildfarm main``."""
COMPONENT = "main"
PERSONAL_SEGMENT = "_personal"
REPOSITORY_PREFIX = "buildfarm"
UNPROMOTED_SEGMENT = "unpromoted"
STAGING_SEGMENT = "staging"
LATEST_SEGMENT = "latest"

PROJECT_LABEL = "buildfarm_project"
BUILD_LABEL = "buildfarm_build"
NEWEST_BUILD_LABEL = "buildfarm_newest_build"
"""On a branch repository: the newest build that moved latest (a late retry of an older one must not)."""

DEFAULT_TASK_TIMEOUT_SECONDS = 300.0
"""Default bound on one Pulp task; uploads and publications of a build take well under a second each."""
DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
"""Bound on one HTTP request to Pulp (connect and each read); a healthy Pulp answers in milliseconds."""
UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024
"""Packages larger than this are uploaded in chunks (Pulp's upload API), smaller ones in one request."""
MODIFY_ATTEMPTS = 3
"""How often a repository version is rewritten when concurrent builds raced on the same package name."""
TASK_POLL_FAST_SECONDS = 0.05
TASK_POLL_FAST_FOR_SECONDS = 1.0
TASK_POLL_MAX_SECONDS = 1.0
"""A task is polled every 50 ms for its first second (most take 0.2-0.3 s), then less and less often."""

_PACKAGE_FIELDS = ["pulp_href", "package", "architecture", "version", "sha256"]
_UNAVAILABLE_RETRY_SECONDS = 30.0


# -- pulp_deb's endpoints as pulp-glue contexts ---------------------------------------------
#
# pulp-glue-deb declares these same contexts, but its newest release (0.5) caps pulp-glue <0.41,
# every pulp-glue <0.41 caps packaging <=26.2, and kombu[redis] 5.7 (the farm's broker client)
# pins packaging==26.3: no set of versions satisfies all three.  So the few deb endpoints the
# farm uses are declared here on pulp-glue's own base classes, under pulp-glue-deb's names; the
# day pulp-glue-deb allows pulp-glue 0.41, ``from pulp_glue.deb.context import ...`` replaces them.

_DEB = [PluginRequirement("deb", specifier=">=3.0")]


class PulpAptRepositoryVersionContext(PulpRepositoryVersionContext):
    HREF = "deb_apt_repository_version_href"
    ID_PREFIX = "repositories_deb_apt_versions"
    NEEDS_PLUGINS = _DEB


class PulpAptRepositoryContext(PulpRepositoryContext):
    ENTITY = "apt repository"
    ENTITIES = "apt repositories"
    HREF = "deb_apt_repository_href"
    ID_PREFIX = "repositories_deb_apt"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "apt"
    VERSION_CONTEXT = PulpAptRepositoryVersionContext


class PulpAptPublicationContext(PulpPublicationContext):
    ENTITY = "apt publication"
    ENTITIES = "apt publications"
    HREF = "deb_apt_publication_href"
    ID_PREFIX = "publications_deb_apt"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "apt"


class PulpAptDistributionContext(PulpDistributionContext):
    ENTITY = "apt distribution"
    ENTITIES = "apt distributions"
    HREF = "deb_apt_distribution_href"
    ID_PREFIX = "distributions_deb_apt"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "apt"


class PulpDebPackageContext(PulpContentContext):
    ENTITY = "deb package"
    ENTITIES = "deb packages"
    HREF = "deb_package_href"
    ID_PREFIX = "content_deb_packages"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "package"
    CAPABILITIES: t.ClassVar[dict[str, list[PluginRequirement]]] = {"upload": []}


class PulpDebReleaseComponentContext(PulpContentContext):
    ENTITY = "deb release component"
    ENTITIES = "deb release components"
    HREF = "deb_release_component_href"
    ID_PREFIX = "content_deb_release_components"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "release_component"


class PulpDebReleaseArchitectureContext(PulpContentContext):
    ENTITY = "deb release architecture"
    ENTITIES = "deb release architectures"
    HREF = "deb_release_architecture_href"
    ID_PREFIX = "content_deb_release_architectures"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "release_architecture"


class PulpDebPackageReleaseComponentContext(PulpContentContext):
    ENTITY = "deb package release component"
    ENTITIES = "deb package release components"
    HREF = "deb_package_release_component_href"
    ID_PREFIX = "content_deb_package_release_components"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "package_release_component"


# -- a bounded pulp-glue client --------------------------------------------------------------


class _BoundedOpenAPI(OpenAPI):
    """pulp-glue's OpenAPI client with a timeout on every request and no API-description cache.

    pulp-glue sends requests without a timeout (a stopped Pulp would hang the caller forever)
    and caches the API description under ~/.cache (read-only in our containers, and stale after
    a Pulp upgrade); the description is fetched once per :class:`PulpRepository` instead.
    """

    def __init__(self, http_timeout: float, **kwargs: t.Any) -> None:
        self._http_timeout = http_timeout
        super().__init__(**kwargs)

    def _setup_session(self) -> None:
        super()._setup_session()
        send = self._session.request
        timeout = self._http_timeout

        def bounded(*args: t.Any, **kwargs: t.Any) -> t.Any:
            kwargs.setdefault("timeout", timeout)
            return send(*args, **kwargs)

        self._session.request = bounded  # type: ignore[method-assign,unused-ignore]

    def load_api(self, refresh_cache: bool = False) -> None:
        try:
            data = self._download_api()
        except OSError as exc:  # requests' errors are OSErrors; raise_for_status() escapes pulp-glue
            raise OpenAPIError(str(exc)) from exc
        self._parse_api(data)


class _FarmPulpContext(PulpContext):
    """A PulpContext with bounded HTTP requests and bounded, quickly polled task waits."""

    def __init__(  # noqa: PLR0917
        self, base_url: str, username: str, password: str, task_timeout: float, http_timeout: float, cid: str
    ):
        super().__init__(
            api_root="/pulp/",
            api_kwargs={
                "base_url": base_url,
                "auth_provider": GlueAuthProvider(username=username, password=password),
                "cid": cid,  # Pulp tags the logs and tasks of our requests with it
                "user_agent": "buildfarm (pulp-glue)",
            },
            timeout=max(1, round(task_timeout)),
            verify_ssl=True,
            chunk_size=UPLOAD_CHUNK_BYTES,
        )
        self._http_timeout = http_timeout
        self._api_lock = threading.RLock()  # needs_plugin() reads .api again while we set it up

    @property
    def api(self) -> OpenAPI:
        # Same as PulpContext.api, with _BoundedOpenAPI; the lock makes threads share one client.
        with self._api_lock:
            if self._api is None:
                try:
                    api = _BoundedOpenAPI(
                        self._http_timeout,
                        doc_path=f"{self._api_root}api/v3/docs/api.json",
                        verify_ssl=self.verify_ssl,
                        patch_api_hook=_patch_api_hook,
                        **self._api_kwargs,
                    )
                except OpenAPIError as exc:
                    raise PulpException(str(exc)) from exc
                self._api = api
                for requirement in self._needed_plugins:
                    self.needs_plugin(requirement)
            return self._api

    def wait_for_task(self, task: EntityDefinition, expect_cancel: bool = False) -> t.Any:
        started = time.monotonic()
        deadline = started + self.timeout.total_seconds()
        interval = TASK_POLL_FAST_SECONDS
        while not self._task_finished(task, expect_cancel=expect_cancel):
            now = time.monotonic()
            if now >= deadline:
                raise PulpNoWait(
                    f"task {task['pulp_href']} ({task.get('name', '?')}) did not finish within "
                    f"{self.timeout.total_seconds():.0f}s"
                )
            time.sleep(min(interval, deadline - now))
            if now - started > TASK_POLL_FAST_FOR_SECONDS:
                interval = min(interval * 1.5, TASK_POLL_MAX_SECONDS)
            task = self.api.call("tasks_read", parameters={"task_href": task["pulp_href"]})
        return task


@dataclass(frozen=True)
class _Package:
    """A .deb as Pulp holds it."""

    href: str
    name: str
    architecture: str
    version: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.architecture)

    @classmethod
    def from_entity(cls, entity: EntityDefinition) -> _Package:
        return cls(entity["pulp_href"], entity["package"], entity["architecture"], entity["version"])


@dataclass(frozen=True)
class _Unit:
    """What a repository version needs for one package to appear in ``<suite> main``."""

    package: _Package
    release_component: str
    release_architecture: str | None  # None for "all": pulp_deb publishes "all" for every suite
    package_release_component: str

    @property
    def hrefs(self) -> list[str]:
        shared = [self.release_component, self.release_architecture]
        return [self.package.href, self.package_release_component, *(h for h in shared if h is not None)]


@dataclass(frozen=True)
class _Place:
    """Where one build's packages go: repository names and distribution base paths."""

    project: str  # to_safe
    branch_key: str  # <p>/<b>
    owner_key: str  # <p>/<b> or <p>/_personal/<u>: where the build's own distribution lives

    @property
    def branch_repository(self) -> str:
        return f"{REPOSITORY_PREFIX}/{self.branch_key}"

    def build_path(self, build_id: int) -> str:
        return f"{self.owner_key}/{build_id}"

    @property
    def latest_path(self) -> str:
        return f"{self.branch_key}/{LATEST_SEGMENT}"

    def staging_path(self, build_id: int) -> str:
        return f"{self.branch_key}/{STAGING_SEGMENT}/{build_id}"

    def staging_repository(self, build_id: int) -> str:
        return f"{REPOSITORY_PREFIX}/{self.staging_path(build_id)}"

    @property
    def side_repository(self) -> str:
        """Where builds that do not move latest keep their versions."""
        if self.owner_key != self.branch_key:
            return f"{REPOSITORY_PREFIX}/{self.owner_key}"
        return f"{REPOSITORY_PREFIX}/{self.branch_key}/{UNPROMOTED_SEGMENT}"


def _place(project: str, branch: str, personal_user: str | None = None) -> _Place:
    names.check_simple_name(project, "project")
    names.check_ref_name(branch, "branch")
    safe_project = names.to_safe(project)
    branch_key = f"{safe_project}/{names.to_safe(branch)}"
    owner_key = branch_key
    if personal_user is not None:
        names.check_simple_name(personal_user, "user")
        owner_key = f"{safe_project}/{PERSONAL_SEGMENT}/{names.to_safe(personal_user)}"
    return _Place(safe_project, branch_key, owner_key)


def _place_of(build: BuildRef) -> _Place:
    return _place(build.project, build.branch, build.user if build.kind == "personal" else None)


def _check_filename(filename: str) -> str:
    plain = "/" not in filename and "\0" not in filename and not filename.startswith(".")
    if not plain or not filename.endswith((".deb", ".udeb")):
        raise PermanentError(f"invalid package file name {filename!r}: it must be one plain *.deb or *.udeb")
    return filename


def _caused_by_connection(exc: BaseException) -> bool:
    """Whether a pulp-glue error comes from the network (requests' errors are OSErrors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            response = getattr(current, "response", None)
            status = getattr(response, "status_code", None)
            return status is None or status >= 500
        current = current.__cause__ or current.__context__
    return False


class PulpRepository:
    """:class:`~buildfarm.backends.base.PackageRepository` on a Pulp server (pulpcore + pulp_deb).

    ``content_origin`` is where apt clients reach Pulp's content app (``CONTENT_ORIGIN`` of the
    server, or a proxy in front of it); ``suite`` is the apt distribution of every publication.
    One instance is safe to share between threads.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        content_origin: str,
        *,
        task_timeout_seconds: float = DEFAULT_TASK_TIMEOUT_SECONDS,
        http_timeout_seconds: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
        suite: str = DEFAULT_SUITE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.content_origin = content_origin.rstrip("/")
        self.task_timeout_seconds = task_timeout_seconds
        self.suite = suite
        self.correlation_id = uuid.uuid4().hex
        """Sent with every request: Pulp's logs and tasks (``logging_cid``) name this client."""
        self.ctx = _FarmPulpContext(
            self.base_url, username, password, task_timeout_seconds, http_timeout_seconds, self.correlation_id
        )
        self._shared_hrefs: dict[tuple[str, str], str] = {}  # release components/architectures
        self._repository_hrefs: dict[str, str] = {}
        self._known_latest: set[str] = set()
        self._lock = threading.Lock()
        self.uploads = 0
        """Packages sent to Pulp by this instance (the rest were added by reference)."""
        self.reused = 0

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn pulp-glue's errors into one farm error naming ``what`` failed."""
        where = f"Pulp at {self.base_url}"
        try:
            yield
        except BuildfarmError:
            raise
        except PulpNoWait as exc:
            raise ServiceUnavailableError(f"{where}: {what}: {exc}", _UNAVAILABLE_RETRY_SECONDS) from exc
        except PulpAuthenticationFailed as exc:
            raise PermanentError(
                f"{where} rejected the credentials of user {self.username!r} ({what})"
            ) from exc
        except PulpNotAutorized as exc:
            raise PermanentError(f"{where} does not allow user {self.username!r} to do this: {what}") from exc
        except PulpHTTPError as exc:
            detail = " ".join(str(exc).split())[:500]
            if exc.status_code >= 500:
                raise ServiceUnavailableError(
                    f"{where}: {what} failed with HTTP {exc.status_code}: {detail}",
                    _UNAVAILABLE_RETRY_SECONDS,
                ) from exc
            raise PermanentError(f"{where}: {what} was refused (HTTP {exc.status_code}): {detail}") from exc
        except PulpException as exc:
            detail = " ".join(str(exc).split())[:500]
            if _caused_by_connection(exc):
                raise ServiceUnavailableError(
                    f"{where} is unreachable ({what}): {detail}", _UNAVAILABLE_RETRY_SECONDS
                ) from exc
            raise PermanentError(f"{where}: {what} failed: {detail}") from exc

    # -- lookups -----------------------------------------------------------------------------

    @staticmethod
    def _first(context: PulpEntityContext, **parameters: t.Any) -> EntityDefinition | None:
        for entity in context.list_iterator(parameters=parameters, batch_size=1):
            return t.cast(EntityDefinition, entity)
        return None

    def _find_or_create(
        self, make: t.Callable[[], PulpEntityContext], body: EntityDefinition, **lookup: t.Any
    ) -> EntityDefinition:
        """The entity matching ``lookup``, created from ``body`` if missing (another writer may win)."""
        found = self._first(make(), **lookup)
        if found is not None:
            return found
        try:
            return t.cast(EntityDefinition, make().create(body=body))
        except PulpException:
            found = self._first(make(), **lookup)  # created concurrently by another node
            if found is None:
                raise
            return found

    def _repository(self, name: str, create: bool = True, remember: bool = True) -> str | None:
        """The href of repository ``name`` (created if missing and ``create``).

        Branch, unpromoted and personal repositories are never deleted by the farm, so their
        hrefs are remembered; staging repositories come and go and are looked up every time.
        """
        with self._lock:
            known = self._repository_hrefs.get(name)
        if known is not None:
            return known
        found: EntityDefinition | None
        if create:
            body = {"name": name, "description": f"buildfarm {name}"}
            found = self._find_or_create(lambda: PulpAptRepositoryContext(self.ctx), body, name=name)
        else:
            found = self._first(PulpAptRepositoryContext(self.ctx), name=name)
        if found is None:
            return None
        href = t.cast(str, found["pulp_href"])
        if remember:
            with self._lock:
                self._repository_hrefs[name] = href
        return href

    def _read(self, repository: str) -> EntityDefinition:
        """The repository's current record (latest version, labels)."""
        return t.cast(EntityDefinition, PulpAptRepositoryContext(self.ctx).show(repository))

    def _distribution(self, base_path: str) -> EntityDefinition | None:
        return self._first(PulpAptDistributionContext(self.ctx), base_path=base_path)

    def _ensure_distribution(self, base_path: str, body: EntityDefinition) -> None:
        self._find_or_create(
            lambda: PulpAptDistributionContext(self.ctx),
            {"name": f"{REPOSITORY_PREFIX}/{base_path}", "base_path": base_path, **body},
            base_path=base_path,
        )

    def _packages_in(self, version: str | None) -> list[_Package]:
        if version is None:
            return []
        listed = PulpDebPackageContext(self.ctx).list_iterator(
            parameters={"repository_version": version, "fields": _PACKAGE_FIELDS}
        )
        return [_Package.from_entity(entity) for entity in listed]

    def _links_of(self, version: str, packages: set[str]) -> list[str]:
        """The package-release-component links of ``packages`` in ``version``."""
        listed = PulpDebPackageReleaseComponentContext(self.ctx).list_iterator(
            parameters={"repository_version": version, "fields": ["pulp_href", "package"]}
        )
        return [entity["pulp_href"] for entity in listed if entity["package"] in packages]

    # -- content -----------------------------------------------------------------------------

    def _shared(self, kind: str, value: str) -> str:
        """The release component (``kind='component'``) or release architecture of our suite."""
        with self._lock:
            cached = self._shared_hrefs.get((kind, value))
        if cached is not None:
            return cached
        context: t.Callable[[], PulpEntityContext]
        if kind == "component":
            body = {"distribution": self.suite, "component": value}
            context = lambda: PulpDebReleaseComponentContext(self.ctx)  # noqa: E731
        else:
            body = {"distribution": self.suite, "architecture": value}
            context = lambda: PulpDebReleaseArchitectureContext(self.ctx)  # noqa: E731
        href = t.cast(str, self._find_or_create(context, body, **body)["pulp_href"])
        with self._lock:
            self._shared_hrefs[(kind, value)] = href
        return href

    def _package(self, package: PackageFile) -> tuple[_Package, bool]:
        """The package in Pulp, found by sha256 (whichever repository brought it) or uploaded.

        Returns it and whether this call uploaded it.
        """
        lookup = {"sha256": package.sha256, "fields": _PACKAGE_FIELDS}
        found = self._first(PulpDebPackageContext(self.ctx), **lookup)
        if found is not None:
            with self._lock:
                self.reused += 1
            return _Package.from_entity(found), False
        started = time.monotonic()
        with self._errors(f"uploading {package.filename}"):
            try:
                created = PulpDebPackageContext(self.ctx).create(body={"file": str(package.path)})
            except PulpException:
                found = self._first(PulpDebPackageContext(self.ctx), **lookup)
                if found is None:
                    raise
                return _Package.from_entity(found), False  # uploaded concurrently by another node
        with self._lock:
            self.uploads += 1
        log.info(
            "pulp: uploaded %s (%d bytes) in %.2fs",
            package.filename,
            package.size,
            time.monotonic() - started,
        )
        if created.get("sha256") != package.sha256:
            raise PermanentError(
                f"Pulp holds {package.filename} as sha256 {created.get('sha256')}, not {package.sha256}"
            )
        return _Package.from_entity(created), True

    def _units(self, packages: list[PackageFile]) -> list[_Unit]:
        """Each package as Pulp content of ``<suite> main``, checked against its record first."""
        seen: dict[str, str] = {}
        units: list[_Unit] = []
        component = self._shared("component", COMPONENT)
        for package in packages:
            name = _check_filename(package.filename)
            if name in seen:
                if seen[name] != package.sha256:
                    raise PermanentError(f"two different packages are both named {name}")
                continue
            seen[name] = package.sha256
            if name.endswith(".udeb"):
                log.info("pulp: %s is a .udeb; installer packages are not published", name)
                continue
            sha256, size = file_sha256(package.path)
            if sha256 != package.sha256 or size != package.size:
                raise PermanentError(
                    f"{package.path} does not match its record (sha256 {sha256}, {size} bytes; "
                    f"expected {package.sha256}, {package.size} bytes)"
                )
            pulp_package, uploaded = self._package(package)
            architecture = None
            if pulp_package.architecture != "all":
                architecture = self._shared("architecture", pulp_package.architecture)
            body = {"package": pulp_package.href, "release_component": component}
            # A package just uploaded has no component link yet: skip the lookup.
            if uploaded:
                link = PulpDebPackageReleaseComponentContext(self.ctx).create(body=body)
            else:
                link = self._find_or_create(
                    lambda: PulpDebPackageReleaseComponentContext(self.ctx), body, **body
                )
            units.append(_Unit(pulp_package, component, architecture, link["pulp_href"]))
        return units

    # -- repository versions -----------------------------------------------------------------

    def _stale(self, version: str | None, units: list[_Unit]) -> tuple[list[_Package], list[str]]:
        """The packages of ``version``, and what the units replace there (same name and architecture)."""
        present = self._packages_in(version)
        mine = {unit.package.href for unit in units}
        keys = {unit.package.key for unit in units}
        stale = {p.href for p in present if p.key in keys and p.href not in mine}
        if version is None or not stale:
            return present, []
        return present, [*stale, *self._links_of(version, stale)]

    def _holds(self, version: str, units: list[_Unit], exactly: set[str] | None) -> bool:
        present = self._packages_in(version)
        if exactly is not None:
            return {p.href for p in present} == exactly
        mine = {unit.package.href for unit in units}
        keys = {unit.package.key for unit in units}
        return mine <= {p.href for p in present} and not any(
            p.key in keys and p.href not in mine for p in present
        )

    def _merge_into(self, repository: str, units: list[_Unit], record: EntityDefinition) -> tuple[str, bool]:
        """A new latest version of ``repository``: its latest with ``units`` replacing same names.

        The modify is relative to whatever version is latest when Pulp runs it, so concurrent
        builds never lose each other's additions.  If the new version's number follows our base,
        Pulp applied exactly our change to it; otherwise another build wrote in between, maybe
        another version of a package we rebuilt, and the check below decides whether to go again.
        Returns the version and whether this call created it.
        """
        context = PulpAptRepositoryContext(self.ctx, pulp_href=repository)
        for _ in range(MODIFY_ATTEMPTS):
            base = t.cast(str, record["latest_version_href"])
            _, remove = self._stale(base, units)
            result = context.modify(add_content=_hrefs(units), remove_content=remove)
            created = _created_version(result)
            if created is not None and created["number"] == _version_number(base) + 1:
                return t.cast(str, created["pulp_href"]), True
            record = self._read(repository)
            version = t.cast(str, created["pulp_href"] if created else record["latest_version_href"])
            if self._holds(version, units, exactly=None):
                return version, created is not None
        raise ServiceUnavailableError(
            f"Pulp at {self.base_url}: concurrent builds kept replacing the same packages in "
            f"{record['name']}; gave up after {MODIFY_ATTEMPTS} attempts",
            _UNAVAILABLE_RETRY_SECONDS,
        )

    def _snapshot_into(self, repository: str, base: str | None, units: list[_Unit]) -> tuple[str, bool]:
        """A version of ``repository`` holding exactly ``base`` with ``units`` replacing same names.

        With ``base_version`` (or ``'*'`` when there is no base) the new version does not depend
        on the repository's own latest, so a created version is right by construction; only
        "nothing changed" needs a look at what the latest version holds.
        """
        present, remove = self._stale(base, units)
        stale = set(remove)
        expected = {p.href for p in present if p.href not in stale} | {unit.package.href for unit in units}
        context = PulpAptRepositoryContext(self.ctx, pulp_href=repository)
        for _ in range(MODIFY_ATTEMPTS):
            if base is None:
                result = context.modify(add_content=_hrefs(units), remove_content=["*"])
            else:
                result = context.modify(add_content=_hrefs(units), remove_content=remove, base_version=base)
            created = _created_version(result)
            if created is not None:
                return t.cast(str, created["pulp_href"]), True
            latest = t.cast(str, self._read(repository)["latest_version_href"])
            if self._holds(latest, units, exactly=expected):
                return latest, False
        raise ServiceUnavailableError(
            f"Pulp at {self.base_url}: repository {repository} kept changing under concurrent writers; "
            f"gave up after {MODIFY_ATTEMPTS} attempts",
            _UNAVAILABLE_RETRY_SECONDS,
        )

    def _publication(self, version: str, fresh: bool) -> str:
        """A complete structured publication of ``version`` (an existing one if it is not new)."""
        if not fresh:
            for found in PulpAptPublicationContext(self.ctx).list_iterator(
                parameters={"repository_version": version}
            ):
                if found.get("structured"):
                    return t.cast(str, found["pulp_href"])
        started = time.monotonic()
        created = PulpAptPublicationContext(self.ctx).create(
            body={"repository_version": version, "structured": True, "simple": False}
        )
        log.info("pulp: published %s in %.2fs", version, time.monotonic() - started)
        return t.cast(str, created["pulp_href"])

    def _source(self, base_path: str) -> AptSource:
        return AptSource(
            url=f"{self.content_origin}/pulp/content/{base_path}/",
            suite=self.suite,
            components=(COMPONENT,),
            trusted=True,
        )

    # -- PackageRepository -------------------------------------------------------------------

    def stage(self, build: BuildRef, packages: list[PackageFile]) -> AptSource:
        place = _place_of(build)
        base_path = place.staging_path(build.build_id)
        with self._errors(f"staging build {build.build_id} at {base_path}"):
            units = self._units(packages)
            branch = self._repository(place.branch_repository, create=False)
            base = self._read(branch)["latest_version_href"] if branch is not None else None
            staging = self._repository(place.staging_repository(build.build_id), remember=False)
            assert staging is not None
            version, fresh = self._snapshot_into(staging, base, units)
            self._publication(version, fresh)
            # Bound to the repository: Pulp serves each new publication of it once it is complete.
            self._ensure_distribution(base_path, {"repository": staging})
        return self._source(base_path)

    def drop_staging(self, build: BuildRef) -> None:
        place = _place_of(build)
        base_path = place.staging_path(build.build_id)
        with self._errors(f"dropping the staging of build {build.build_id} at {base_path}"):
            found = self._distribution(base_path)
            if found is not None:
                PulpAptDistributionContext(self.ctx, pulp_href=found["pulp_href"]).delete()
            staging = self._repository(place.staging_repository(build.build_id), create=False, remember=False)
            if staging is not None:
                # Its versions and publications go with it; packages stay while any repository holds them.
                PulpAptRepositoryContext(self.ctx, pulp_href=staging).delete()

    def publish(self, build: BuildRef, packages: list[PackageFile], move_latest: bool) -> AptSource:
        place = _place_of(build)
        if build.kind == "personal":
            move_latest = False  # personal builds never change what everyone else installs
        base_path = place.build_path(build.build_id)
        with self._errors(f"publishing build {build.build_id} at {base_path}"):
            if self._distribution(base_path) is not None:
                log.info("build %s is already published at %s; keeping it", build.build_id, base_path)
                return self._source(base_path)
            units = self._units(packages)
            branch = self._repository(place.branch_repository, create=move_latest)
            record = self._read(branch) if branch is not None else None
            newest = _newest_build(record)
            if move_latest and newest is not None and newest > build.build_id:
                log.info(
                    "latest of %s stays at build %s (newer than %s)", place.branch_key, newest, build.build_id
                )
                move_latest = False  # a late retry of an older build must not hide a newer one
            if move_latest:
                assert branch is not None and record is not None
                version, fresh = self._merge_into(branch, units, record)
            else:
                side = self._repository(place.side_repository)
                assert side is not None
                base = record["latest_version_href"] if record is not None else None
                version, fresh = self._snapshot_into(side, base, units)
            publication = self._publication(version, fresh)
            labels = {PROJECT_LABEL: place.project, BUILD_LABEL: str(build.build_id)}
            self._ensure_distribution(base_path, {"publication": publication, "pulp_labels": labels})
            if move_latest:
                assert branch is not None
                self._ensure_latest(place, branch)
                if newest is None or newest < build.build_id:
                    PulpAptRepositoryContext(self.ctx, pulp_href=branch).set_label(
                        NEWEST_BUILD_LABEL, str(build.build_id)
                    )
        return self._source(base_path)

    def _ensure_latest(self, place: _Place, branch: str) -> None:
        """``latest`` follows the branch repository's newest publication: created once, never updated."""
        with self._lock:
            if place.latest_path in self._known_latest:
                return
        self._ensure_distribution(place.latest_path, {"repository": branch})
        with self._lock:
            self._known_latest.add(place.latest_path)

    def sources(self, project: str, branch: str, build_id: int | None = None) -> AptSource:
        place = _place(project, branch)
        if build_id is None:
            with self._errors(f"looking up the latest build of {project}/{branch}"):
                found = self._distribution(place.latest_path)
            if found is None:
                raise NotFoundError(f"no successful build of {project}/{branch} has been published yet")
            return self._source(place.latest_path)
        with self._errors(f"looking up build {build_id} of {project}/{branch}"):
            found = self._distribution(place.build_path(build_id))
            if found is None:  # a personal build: its distribution lives under the user's path
                found = self._first(
                    PulpAptDistributionContext(self.ctx),
                    pulp_label_select=f"{PROJECT_LABEL}={place.project},{BUILD_LABEL}={build_id}",
                )
        if found is None:
            raise NotFoundError(f"build {build_id} of {project}/{branch} has not been published")
        return self._source(t.cast(str, found["base_path"]))

    def check(self) -> None:
        """At start: reach Pulp with our credentials and find pulp_deb (raises a farm error)."""
        self.versions()

    def versions(self) -> dict[str, str]:
        """Pulp's component versions, reached with our credentials (raises a farm error)."""
        with self._errors("checking the connection and the credentials"):
            self._first(PulpAptRepositoryContext(self.ctx), name=f"{REPOSITORY_PREFIX}/check")
            return dict(self.ctx.component_versions)


def _hrefs(units: list[_Unit]) -> list[str]:
    return [href for unit in units for href in unit.hrefs]


def _created_version(result: t.Any) -> EntityDefinition | None:
    """The version a modify task created; pulp-glue returns the task itself when nothing changed."""
    if isinstance(result, dict) and "number" in result:
        return result
    return None


def _version_number(href: str) -> int:
    return int(href.rstrip("/").rsplit("/", 1)[1])


def _newest_build(record: EntityDefinition | None) -> int | None:
    if record is None:
        return None
    value = (record.get("pulp_labels") or {}).get(NEWEST_BUILD_LABEL, "")
    return int(value) if value.isdigit() else None
