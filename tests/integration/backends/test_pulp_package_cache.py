"""The farm-side package cache on the session's real Pulp: an upstream's .deb is fetched from
outside once, however many clients ask Pulp's content app for it.

The upstream is a small signed APT repository with real .debs served on 127.0.0.1 by a thread
that counts the requests of each path (mirrorkit).  ``buildfarm.wiring`` picks the Pulp package
cache for a farm whose repository backend is Pulp; its route makes the upstream a pulp_deb remote
(policy ``on_demand``), syncs only the indexes, and serves a distribution from the content app.
With ``on_demand`` the sync downloads no .deb and two downloads through Pulp cost the upstream
one; the same test with ``immediate`` (every .deb at sync) or ``streamed`` (every request goes
upstream) sees the counts the farm must not have.
"""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from debian.deb822 import Packages
from pulp_glue.core.context import PulpContentRedirectContentGuardContext

from buildfarm.backends.base import DebianUpstream
from buildfarm.backends.pulp.client import PulpClient
from buildfarm.backends.pulp.packagecache import PulpPackageCache, cache_name
from buildfarm.environments import routed_environments
from buildfarm.environments.mmdebstrap import UNSAFE_IO_HOOK, mirror_key_file, mmdebstrap_command
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import ServiceUnavailableError
from buildfarm.model.settings import DEFAULT_SIGNING_KEYRING, load_settings
from buildfarm.wiring import make_package_cache

from debpkgs import build_deb
from mirrorkit import ARCH, COMPONENT, SUITE, Upstream, served_upstream, signing_keys
from pulpkit import PulpServer, pulp_server

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests

HTTP_TIMEOUT = 30.0


def _upstream(root: Path, salt: str) -> Iterator[Upstream]:
    with (
        signing_keys("cache upstream <cache@example.invalid>") as (key,),
        served_upstream(root / "repo", key, prefix="debian") as repo,
    ):
        for name, arch in (("pc-alpha", "all"), ("pc-beta", ARCH)):
            repo.add(build_deb(root, name, f"1.0+{salt}", architecture=arch))
        yield repo


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """Two packages no other test gave Pulp (a version of their own: Pulp dedups by content)."""
    yield from _upstream(tmp_path, str(time.time_ns()))


def _deb_requests(upstream: Upstream) -> dict[str, int]:
    return {path: n for path, n in upstream.requests.items() if path.endswith(".deb")}


def _pool_path(served: str, package: str) -> str:
    """The package's ``Filename`` in the distribution's own Packages index."""
    index = httpx.get(f"{served}dists/{SUITE}/{COMPONENT}/binary-{ARCH}/Packages", timeout=HTTP_TIMEOUT)
    index.raise_for_status()
    for record in Packages.iter_paragraphs(index.text, use_apt_pkg=False):
        if record["Package"] == package:
            return str(record["Filename"])
    raise AssertionError(f"{package} is not in the cache's Packages index:\n{index.text}")


def _fetch_twice(pulp: PulpServer, cache: PulpPackageCache, upstream: Upstream) -> tuple[str, int]:
    """Route the upstream through ``cache``, check no .deb moved yet, download pc-beta through
    Pulp twice (bytes as upstream's); returns its upstream path and the .debs fetched at sync."""
    route = cache.route(DebianUpstream(upstream.url, SUITE, ARCH))
    options, served = route.mirror.split()
    assert options == "[trusted=yes]" and served.startswith(f"{pulp.content_origin}/pulp/content/_cache/")
    assert route.proxy is None
    at_sync = sum(_deb_requests(upstream).values())
    deb = next(d for d in upstream.debs.values() if d.filename.startswith("pc-beta_"))
    filename = _pool_path(served, "pc-beta")
    for _ in range(2):
        got = httpx.get(served + filename, timeout=HTTP_TIMEOUT)
        assert got.status_code == 200, got.text
        assert hashlib.sha256(got.content).hexdigest() == deb.sha256
    return f"/debian/pool/{COMPONENT}/{deb.filename}", at_sync


def test_wiring_picks_pulp_and_each_deb_comes_from_upstream_once(
    pulp_server: PulpServer, upstream: Upstream, tmp_path: Path
) -> None:
    settings = load_settings(**pulp_server.settings(), state_dir=str(tmp_path))
    cache = make_package_cache(settings)
    assert isinstance(cache, PulpPackageCache)  # production; the local profile keeps its proxy
    path, at_sync = _fetch_twice(pulp_server, cache, upstream)
    assert at_sync == 0  # the sync read the indexes only
    # The content app keeps what it streamed before it ends the first answer: the second came from Pulp.
    assert upstream.requests[path] == 1
    # The farm's environments are made from the distribution, with no proxy; routing them (another
    # node, another step) finds the distribution: no sync, no download.
    before = dict(upstream.requests)
    settings = load_settings(
        **pulp_server.settings(), state_dir=str(tmp_path), mirror=upstream.url, distribution=SUITE
    )
    environments, spec = routed_environments(settings, make_package_cache(settings))
    assert spec.mirror.startswith(f"[trusted=yes] {pulp_server.content_origin}/pulp/content/_cache/")
    assert environments.proxy is None
    assert upstream.requests == before


