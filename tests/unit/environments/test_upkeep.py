"""Refresh then prune: what no kept build names goes, with the layers of environments gone."""

from __future__ import annotations

from pathlib import Path

import pytest
from envkit import LayerMaker, TarMaker

from buildfarm.backends.aptproxy import ProxyPackageCache
from buildfarm.environments import (
    DependencySet,
    EnvironmentCache,
    EnvironmentSpec,
    cache_for,
    layers_for,
    spec_for,
)
from buildfarm.environments.upkeep import prune_environments, refresh_environment
from buildfarm.model.settings import Settings, load_settings
from buildfarm.state.db import Database, upgrade
from buildfarm.state.models import Build


def _settings(tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", runner="sbuild")


def _record_build(settings: Settings, environment_digest: str) -> None:
    """A build the retention sweep has not expired: its row names the environment."""
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        with db.session() as session:
            session.add(
                Build(
                    project="p",
                    branch="main",
                    kind="nightly",
                    user="alice",
                    manifest={},
                    environment_id=f"sbuild:bookworm:{environment_digest}",
                )
            )
    finally:
        db.dispose()


def test_prune_keeps_what_kept_builds_name_and_drops_layers_of_pruned_environments(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.state_dir.mkdir(parents=True)
    maker = TarMaker()
    cache = EnvironmentCache(cache_for(settings).root, maker=maker)
    spec = spec_for(settings)
    named = cache.ensure(spec)
    maker.extra = " moved"
    unnamed = cache.refresh(spec)
    maker.extra = " moved again"
    current = cache.refresh(spec)
    _record_build(settings, named.digest)
    layers = layers_for(settings)
    assert layers is not None
    for env in (named, unnamed, current):
        layers.cache.ensure(DependencySet(env.digest, ("libfoo-dev:amd64=1",)), LayerMaker())

    assert prune_environments(settings).bytes_freed == 0  # all made just now: another farm's may be young
    report = prune_environments(settings, min_age_seconds=0)
    assert [e.digest for e in report.environments] == [unnamed.digest]
    assert [layer.deps.environment for layer in report.layers] == [unnamed.digest]
    assert {e.digest for e in cache.entries()} == {named.digest, current.digest}
    assert {layer.deps.environment for layer in layers.cache.entries()} == {named.digest, current.digest}
    assert "1 environment(s) and 1 dependency layer(s)" in report.describe()


def test_refresh_tells_new_from_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    maker = TarMaker()
    cache = EnvironmentCache(cache_for(settings).root, maker=maker)
    from buildfarm.environments import upkeep

    routed: list[bool] = []

    def route(
        settings: Settings, packages: object, *, refresh: bool
    ) -> tuple[EnvironmentCache, EnvironmentSpec]:
        routed.append(refresh)  # a refresh brings the package cache's indexes up to date first
        return cache, spec_for(settings)

    monkeypatch.setattr(upkeep, "routed_environments", route)
    packages = ProxyPackageCache(None)
    first, new = refresh_environment(settings, packages)
    again, new_again = refresh_environment(settings, packages)
    maker.extra = " security update"
    moved, moved_new = refresh_environment(settings, packages)
    assert routed == [True, True, True]
    assert (new, new_again, moved_new) == (True, False, True)
    assert again.digest == first.digest != moved.digest and maker.calls == 3
