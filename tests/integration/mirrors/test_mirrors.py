"""3rd-party mirrors through a real Pulp, judged by the real apt.

The "3rd party" is a small APT repository (``dists/<suite>/main/binary-<arch>`` indexed by
Debian's apt-ftparchive, real .debs from dpkg-deb) served over HTTP on 127.0.0.1 by a thread
(mirrorkit). The session's Pulp (pulpkit) syncs it; ``apt-get update`` + ``apt-get download`` through the
mirror's distribution must give byte-identical packages; a re-sync after upstream changed
serves the new set while no reader ever sees a half-switched one; the CLI syncs through the API.
The upstream is signed (InRelease and Release.gpg) with a throwaway key made in a temp GNUPGHOME:
a mirror naming that key syncs, a wrong key or a tampered Release is refused and publishes nothing.
With the farm's signing service (the session key of pulpkit) the mirror's publication is signed
by the farm's key and apt reads it with that public key alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from debian.deb822 import Release
from pulp_glue.core.context import PulpContentRedirectContentGuardContext

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.pulp import PulpAptRepositoryContext, PulpRepository
from buildfarm.backends.pulp.contexts import PulpAptDistributionContext, PulpAptPublicationContext
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import ConflictError, PermanentError, ServiceUnavailableError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.settings import DEFAULT_SIGNING_KEYRING, MirrorConfig
from buildfarm.runners.base import StepJob, StepResult
from buildfarm.runners.host import HostRunner
from buildfarm.wiring import make_repository

from apikit import running_api
from debpkgs import build_deb, make_package, write_manifest
from farmkit import drain, make_test_context
from helpers import free_port
from localfarmkit import BUILDFARM
from mirrorkit import ARCH, COMPONENT, SUITE, SigningKey, Upstream, mirror_of, served_upstream, signing_keys
from pulpkit import PulpServer, pulp_server

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests


@pytest.fixture(scope="module")
def keys() -> Iterator[tuple[SigningKey, SigningKey]]:
    """The upstream's key and a stranger's."""
    with signing_keys("tp upstream <tp@example.invalid>", "stranger <x@example.invalid>") as keys:
        yield keys[0], keys[1]


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, keys: tuple[SigningKey, SigningKey]
) -> Iterator[Upstream]:
    """Two packages (one ``all``, one of the host's architecture) at ``<url>/debian/``."""
    debs_dir = tmp_path_factory.mktemp("third-party-debs")
    salt = str(time.time_ns())  # bytes no other test module gave Pulp
    with served_upstream(tmp_path_factory.mktemp("third-party"), keys[0], prefix="debian") as repo:
        for name, arch in (("tp-alpha", "all"), ("tp-beta", ARCH)):
            repo.add(build_deb(debs_dir, name, f"1.0+{salt}", architecture=arch))
        yield repo


@pytest.fixture(scope="module")
def repo(pulp_server: PulpServer, upstream: Upstream) -> PulpRepository:
    return pulp_server.repository(mirrors=[mirror_of(upstream)])


def _apt(workdir: Path, line: str) -> AptClient:
    client = AptClient(workdir, line)
    client.update()
    return client


def _served(url: str) -> tuple[bytes, set[str]]:
    """What the distribution serves now: Release, and the packages of the Packages indexes it
    vouches for (fetches Release, the indexes, Release again; looks again if it switched)."""
    with httpx.Client(timeout=10) as http:
        for _ in range(5):
            release = http.get(f"{url}dists/{SUITE}/Release").content
            listed = {e["name"]: e["sha256"] for e in Release(release)["SHA256"]}
            indexes = {
                n: http.get(f"{url}dists/{SUITE}/{n}").content for n in listed if n.endswith("/Packages")
            }
            if http.get(f"{url}dists/{SUITE}/Release").content != release:
                continue  # the distribution switched between our requests: look again
            names: set[str] = set()
            for name, data in indexes.items():
                assert listed[name] == hashlib.sha256(data).hexdigest(), f"Release and {name} disagree"
                names |= {line[9:].decode() for line in data.splitlines() if line.startswith(b"Package: ")}
            return release, names
    raise AssertionError("the distribution kept switching")


def test_sync_serves_upstream_bytes_to_apt(repo: PulpRepository, upstream: Upstream, tmp_path: Path) -> None:
    mirror = mirror_of(upstream)
    assert repo.mirror_sources() == []  # configured, not synced: builds do not use it yet
    status = repo.sync_mirror(mirror)
    print(f"\nmirror sync of {status.packages} packages: {status.seconds:.2f} s")
    line = f"deb [trusted=yes] {repo.content_origin}/pulp/content/_mirrors/thirdparty/ {SUITE} {COMPONENT}"
    assert (status.name, status.source, status.packages) == ("thirdparty", line, 2)
    assert [s.line() for s in repo.mirror_sources()] == [line]
    client = _apt(tmp_path / "apt", line)
    for deb in upstream.debs.values():
        name = deb.filename.split("_", 1)[0]
        assert client.download(name).read_bytes() == deb.path.read_bytes()
    # Recognisably a mirror for retention: labelled class mirror.
    found = next(
        PulpAptRepositoryContext(repo.ctx).list_iterator(parameters={"name": "buildfarm/_mirrors/thirdparty"})
    )
    assert found["pulp_labels"] == {"buildfarm.class": "mirror", "buildfarm.mirror": "thirdparty"}


def test_resync_moves_the_distribution_atomically(
    repo: PulpRepository, upstream: Upstream, tmp_path: Path
) -> None:
    mirror = mirror_of(upstream)
    first = repo.sync_mirror(mirror)  # the state of the previous test, or the first sync
    again = repo.sync_mirror(mirror)
    print(f"\nmirror re-sync with no change: {again.seconds:.2f} s")
    assert again.version == first.version  # nothing changed upstream: no new repository version
    url = repo.mirror_sources()[0].url
    old_release, old = _served(url)

    upstream.add(build_deb(tmp_path, "tp-gamma", f"1.0+{time.time_ns()}", architecture="all"))
    seen: list[set[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(_served(url)[1])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status = repo.sync_mirror(mirror)
    finally:
        done.set()
        watcher.join(30)
    new = old | {"tp-gamma"}
    assert status.packages == 3 and int(status.version) == int(first.version) + 1
    assert seen and all(names in (old, new) for names in seen), "a reader saw a half-switched mirror"
    assert _served(url)[1] == new and _served(url)[0] != old_release
    client = _apt(tmp_path / "apt", repo.mirror_sources()[0].line())
    gamma = next(d for d in upstream.debs.values() if d.filename.startswith("tp-gamma_"))
    assert client.download("tp-gamma").read_bytes() == gamma.path.read_bytes()


def _version_numbers(repo: PulpRepository, name: str) -> list[int]:
    found = next(PulpAptRepositoryContext(repo.ctx).list_iterator(parameters={"name": name}))
    versions = PulpAptRepositoryContext(repo.ctx, pulp_href=found["pulp_href"]).get_version_context()
    return sorted(int(v["number"]) for v in versions.list_iterator(parameters={"fields": ["number"]}))


def _served_version(repo: PulpRepository, base_path: str) -> int:
    distribution = next(
        PulpAptDistributionContext(repo.ctx).list_iterator(parameters={"base_path": base_path})
    )
    publication = PulpAptPublicationContext(repo.ctx, pulp_href=distribution["publication"]).entity
    return int(publication["repository_version"].rstrip("/").rsplit("/", 1)[1])


def test_pulp_keeps_only_the_retained_versions(
    repo: PulpRepository, upstream: Upstream, tmp_path: Path
) -> None:
    mirror = mirror_of(upstream)
    before = int(repo.sync_mirror(mirror).version)
    upstream.add(build_deb(tmp_path, "tp-delta", f"1.0+{time.time_ns()}", architecture="all"))
    after = int(repo.sync_mirror(mirror).version)
    assert after == before + 1 and after >= 3  # the third version made by a change
    assert _version_numbers(repo, "buildfarm/_mirrors/thirdparty") == [before, after]  # retain 2
    assert _served_version(repo, "_mirrors/thirdparty") == after
    assert "tp-delta" in _served(repo.mirror_sources()[0].url)[1]


def test_one_sync_of_a_mirror_at_a_time(repo: PulpRepository, upstream: Upstream, tmp_path: Path) -> None:
    mirror = mirror_of(upstream)
    before = int(repo.sync_mirror(mirror).version)
    upstream.add(build_deb(tmp_path, "tp-epsilon", f"1.0+{time.time_ns()}", architecture="all"))
    lease = "buildfarm/_mirrors/thirdparty/syncing"
    guards = PulpContentRedirectContentGuardContext(repo.ctx)
    outcome: dict[str, object] = {}

    def first_sync() -> None:
        try:
            outcome["first"] = repo.sync_mirror(mirror)
        except Exception as exc:
            outcome["first"] = exc

    upstream.gate.clear()  # the first sync's Pulp task waits on the upstream while it holds the lease
    first = threading.Thread(target=first_sync)
    first.start()
    try:
        for _ in range(600):  # bounded: 30 s for the first sync to take its lease
            if repo._first(guards, name=lease) is not None:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the first sync never took its lease: {outcome}")
        with pytest.raises(ConflictError) as caught:
            repo.sync_mirror(mirror)
    finally:
        upstream.gate.set()
        first.join(120)
    assert str(caught.value).startswith("mirror 'thirdparty' is already syncing (for ")
    assert "\n" not in str(caught.value)
    status = outcome["first"]
    assert not isinstance(status, BaseException), status
    assert int(t.cast(t.Any, status).version) == before + 1
    assert _served_version(repo, "_mirrors/thirdparty") == before + 1
    assert repo._first(guards, name=lease) is None  # released: the next sync may start
    # The distribution never moves back: a late switch to the previous version is not made.
    name = "buildfarm/_mirrors/thirdparty"
    repository = next(PulpAptRepositoryContext(repo.ctx).list_iterator(parameters={"name": name}))
    older = f"{repository['pulp_href']}versions/{before}/"
    publication = next(
        PulpAptPublicationContext(repo.ctx).list_iterator(parameters={"repository_version": older})
    )
    labels = {"buildfarm.class": "mirror", "buildfarm.mirror": "thirdparty"}
    repo.mirrors._point_distribution(name, "_mirrors/thirdparty", publication["pulp_href"], older, labels)
    assert _served_version(repo, "_mirrors/thirdparty") == before + 1


def test_pulp_checks_the_release_signature(
    repo: PulpRepository, upstream: Upstream, keys: tuple[SigningKey, SigningKey], tmp_path: Path
) -> None:
    right, stranger = keys
    signed = repo.sync_mirror(mirror_of(upstream, "signedtp", right.public))
    assert signed.packages == len(upstream.debs)
    served = _served(f"{repo.content_origin}/pulp/content/_mirrors/signedtp/")
    with pytest.raises(PermanentError) as caught:
        repo.sync_mirror(mirror_of(upstream, "signedtp", stranger.public))
    assert str(caught.value) == (
        f"mirror 'signedtp': no Release file of {upstream.url} is signed by the key in {stranger.public} "
        "(Pulp's sync refused it; nothing new is published)"
    )
    upstream.add(build_deb(tmp_path, "tp-zeta", f"1.0+{time.time_ns()}", architecture="all"))
    upstream.tamper()
    try:
        with pytest.raises(PermanentError, match=r"^mirror 'signedtp': no Release file of .* is signed by"):
            repo.sync_mirror(mirror_of(upstream, "signedtp", right.public))
    finally:
        upstream._index()  # signed again: the next tests see a good upstream
    assert _served(f"{repo.content_origin}/pulp/content/_mirrors/signedtp/") == served  # nothing new
    assert _version_numbers(repo, "buildfarm/_mirrors/signedtp")[-1] == int(signed.version)


def test_farm_signs_mirror_publications_and_apt_needs_only_its_key(
    pulp_server: PulpServer,
    repo: PulpRepository,
    upstream: Upstream,
    keys: tuple[SigningKey, SigningKey],
    tmp_path: Path,
) -> None:
    right = keys[0]
    mirror = mirror_of(upstream, "farmsigned", right.public)  # Pulp checks the upstream's key at sync
    unsigned = repo.sync_mirror(mirror)  # synced while the farm had no signing service
    assert pulp_server.signing_service is not None
    signed_repo = pulp_server.repository(mirrors=[mirror], signing_service=pulp_server.signing_service)
    url = f"{repo.content_origin}/pulp/content/_mirrors/farmsigned/"
    # Served unsigned until the next sync: its line stays [trusted=yes], so apt still reads it.
    trusted = f"deb [trusted=yes] {url} {SUITE} {COMPONENT}"
    assert [s.line() for s in signed_repo.usable_mirrors().values()] == [trusted]

    status = signed_repo.sync_mirror(mirror)
    line = f"deb [signed-by={DEFAULT_SIGNING_KEYRING}] {url} {SUITE} {COMPONENT}"
    assert (status.source, status.version) == (line, unsigned.version)  # same version, signed publication
    assert [s.line() for s in signed_repo.usable_mirrors().values()] == [line]
    # Build steps read it like their staging repository: a builder holds no farm key.
    assert [s.line() for s in signed_repo.mirror_sources()] == [trusted]
    key = signed_repo.signing_key()
    assert key is not None
    client = AptClient(tmp_path / "apt", line, key.public_key)  # the farm's public key, no trusted=yes
    client.update()
    for deb in upstream.debs.values():
        assert client.download(deb.filename.split("_", 1)[0]).read_bytes() == deb.path.read_bytes()
    with pytest.raises(AptError, match="NO_PUBKEY"):  # the upstream's own key does not verify it
        AptClient(tmp_path / "apt-upstream-key", line, right.public.read_text()).update()
    assert "BEGIN PGP SIGNATURE" in httpx.get(f"{url}dists/{SUITE}/InRelease", timeout=10).text


def test_unreachable_upstream_is_one_clear_error(repo: PulpRepository) -> None:
    dead = MirrorConfig(
        name="gone", url=f"http://127.0.0.1:{free_port()}/debian", distribution=SUITE, architectures=[ARCH]
    )
    with pytest.raises(ServiceUnavailableError) as caught:
        repo.sync_mirror(dead)
    message = str(caught.value)
    assert "mirror 'gone'" in message and "cannot be reached" in message and "\n" not in message
    assert "gone" not in {s.url for s in repo.mirror_sources()}  # never synced: not a build source


def test_local_profile_reads_the_upstream_directly(upstream: Upstream, tmp_path: Path) -> None:
    local = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:1", [mirror_of(upstream)])
    line = f"deb [trusted=yes] {upstream.url}/ {SUITE} {COMPONENT}"
    assert [s.line() for s in local.mirror_sources()] == [line]
    status = local.sync_mirror(mirror_of(upstream))
    assert (status.source, status.packages) == (line, len(upstream.debs))
    assert _apt(tmp_path / "apt", line).download("tp-alpha").is_file()
    wrong = MirrorConfig(name="wrong", url=upstream.url, distribution="nosuch", architectures=[ARCH])
    with pytest.raises(PermanentError, match=r"^mirror 'wrong': .*/dists/nosuch/Release answered HTTP 404$"):
        local.sync_mirror(wrong)


def test_local_profile_checks_the_signature_and_apt_does_too(
    upstream: Upstream, keys: tuple[SigningKey, SigningKey], tmp_path: Path
) -> None:
    right, stranger = keys
    signed = mirror_of(upstream, "signedtp", right.public)
    local = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:1", [signed])
    line = f"deb [signed-by={right.public}] {upstream.url}/ {SUITE} {COMPONENT}"
    assert [s.line() for s in local.mirror_sources()] == [line]
    assert local.sync_mirror(signed).packages == len(upstream.debs)
    assert _apt(tmp_path / "apt", line).download("tp-alpha").is_file()  # apt checked it with that key

    inrelease = f"{upstream.url}/dists/{SUITE}/InRelease"
    with pytest.raises(PermanentError) as caught:
        local.sync_mirror(mirror_of(upstream, "signedtp", stranger.public))
    message = str(caught.value)
    assert message.startswith(
        f"mirror 'signedtp': {inrelease} is not signed by the key in {stranger.public}: "
    )
    assert "\n" not in message
    upstream.tamper()
    try:
        with pytest.raises(PermanentError, match=r"is not signed by the key in .*: BAD signature from"):
            local.sync_mirror(signed)
        with pytest.raises(AptError, match=r"BADSIG|not signed|invalid"):  # apt refuses it as well
            _apt(tmp_path / "apt-tampered", line)
        (upstream.root / "dists" / SUITE / "InRelease").unlink()  # Release + Release.gpg instead
        with pytest.raises(PermanentError, match=rf"^mirror 'signedtp': .*/{SUITE}/Release is not signed by"):
            local.sync_mirror(signed)
    finally:
        upstream._index()


class _RecordingRunner(HostRunner):
    """The host runner, remembering the apt sources each step was given."""

    def __init__(self) -> None:
        self.sources: list[list[str]] = []

    def run(self, job: StepJob) -> StepResult:
        self.sources.append([s.line() for s in job.extra_sources])
        return super().run(job)


def test_steps_get_the_mirror_after_the_staging_source(
    pulp_server: PulpServer, upstream: Upstream, repo: PulpRepository, tmp_path: Path
) -> None:
    repo.sync_mirror(mirror_of(upstream))
    mirror_line = repo.mirror_sources()[0].line()
    settings = {
        **pulp_server.settings(),
        "mirrors": [mirror_of(upstream).model_dump()],
    }
    ctx: FarmContext = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", **settings)
    ctx.repo = make_repository(ctx.settings)
    runner = _RecordingRunner()
    ctx.runner = runner  # cached_property: this test's runner instead
    src = tmp_path / "src"
    make_package(src, "mirror-lib")
    make_package(src, "mirror-app", build_depends=("mirror-lib",))
    manifest = write_manifest(src, ["mirror-lib", "mirror-app"], project="mirrors-proj")
    try:
        submit_build(ctx, load_manifest(manifest), src, "alice")
        drain(ctx)
    finally:
        ctx.db.dispose()
    assert len(runner.sources) == 2
    assert runner.sources[0] == [mirror_line]  # first step: nothing staged yet, the mirror only
    staging, mirror = runner.sources[1]  # second: the build's staging first, then the mirror
    assert "/staging/" in staging and mirror == mirror_line


def test_cli_syncs_through_the_api(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
    pulp_server: PulpServer,
    upstream: Upstream,
) -> None:
    env = {
        "BUILDFARM_REPOSITORY": "pulp",
        "BUILDFARM_PULP_URL": pulp_server.base_url,
        "BUILDFARM_PULP_PASSWORD": pulp_server.password,
        "BUILDFARM_PULP_CONTENT_ORIGIN": pulp_server.content_origin,
        "BUILDFARM_PULP_TASK_TIMEOUT_SECONDS": "60",
        "BUILDFARM_MIRRORS": json.dumps([mirror_of(upstream, "viaapi").model_dump()]),
        "BUILDFARM_API_PORT": "0",
    }
    with running_api(tmp_path_factory, postgres_url, redis_url, "mirrors_api", env, redis_db=5) as api:
        base = {**os.environ, **api.farm.env, "XDG_CONFIG_HOME": str(api.farm.state_dir / "no-config")}

        def cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*BUILDFARM, "--farm", api.url, *args],
                env=base | {"BUILDFARM_TOKEN": token},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        listed = cli(api.admin, "mirror", "list", "--output", "json")
        assert listed.returncode == 0, listed.stderr
        assert [(m["name"], m["source"]) for m in json.loads(listed.stdout)] == [("viaapi", None)]
        synced = cli(api.admin, "mirror", "sync", "viaapi", "--output", "json")
        assert synced.returncode == 0, synced.stderr
        status = json.loads(synced.stdout)
        origin = pulp_server.content_origin
        line = f"deb [trusted=yes] {origin}/pulp/content/_mirrors/viaapi/ {SUITE} {COMPONENT}"
        assert status["source"] == line and status["packages"] == len(upstream.debs)
        listed = cli(api.admin, "mirror", "list", "--output", "json")
        assert json.loads(listed.stdout)[0]["source"] == line

        unknown = cli(api.admin, "mirror", "sync", "nosuch")
        assert unknown.returncode == 1
        assert unknown.stderr.strip().splitlines() == [
            "error: mirror 'nosuch' is not configured; known mirrors: viaapi"
        ]
        viewer = api.user("mviewer", "mirrorsproj", "viewer")
        refused = cli(viewer, "mirror", "sync", "viaapi")
        assert refused.returncode == 1 and "not an admin" in refused.stderr
