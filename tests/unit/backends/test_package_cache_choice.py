"""Which package cache :mod:`buildfarm.wiring` picks, and how each routes the environments.

The Pulp one itself runs against the session's real Pulp (tests/integration/backends/
test_pulp_package_cache.py); here only the choice and the proxy's routing, which need no server.
"""

from __future__ import annotations

from pathlib import Path

from buildfarm.backends.aptproxy import ProxyPackageCache
from buildfarm.backends.base import CacheRoute, DebianUpstream
from buildfarm.backends.pulp.packagecache import PulpPackageCache, cache_name
from buildfarm.environments import routed_environments
from buildfarm.model.settings import load_settings
from buildfarm.wiring import make_package_cache

PULP = {
    "repository": "pulp",
    "pulp_url": "http://127.0.0.1:1",
    "pulp_password": "unused",
    "pulp_content_origin": "http://127.0.0.1:2",
}


def test_pulp_backend_picks_the_pulp_cache_unless_told_proxy(tmp_path: Path) -> None:
    assert isinstance(make_package_cache(load_settings(state_dir=tmp_path, **PULP)), PulpPackageCache)
    told = load_settings(state_dir=tmp_path, package_cache="proxy", apt_proxy="http://127.0.0.1:3142", **PULP)
    chosen = make_package_cache(told)
    assert isinstance(chosen, ProxyPackageCache) and chosen.proxy == "http://127.0.0.1:3142"
    assert isinstance(make_package_cache(load_settings(state_dir=tmp_path)), ProxyPackageCache)


def test_proxy_keeps_the_mirror_and_hands_makers_the_proxy(tmp_path: Path) -> None:
    settings = load_settings(
        state_dir=tmp_path,
        cache_dir=tmp_path,
        mirror="http://deb.example.org/debian",
        apt_proxy="http://p:3142",
    )
    cache, spec = routed_environments(settings, make_package_cache(settings))
    assert (spec.mirror, cache.proxy) == ("http://deb.example.org/debian", "http://p:3142")
    upstream = DebianUpstream("http://deb.example.org/debian", "bookworm", "amd64")
    assert ProxyPackageCache(None).refresh(upstream) == CacheRoute("http://deb.example.org/debian", None)


def test_cache_names_tell_two_urls_of_one_suite_apart() -> None:
    one = cache_name(DebianUpstream("http://a.example/debian", "bookworm", "amd64"))
    other = cache_name(DebianUpstream("http://b.example/debian", "bookworm", "amd64"))
    assert one.startswith("bookworm-amd64-") and one != other
    assert cache_name(DebianUpstream("http://a.example/debian/", "bookworm", "amd64")) == one
