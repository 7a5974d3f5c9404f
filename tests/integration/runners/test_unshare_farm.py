"""A real farm build through the ``unshare`` runner: the farm started with ``--runner unshare``
builds libgreet and greet-cli, greet-cli's libgreet-dev coming from the build's own staging
repository (apt in the chroot reaches it directly, Debian's mirror through the farm's
apt-cacher-ng), and publishes what it built; the trees its overlays stood on go with
``buildfarm stop``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.environments import builder_spec, cache_for, spec_for
from buildfarm.model.settings import load_settings
from buildfarm.runners.base import chroot_root

from localfarmkit import Farm

EXAMPLES = Path(__file__).parents[3] / "examples"
pytestmark = pytest.mark.sbuild
DEADLINE = 1800
"""A deadline, not a speed claim (a loaded 2-core machine)."""


@pytest.fixture(scope="module")
def unshare_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("unused"))
    environments = cache_for(settings)
    environments.ensure(builder_spec(spec_for(settings)))  # made once per machine, before the start
    cache_dir = tmp_path_factory.mktemp("unshare-cache")  # the machine's environments, own layers
    (cache_dir / "environments").symlink_to(environments.root)
    farm = Farm(tmp_path_factory.mktemp("unshare-farm") / "state")
    farm.env |= {"BUILDFARM_CACHE_DIR": str(cache_dir)}
    farm.cli("start", "--runner", "unshare", "--nodes", "1", timeout=DEADLINE)
    yield farm
    farm.cli("stop", check=False)
    assert not _trees(farm).exists()  # ~0.5 GB of tmpfs each: gone with the farm


def _trees(farm: Farm) -> Path:
    settings = load_settings(state_dir=farm.state_dir)
    return chroot_root(settings.buildenv.sbuild_tmpdir, farm.state_dir) / "trees"


def test_farm_builds_through_the_unshare_runner(unshare_farm: Farm, tmp_path: Path) -> None:
    for name in ("libgreet", "greet-cli"):
        shutil.copytree(EXAMPLES / name, tmp_path / name)
    manifest = tmp_path / "buildfarm.yaml"
    manifest.write_text(
        "project: un\nbranch: main\nkind: nightly\npackages:\n  - path: libgreet\n  - path: greet-cli\n"
    )
    wait = ["build", "submit", str(manifest), "--wait", "--timeout", str(DEADLINE)]
    view = unshare_farm.json(*wait, timeout=DEADLINE + 60)
    assert view["state"] == "succeeded", view
    steps = {s["name"]: s for s in view["steps"]}
    lib_log = Path(steps["libgreet"]["log"]).read_text()
    assert "buildfarm-step: the environment has every Build-Depends: no apt run" in lib_log
    assert steps["libgreet"]["layer"].startswith("none:")
    cli_log = Path(steps["greet-cli"]["log"]).read_text()
    assert "/un/main/staging/" in cli_log  # the build's staging repository, given to apt
    assert "Unpacking libgreet-dev" in cli_log
    assert "buildfarm-step: $ (no network) dpkg-buildpackage" in cli_log
    verified = unshare_farm.json("repo", "verify", "un", "main")
    assert {v["package"] for v in verified} >= {"libgreet1", "libgreet-dev", "greet-cli"}
    assert all(v["identical"] for v in verified)
    assert any(p.is_dir() for p in _trees(unshare_farm).iterdir())  # the steps' overlays stood on it
