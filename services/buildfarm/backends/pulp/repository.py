"""The farm's builds in Pulp: staging, publication and ``latest`` (see :mod:`buildfarm.backends.pulp`)."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
import typing as t
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pulp_glue.common.context import EntityDefinition, PulpEntityContext
from pulp_glue.common.exceptions import PulpException
from pulp_glue.core.context import PulpArtifactContext, PulpSigningServiceContext

from buildfarm.backends.apttree import check_filename as check_build_filename
from buildfarm.backends.base import AptSource, BuildRef, Fetch, PackageFile, StoredPackage
from buildfarm.backends.fs import file_sha256
from buildfarm.backends.pulp import branchmerge, expire
from buildfarm.backends.pulp.branchmerge import Plan
from buildfarm.backends.pulp.client import (
    DEFAULT_HTTP_TIMEOUT_SECONDS,
    DEFAULT_TASK_TIMEOUT_SECONDS,
    UNAVAILABLE_RETRY_SECONDS,
    PulpClient,
)
from buildfarm.backends.pulp.contexts import (
    PulpAptDistributionContext,
    PulpAptPublicationContext,
    PulpAptRepositoryContext,
    PulpDebPackageContext,
    PulpDebPackageReleaseComponentContext,
    PulpDebReleaseArchitectureContext,
    PulpDebReleaseComponentContext,
    PulpDebSourcePackageContext,
    PulpDebSourcePackageReleaseComponentContext,
)
from buildfarm.backends.pulp.inputs import PulpBuildInputs
from buildfarm.backends.pulp.layout import (
    BUILD_LABEL,
    COMPONENT,
    DEFAULT_SUITE,
    NEWEST_BUILD_LABEL,
    PACKAGE_FIELDS,
    PROJECT_LABEL,
    SOURCE_FIELDS,
    Place,
    PulpPackage,
    PulpSource,
    SourceUnit,
    Unit,
    branch_place,
    check_filename,
    created_version,
    hrefs,
    newest_build,
    place_of,
    version_number,
)
from buildfarm.backends.pulp.mirrors import DEFAULT_RETAIN_VERSIONS, PulpMirrors
from buildfarm.backends.signing import SigningKey
from buildfarm.model.debsource import read_dsc, source_package
from buildfarm.model.errors import NotFoundError, PermanentError, ServiceUnavailableError
from buildfarm.model.mirrors import check_mirrors
from buildfarm.model.settings import DEFAULT_SIGNING_KEYRING, MirrorConfig
from buildfarm_client.models import MirrorSyncOut

log = logging.getLogger(__name__)

MODIFY_ATTEMPTS = 3
DSC_FIELDS_PULP_NEEDS = ("Maintainer", "Standards-Version")
"""Fields pulp_deb 3.11 refuses a source package without (beyond those every .dsc must have);
dpkg-source itself does not require them."""
"""How often a repository version is rewritten when concurrent builds raced on the same package name."""


class PulpRepository(PulpClient):
    """:class:`~buildfarm.backends.base.PackageRepository` on a Pulp server (pulpcore + pulp_deb).

    ``content_origin`` is where apt clients reach Pulp's content app (``CONTENT_ORIGIN`` of the
    server, or a proxy in front of it); ``suite`` is the apt distribution of every publication.
    ``signing_service`` names the AptReleaseSigningService that signs every build publication's
    Release (ops/pulp/pulpstack.py registers one) and every mirror publication's (:mod:`.mirrors`);
    their apt lines then say ``[signed-by=<keyring>]``.  Staging publications, read only by the
    farm's builders, stay unsigned.  One instance is safe to share between threads.
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
        mirrors: list[MirrorConfig] | None = None,
        mirror_retain_versions: int = DEFAULT_RETAIN_VERSIONS,
        orphan_protection_minutes: int | None = None,
        signing_service: str | None = None,
        keyring: str = DEFAULT_SIGNING_KEYRING,
    ) -> None:
        super().__init__(
            base_url,
            username,
            password,
            task_timeout_seconds=task_timeout_seconds,
            http_timeout_seconds=http_timeout_seconds,
        )
        self.content_origin = content_origin.rstrip("/")
        self.suite = suite
        self._shared_hrefs: dict[tuple[str, str], str] = {}  # release components/architectures
        self._known_latest: set[str] = set()
        self.uploads = 0
        """Packages sent to Pulp by this instance (the rest were added by reference)."""
        self.reused = 0
        self.orphan_protection_minutes = orphan_protection_minutes
        """Orphans younger than this survive ``collect_garbage`` (None: Pulp's ORPHAN_PROTECTION_TIME)."""
        self.signing_service = signing_service
        self.keyring = keyring
        self._signing_record: EntityDefinition | None = None
        self.mirrors = PulpMirrors(
            self,
            self.content_origin,
            check_mirrors(list(mirrors or [])),
            mirror_retain_versions,
            signing_service=self._signing_href if signing_service is not None else None,
            keyring=keyring,
        )
        self.inputs = PulpBuildInputs(self, self._artifact)

    # -- signing -----------------------------------------------------------------------------

    def check(self) -> None:
        super().check()
        if self.signing_service is None:
            log.warning(
                "no pulp_signing_service: Pulp publications are unsigned (apt lines say [trusted=yes])"
            )
        else:
            self._signing()

    def _signing(self) -> EntityDefinition:
        """The configured signing service's record (href, public key), looked up once."""
        with self._lock:
            if self._signing_record is not None:
                return self._signing_record
        with self._errors(f"looking up the signing service {self.signing_service!r}"):
            found = self._first(PulpSigningServiceContext(self.ctx), name=self.signing_service)
        if found is None:
            raise PermanentError(
                f"Pulp at {self.base_url} has no signing service {self.signing_service!r} (setting "
                "pulp_signing_service): register it with pulpcore-manager add-signing-service "
                "--class deb:AptReleaseSigningService"
            )
        with self._lock:
            self._signing_record = found
        return found

    def _signing_href(self) -> str:
        return t.cast(str, self._signing()["pulp_href"])

    def signing_key(self) -> SigningKey | None:
        if self.signing_service is None:
            return None
        record = self._signing()
        return SigningKey(str(record["pubkey_fingerprint"]), str(record["public_key"]))

    # -- lookups -----------------------------------------------------------------------------

    def _packages_in(self, version: str | None) -> list[PulpPackage]:
        if version is None:
            return []
        listed = PulpDebPackageContext(self.ctx).list_iterator(
            parameters={"repository_version": version, "fields": PACKAGE_FIELDS}
        )
        return [PulpPackage.from_entity(entity) for entity in listed]

    def _sources_in(self, version: str | None) -> list[PulpSource]:
        if version is None:
            return []
        listed = PulpDebSourcePackageContext(self.ctx).list_iterator(
            parameters={"repository_version": version, "fields": SOURCE_FIELDS}
        )
        return [PulpSource.from_entity(entity) for entity in listed]

    def _source_links_of(self, version: str, sources: set[str]) -> list[str]:
        """The source-package-release-component links of ``sources`` in ``version``."""
        listed = PulpDebSourcePackageReleaseComponentContext(self.ctx).list_iterator(
            parameters={"repository_version": version, "fields": ["pulp_href", "source_package"]}
        )
        return [entity["pulp_href"] for entity in listed if entity["source_package"] in sources]

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

    def _package(self, package: PackageFile) -> tuple[PulpPackage, bool]:
        """The package in Pulp, found by sha256 (whichever repository brought it) or uploaded.

        Returns it and whether this call uploaded it.
        """
        lookup = {"sha256": package.sha256, "fields": PACKAGE_FIELDS}
        found = self._first(PulpDebPackageContext(self.ctx), **lookup)
        if found is not None:
            with self._lock:
                self.reused += 1
            return PulpPackage.from_entity(found), False
        started = time.monotonic()
        with self._errors(f"uploading {package.filename}"):
            try:
                created = PulpDebPackageContext(self.ctx).create(body={"file": str(package.path)})
            except PulpException:
                found = self._first(PulpDebPackageContext(self.ctx), **lookup)
                if found is None:
                    raise
                return PulpPackage.from_entity(found), False  # uploaded concurrently by another node
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
        return PulpPackage.from_entity(created), True

    def _units(self, packages: list[PackageFile]) -> list[Unit]:
        """Each package as Pulp content of ``<suite> main``, checked against its record first."""
        seen: dict[str, str] = {}
        units: list[Unit] = []
        component = self._shared("component", COMPONENT)
        for package in packages:
            name = check_filename(package.filename)
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
            units.append(Unit(pulp_package, component, architecture, link["pulp_href"]))
        return units

    def _artifact(self, package: PackageFile) -> str:
        """The href of the Pulp artifact holding ``package``'s bytes (found by sha256 or uploaded)."""
        found = self._first(PulpArtifactContext(self.ctx), sha256=package.sha256)
        if found is not None:
            return t.cast(str, found["pulp_href"])
        with package.path.open("rb") as handle:
            try:
                return t.cast(
                    str, PulpArtifactContext(self.ctx).upload(handle, self.ctx.chunk_size, package.sha256)
                )
            except PulpException:
                found = self._first(PulpArtifactContext(self.ctx), sha256=package.sha256)
                if found is None:
                    raise
                return t.cast(str, found["pulp_href"])  # uploaded concurrently by another node

    def _source_units(self, files: list[PackageFile]) -> list[SourceUnit]:
        """Each source package among ``files`` (a .dsc and every file it names) as Pulp content
        of ``<suite> main``.

        pulp_deb keeps one source package per name and version in the whole Pulp (its upload
        returns the one it has): when that one is not this .dsc (another project's, or an
        earlier build of the same version from other sources), the build's source package is
        not published (a warning says so) rather than another one served in its place.  A .dsc
        pulp_deb refuses (no ``Standards-Version``, say) is left out the same way: the build's
        binaries are published all the same.
        """
        by_name = {f.filename: f for f in files}
        units: list[SourceUnit] = []
        component = self._shared("component", COMPONENT)
        for dsc in sorted((f for f in files if f.filename.endswith(".dsc")), key=lambda f: f.filename):
            described = source_package(dsc.path, dsc.filename, check=False)
            missing = [f for f in DSC_FIELDS_PULP_NEEDS if not read_dsc(dsc.path, dsc.filename).get(f)]
            if missing:
                log.warning(
                    "pulp: %s has no %s field, which pulp_deb requires of a source package; "
                    "the build's binaries are published without it",
                    dsc.filename,
                    " or ".join(missing),
                )
                continue
            for named in described.files:
                have = by_name.get(named.name)
                if have is None or have.sha256 != named.sha256:
                    raise PermanentError(
                        f"{dsc.filename} names {named.name} (sha256 {named.sha256}), which the build "
                        + ("did not publish" if have is None else f"published as sha256 {have.sha256}")
                    )
            for package in (*(by_name[n.name] for n in described.files), dsc):
                sha256, size = file_sha256(package.path)
                if sha256 != package.sha256 or size != package.size:
                    raise PermanentError(
                        f"{package.path} does not match its record (sha256 {sha256}, {size} bytes; "
                        f"expected {package.sha256}, {package.size} bytes)"
                    )
                dsc_artifact = self._artifact(package)  # the .dsc comes last: its files must be there
            try:
                with self._errors(f"adding the source package {dsc.filename}"):
                    created = PulpDebSourcePackageContext(self.ctx).create(body={"artifact": dsc_artifact})
            except PermanentError as exc:  # pulp_deb refused this .dsc: the binaries still go out
                log.warning("pulp: %s is published without its source package: %s", dsc.filename, exc)
                continue
            held = dict(created.get("artifacts") or {})
            held_dsc = next((href for path, href in held.items() if path.endswith(f"/{dsc.filename}")), None)
            if held_dsc != dsc_artifact:
                log.warning(
                    "pulp: source package %s %s is already in Pulp with other files; this build's %s "
                    "is not published (pulp_deb keeps one source package per name and version)",
                    described.name,
                    described.version,
                    dsc.filename,
                )
                continue
            source = PulpSource.from_entity(created)
            body = {"source_package": source.href, "release_component": component}
            link = self._find_or_create(
                lambda: PulpDebSourcePackageReleaseComponentContext(self.ctx), body, **body
            )
            units.append(SourceUnit(source, component, t.cast(str, link["pulp_href"])))
        return units

    # -- repository versions -----------------------------------------------------------------

    def _plan(
        self,
        version: str | None,
        labels: dict[str, str],
        units: list[Unit],
        build_id: int,
        *,
        prefer_incoming: bool,
        source_units: list[SourceUnit] | None = None,
    ) -> tuple[list[PulpPackage], list[PulpSource], Plan]:
        """What ``version`` holds and how the build's ``units`` (and ``source_units``) merge into
        it (:mod:`.branchmerge`)."""
        present = self._packages_in(version)
        sources = self._sources_in(version)
        return (
            present,
            sources,
            branchmerge.plan(
                present,
                labels,
                units,
                build_id,
                prefer_incoming=prefer_incoming,
                present_sources=sources,
                source_units=source_units or [],
            ),
        )

    def _removals(self, version: str | None, plan: Plan) -> list[str]:
        """The packages and source packages a plan removes with their component links."""
        if version is None:
            return []
        removed: list[str] = []
        if plan.remove:
            removed += [*plan.remove, *self._links_of(version, set(plan.remove))]
        if plan.remove_sources:
            removed += [*plan.remove_sources, *self._source_links_of(version, set(plan.remove_sources))]
        return removed

    def _merge_into(
        self,
        repository: str,
        units: list[Unit],
        record: EntityDefinition,
        build_id: int = 0,
        source_units: list[SourceUnit] | None = None,
    ) -> tuple[str, bool, Plan]:
        """A new latest version of ``repository``: its latest with the build merged in by source
        package (:mod:`.branchmerge`); the latest itself when the build adds nothing (it lost to
        newer builds of all its packages, or brought exactly what is there).

        The modify is relative to whatever version is latest when Pulp runs it, so concurrent
        builds never lose each other's additions.  If the new version's number follows our base,
        Pulp applied exactly our change to it; otherwise another build wrote in between, maybe
        another version of a package we built, and planning again on the result decides whether
        to go again.  Returns the version, whether this call created it, and the last plan.
        """
        context = PulpAptRepositoryContext(self.ctx, pulp_href=repository)
        created_any = False
        for attempt in range(MODIFY_ATTEMPTS + 1):
            base = t.cast(str, record["latest_version_href"])
            labels = dict(record.get("pulp_labels") or {})
            _, _, plan = self._plan(
                base, labels, units, build_id, prefer_incoming=False, source_units=source_units
            )
            if not plan.changes:
                return base, created_any, plan
            if attempt == MODIFY_ATTEMPTS:
                break
            result = context.modify(
                add_content=hrefs([*plan.add, *plan.add_sources]), remove_content=self._removals(base, plan)
            )
            created = created_version(result)
            created_any = created_any or created is not None
            if created is not None and created["number"] == version_number(base) + 1:
                return t.cast(str, created["pulp_href"]), True, plan
            record = self._read(repository)
        raise ServiceUnavailableError(
            f"Pulp at {self.base_url}: concurrent builds kept replacing the same packages in "
            f"{record['name']}; gave up after {MODIFY_ATTEMPTS} attempts",
            UNAVAILABLE_RETRY_SECONDS,
        )

    def _snapshot_into(
        self,
        repository: str,
        base: str | None,
        units: list[Unit],
        labels: dict[str, str] | None = None,
        build_id: int = 0,
        *,
        prefer_incoming: bool = True,
        source_units: list[SourceUnit] | None = None,
    ) -> tuple[str, bool]:
        """A version of ``repository`` holding exactly ``base`` with the build merged in by source
        package (``labels``: the branch's, :mod:`.branchmerge`); ``prefer_incoming`` lets every
        package of the build win, whatever its version (staging and personal builds).

        With ``base_version`` (or ``'*'`` when there is no base) the new version does not depend
        on the repository's own latest, so a created version is right by construction; only
        "nothing changed" needs a look at what the latest version holds.
        """
        present, sources, plan = self._plan(
            base, labels or {}, units, build_id, prefer_incoming=prefer_incoming, source_units=source_units
        )
        remove = self._removals(base, plan)
        gone = set(plan.remove) | set(plan.remove_sources)
        expected = {p.href for p in present if p.href not in gone}
        expected |= {p.href for p in sources if p.href not in gone}
        expected |= {u.package.href for u in plan.add} | {u.package.href for u in plan.add_sources}
        add = hrefs([*plan.add, *plan.add_sources])
        context = PulpAptRepositoryContext(self.ctx, pulp_href=repository)
        for _ in range(MODIFY_ATTEMPTS):
            if base is None:
                result = context.modify(add_content=add, remove_content=["*"])
            else:
                result = context.modify(add_content=add, remove_content=remove, base_version=base)
            created = created_version(result)
            if created is not None:
                return t.cast(str, created["pulp_href"]), True
            latest = t.cast(str, self._read(repository)["latest_version_href"])
            held = [p.href for p in self._packages_in(latest)] + [p.href for p in self._sources_in(latest)]
            if set(held) == expected:
                return latest, False
        raise ServiceUnavailableError(
            f"Pulp at {self.base_url}: repository {repository} kept changing under concurrent writers; "
            f"gave up after {MODIFY_ATTEMPTS} attempts",
            UNAVAILABLE_RETRY_SECONDS,
        )

    def _publication(self, version: str, fresh: bool, signed: bool) -> str:
        """A complete structured publication of ``version`` (an existing one if it is not new),
        signed by the signing service when ``signed`` and one is configured."""
        body: dict[str, t.Any] = {"repository_version": version, "structured": True, "simple": False}
        if signed and self.signing_service is not None:
            body["signing_service"] = self._signing_href()
        if not fresh:
            for found in PulpAptPublicationContext(self.ctx).list_iterator(
                parameters={"repository_version": version}
            ):
                if found.get("structured") and found.get("signing_service") == body.get("signing_service"):
                    return t.cast(str, found["pulp_href"])
        started = time.monotonic()
        created = PulpAptPublicationContext(self.ctx).create(body=body)
        log.info("pulp: published %s in %.2fs", version, time.monotonic() - started)
        return t.cast(str, created["pulp_href"])

    def _source(self, base_path: str, signed: bool = True) -> AptSource:
        return AptSource(
            url=f"{self.content_origin}/pulp/content/{base_path}/",
            suite=self.suite,
            components=(COMPONENT,),
            trusted=True,
            signed_by=self.keyring if signed and self.signing_service is not None else None,
            sources=True,
        )

    # -- PackageRepository -------------------------------------------------------------------

    def stage(self, build: BuildRef, packages: Sequence[StoredPackage], fetch: Fetch) -> AptSource:
        """Make the build's staging repository hold the branch's latest with ``packages`` over it.

        Each release stages every package built so far: the ones the staging repository's
        latest version holds already (by sha256) are taken from it as they are, and only the
        new ones are fetched, checked and looked up (or uploaded), so a build's stagings fetch
        each package once, not once per later release."""
        place = place_of(build)
        base_path = place.staging_path(build.build_id)
        with (
            self._errors(f"staging build {build.build_id} at {base_path}"),
            tempfile.TemporaryDirectory(prefix="stage-") as tmp,
        ):
            staging = self._repository(place.staging_repository(build.build_id), remember=False)
            assert staging is not None
            staged = self._staged_units(staging)
            names: dict[str, str] = {}
            kept: list[Unit] = []
            files = []
            for package in packages:
                name = check_build_filename(package.filename)
                if names.setdefault(name, package.sha256) != package.sha256:
                    raise PermanentError(f"two different packages are both named {name}")
                unit = staged.get(package.sha256)
                if unit is not None:
                    kept.append(unit)
                    continue
                # Pulp keeps every package once, found by sha256 (_package); the files go only
                # to check them against their records.
                path = Path(tmp) / name
                if not path.exists():
                    fetch(package.sha256, path)
                files.append(PackageFile(package.filename, package.sha256, package.size, path))
            units = [*kept, *self._units(files)]
            branch = self._repository(place.branch_repository, create=False)
            base = self._read(branch)["latest_version_href"] if branch is not None else None
            version, fresh = self._snapshot_into(staging, base, units)
            self._publication(version, fresh, signed=False)  # only the farm's builders read it
            # Bound to the repository: Pulp serves each new publication of it once it is complete.
            self._ensure_distribution(base_path, {"repository": staging})
        return self._source(base_path, signed=False)

    def _staged_units(self, staging: str) -> dict[str, Unit]:
        """The packages the staging repository's latest version holds in ``<suite> main``, as
        units by sha256 (two list requests however many packages)."""
        latest = t.cast(str | None, self._read(staging).get("latest_version_href"))
        if latest is None or version_number(latest) == 0:
            return {}
        component = self._shared("component", COMPONENT)
        listed = PulpDebPackageReleaseComponentContext(self.ctx).list_iterator(
            parameters={"repository_version": latest, "fields": ["pulp_href", "package", "release_component"]}
        )
        links = {e["package"]: e["pulp_href"] for e in listed if e["release_component"] == component}
        units: dict[str, Unit] = {}
        for package in self._packages_in(latest):
            link = links.get(package.href)
            if link is None or not package.sha256:
                continue
            architecture = None
            if package.architecture != "all":
                architecture = self._shared("architecture", package.architecture)
            units[package.sha256] = Unit(package, component, architecture, t.cast(str, link))
        return units

    def drop_staging(self, build: BuildRef) -> None:
        place = place_of(build)
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
        place = place_of(build)
        if build.kind == "personal":
            move_latest = False  # personal builds never change what everyone else installs
        base_path = place.build_path(build.build_id)
        with self._errors(f"publishing build {build.build_id} at {base_path}"):
            if self._distribution(base_path) is not None:
                log.info("build %s is already published at %s; keeping it", build.build_id, base_path)
                return self._source(base_path)
            for package in packages:  # anything else (a "Release") is refused, not silently dropped
                check_build_filename(package.filename)
            units = self._units([p for p in packages if p.filename.endswith((".deb", ".udeb"))])
            # Source packages (.dsc and its files) go with their binaries (:mod:`.branchmerge`).
            source_units = self._source_units(
                [p for p in packages if not p.filename.endswith((".deb", ".udeb"))]
            )
            branch = self._repository(place.branch_repository, create=move_latest)
            record = self._read(branch) if branch is not None else None
            if move_latest:
                # Any publish order: the merge rules decide what wins, not which build came last.
                assert branch is not None and record is not None
                version, fresh, plan = self._merge_into(branch, units, record, build.build_id, source_units)
                # Before the distribution: a retry after a crash here plans again and labels again.
                self._label_branch(branch, record, plan, build.build_id)
            else:
                side = self._repository(place.side_repository)
                assert side is not None
                base = record["latest_version_href"] if record is not None else None
                branch_labels = dict(record.get("pulp_labels") or {}) if record is not None else {}
                version, fresh = self._snapshot_into(
                    side,
                    base,
                    units,
                    branch_labels,
                    build.build_id,
                    prefer_incoming=build.kind == "personal",
                    source_units=source_units,
                )
            publication = self._publication(version, fresh, signed=True)
            labels = {PROJECT_LABEL: place.project, BUILD_LABEL: str(build.build_id)}
            self._ensure_distribution(base_path, {"publication": publication, "pulp_labels": labels})
            if move_latest:
                assert branch is not None
                self._ensure_latest(place, branch)
        return self._source(base_path)

    def _label_branch(self, branch: str, record: EntityDefinition | None, plan: Plan, build_id: int) -> None:
        """Record on the branch which build brought each source package it won, and the newest
        build merged (retention keeps that one's distribution)."""
        current = dict((record or {}).get("pulp_labels") or {})
        wanted = branchmerge.labels_for(plan.merged, build_id)
        newest = newest_build(record)
        if newest is None or newest < build_id:
            wanted[NEWEST_BUILD_LABEL] = str(build_id)
        context = PulpAptRepositoryContext(self.ctx, pulp_href=branch)
        for key, value in sorted(wanted.items()):
            if current.get(key) != value:
                context.set_label(key, value)  # one key per request: concurrent builds touch their own

    def _ensure_latest(self, place: Place, branch: str) -> None:
        """``latest`` follows the branch repository's newest publication: created once, never updated."""
        with self._lock:
            if place.latest_path in self._known_latest:
                return
        self._ensure_distribution(place.latest_path, {"repository": branch})
        with self._lock:
            self._known_latest.add(place.latest_path)

    def sources(self, project: str, branch: str, build_id: int | None = None) -> AptSource:
        place = branch_place(project, branch)
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

    def mirror_sources(self) -> list[AptSource]:
        """The usable mirrors as the farm's build steps read them: like the staging repositories,
        unsigned lines (``[trusted=yes]``): a builder holds no farm key, and Pulp checked the
        upstream's signature at sync.  Users get the signed lines (:meth:`usable_mirrors`)."""
        return [replace(source, signed_by=None) for source in self.mirrors.usable().values()]

    def usable_mirrors(self) -> dict[str, AptSource]:
        return self.mirrors.usable()

    def sync_mirror(self, mirror: MirrorConfig) -> MirrorSyncOut:
        return self.mirrors.sync(mirror)

    def keep_build_inputs(self, files: list[PackageFile]) -> int:
        """Put build inputs into Pulp's file repository of them (:mod:`.inputs`); how many were new."""
        return self.inputs.keep(files)

    def expire_build(self, build: BuildRef) -> None:
        self.drop_staging(build)  # normally gone already; a crashed build's is not
        expire.expire_build(self, build)

    def sweep_leftover_versions(self, older_than: dt.datetime, *, dry_run: bool) -> int:
        """Versions of build repositories no distribution serves: crashed builds' (see :mod:`.expire`)."""
        return expire.sweep_leftover_versions(self, older_than, dry_run=dry_run)

    def collect_garbage(self) -> None:
        """Pulp's orphan cleanup (see :mod:`.expire`); Pulp does not say how many bytes it freed."""
        expire.collect_garbage(self, self.orphan_protection_minutes)