@pytest.mark.parametrize("policy", ["immediate", "streamed"])
def test_without_on_demand_upstream_sees_more(
    pulp_server: PulpServer, upstream: Upstream, policy: str
) -> None:
    """What the farm's policy buys: ``immediate`` fetches every .deb at sync (those no build
    asks for too), ``streamed`` goes upstream for every request."""
    client = PulpClient(
        pulp_server.base_url, pulp_server.username, pulp_server.password, task_timeout_seconds=60
    )
    cache = PulpPackageCache(client, pulp_server.content_origin, policy=policy)  # type: ignore[arg-type]
    path, at_sync = _fetch_twice(pulp_server, cache, upstream)
    if policy == "immediate":
        assert at_sync == len(upstream.debs) and upstream.requests[path] == 1
    else:
        assert at_sync == 0 and upstream.requests[path] == 2


def test_a_sync_under_way_elsewhere_is_temporary(pulp_server: PulpServer, upstream: Upstream) -> None:
    """Another node holds the upstream's sync lease: routing is tried again later, not a failure."""
    settings = load_settings(**pulp_server.settings(), state_dir="/nonexistent")
    cache = make_package_cache(settings)
    assert isinstance(cache, PulpPackageCache)
    target = DebianUpstream(upstream.url, SUITE, ARCH)
    lease = PulpContentRedirectContentGuardContext(cache.client.ctx).create(
        body={"name": f"buildfarm/_cache/{cache_name(target)}/syncing"}
    )
    try:
        with pytest.raises(ServiceUnavailableError, match="is being synced by another node"):
            cache.route(target)
    finally:
        PulpContentRedirectContentGuardContext(cache.client.ctx, pulp_href=lease["pulp_href"]).delete()
    assert _deb_requests(upstream) == {}


def test_signed_cache_is_published_signed_and_environments_name_its_key(
    pulp_server: PulpServer, upstream: Upstream, tmp_path: Path
) -> None:
    """With the farm's signing service the cache's publication is signed as the branch
    repositories' are (one published unsigned before is published again, signed): apt checks it
    with the farm's key, and an environment made from it holds that key at the signed-by path."""
    plain = load_settings(
        **pulp_server.settings(), state_dir=str(tmp_path), mirror=upstream.url, distribution=SUITE
    )
    unsigned = make_package_cache(plain).route(DebianUpstream(upstream.url, SUITE, ARCH))
    assert unsigned.mirror.startswith("[trusted=yes] ") and unsigned.key is None

    settings = load_settings(
        **pulp_server.settings(signed=True), state_dir=str(tmp_path), mirror=upstream.url, distribution=SUITE
    )
    environments, spec = routed_environments(settings, make_package_cache(settings), include=("pc-alpha",))
    options, served = spec.mirror.split()
    assert options == f"[signed-by={DEFAULT_SIGNING_KEYRING}]" and served == unsigned.mirror.split()[1]
    branches = pulp_server.repository(signing_service=pulp_server.signing_service).signing_key()
    assert branches is not None and spec.mirror_key == branches.public_key  # the branches' key

    # apt checks the cache's Release with the farm's key: the line says signed-by, not trusted=yes
    apt = AptClient(tmp_path / "apt", f"deb {spec.mirror} {SUITE} {COMPONENT}", public_key=spec.mirror_key)
    apt.update()
    assert apt.download("pc-alpha").name.startswith("pc-alpha_")
    other = AptClient(
        tmp_path / "apt-other",
        f"deb {spec.mirror} {SUITE} {COMPONENT}",
        public_key=upstream.key.public.read_text(),
    )
    with pytest.raises(AptError):
        other.update()  # another key: refused

    # the environment, made by the farm's own mmdebstrap call: the extract variant (the tiny
    # upstream has no Debian base system to install), which runs no customize hooks, so the key's
    # hook runs as an extract hook (dpkg's, for a dpkg it does not install, is left out)
    dest = tmp_path / "env.tar"
    with mirror_key_file(spec) as key_file:
        command = [
            "--variant=extract"
            if arg == "--variant=buildd"
            else arg.replace("--customize-hook=", "--extract-hook=")
            for arg in mmdebstrap_command(spec, dest, key_file=key_file)
            if arg != f"--customize-hook={UNSAFE_IO_HOOK}"
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with tarfile.open(dest) as tar:
        sources = _member(tar, "./etc/apt/sources.list")
        held = _member(tar, f".{DEFAULT_SIGNING_KEYRING}")
        assert "pc-alpha" in _member(tar, "./usr/share/pc-alpha/payload")
    assert sources.strip() == f"deb [signed-by={DEFAULT_SIGNING_KEYRING}] {served} {SUITE} main"
    assert held == spec.mirror_key and str(tmp_path) not in sources
    assert environments.proxy is None


def _member(tar: tarfile.TarFile, name: str) -> str:
    handle = tar.extractfile(name)
    assert handle is not None, name
    return handle.read().decode()
