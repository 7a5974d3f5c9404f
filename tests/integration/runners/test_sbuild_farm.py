"""Clean builds for real: sbuild in unshare mode in the cached build environment, through the farm.

greet-cli compiles and links against libgreet, whose -dev package sbuild installs with apt from
the build's own staging repository served by the farm; greet-docs runs greet-cli during its
build. Without the farm's repository the same dependency is unmet and the build fails.
A Debian package the environment lacks comes through the farm's apt-cacher-ng, fetched from
outside once for all steps, and no step downloads the Debian indexes; two packages with the same
Build-Depends share one dependency layer: the second starts with them installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildfarm.environments import EnvironmentCache, cache_for, cross_spec, spec_for
from buildfarm.model.settings import load_settings

from localfarmkit import Farm

EXAMPLES = Path(__file__).parents[3] / "examples"
pytestmark = pytest.mark.sbuild
# A deadline, not a speed claim: each sbuild step installs its build dependencies (minutes on a
# loaded 2-core machine), and a build waits for its steps one after the other.
SBUILD_DEADLINE = 1800


@pytest.fixture(scope="module")
def sbuild_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("unused"), runner="sbuild")
    environments = cache_for(settings)
    environments.ensure(spec_for(settings))  # made once per machine, before the farm's start
    # The machine's environments, this farm's own dependency layers (a layer another run made
    # would turn the first build's miss into a hit).
    cache_dir = tmp_path_factory.mktemp("sbuild-cache")
    (cache_dir / "environments").symlink_to(environments.root)
    farm = Farm(tmp_path_factory.mktemp("sbuild-farm") / "state")
    farm.env |= {"BUILDFARM_CACHE_DIR": str(cache_dir), "BUILDFARM_ENV_LAYER_MIN_PACKAGES": "1"}
    farm.cli("start", "--runner", "sbuild", "--nodes", "2", timeout=SBUILD_DEADLINE)
    yield farm
    farm.cli("stop", check=False)


def _copy_examples(root: Path, names: list[str], branch: str) -> Path:
    for name in names:
        shutil.copytree(EXAMPLES / name, root / name)
    manifest = root / "buildfarm.yaml"
    packages = "".join(f"  - path: {n}\n" for n in names)
    manifest.write_text(f"project: sb\nbranch: {branch}\nkind: nightly\npackages:\n{packages}")
    return manifest


def _remote(farm: Farm) -> Farm:
    """The same farm seen through its REST API, as a remote user's CLI sees it."""
    token = json.loads(farm.cli("--output", "json", "admin", "init").stdout)["token"]
    farm.cli("admin", "project", "add", "sb")
    remote = Farm(farm.state_dir)
    api_port = json.loads((farm.state_dir / "farm.json").read_text())["api_port"]
    remote.env |= {"BUILDFARM_URL": f"http://127.0.0.1:{api_port}", "BUILDFARM_TOKEN": token}
    return remote


def _built(farm: Farm, manifest: Path) -> dict[str, Any]:
    wait = ["build", "submit", str(manifest), "--wait", "--timeout", str(SBUILD_DEADLINE)]
    view: dict[str, Any] = farm.json(*wait, timeout=SBUILD_DEADLINE + 60)
    return view


def test_tool_links_against_library_from_the_farms_repository(sbuild_farm: Farm, tmp_path: Path) -> None:
    """Submitted from a local directory through the REST API, as a remote user would."""
    manifest = _copy_examples(tmp_path, ["libgreet", "greet-cli", "greet-docs"], "main")
    view = _remote(sbuild_farm).json(
        "build",
        "submit",
        str(manifest),
        "--wait",
        "--timeout",
        str(SBUILD_DEADLINE),
        timeout=SBUILD_DEADLINE + 60,
    )
    assert view["user"] == "admin"  # recorded as the token's user: it went through the API
    assert view["state"] == "succeeded", view
    steps = {s["name"]: s for s in view["steps"]}
    # libgreet needs nothing beyond the environment, greet-cli only the farm's own libgreet-dev:
    # both ran without the archive's apt lists; libgreet without any resolver (no dummy package,
    # no apt run), greet-cli with sbuild's apt resolver
    lib_log = Path(steps["libgreet"]["log"]).read_text()
    assert "has every Build-Depends); environment" in lib_log
    assert "Null resolver: not installing main dependencies" in lib_log
    assert "sbuild-build-depends-main-dummy" not in lib_log
    assert steps["libgreet"]["layer"].startswith("none:")  # through the API: the lean layer's key
    cli_log = Path(steps["greet-cli"]["log"]).read_text()
    assert "(only the farm's own packages to install); environment" in cli_log
    assert "sbuild-build-depends-main-dummy" in cli_log
    assert "/sb/main/staging/" in cli_log  # the extra repository sbuild was given
    assert "libgreet-dev" in cli_log
    deb = next(
        o
        for o in steps["greet-cli"]["outputs"]
        if o["filename"].startswith("greet-cli_") and o["filename"].endswith(".deb")
    )
    stored = sbuild_farm.state_dir / "artifacts" / "objects" / "sha256" / deb["sha256"][:2] / deb["sha256"]
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(stored), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    assert "libgreet1" in depends  # dpkg-shlibdeps saw the library it linked against
    docs_log = Path(steps["greet-docs"]["log"]).read_text()
    assert "greet-cli" in docs_log
    verified = sbuild_farm.json("repo", "verify", "sb", "main")
    assert {v["package"] for v in verified} >= {"libgreet1", "libgreet-dev", "greet-cli", "greet-docs"}
    assert all(v["identical"] for v in verified)


AARCH64 = 183
"""ELF e_machine of AArch64 (elf.h EM_AARCH64)."""


def _elf_machine(deb: Path, member: str, into: Path) -> int:
    """e_machine of the ELF file ``member`` of the package ``deb`` (header bytes 18-19, little
    endian for both amd64 and arm64)."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    header = (into / member).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[5] == 1  # an ELF file, little endian
    return int.from_bytes(header[18:20], "little")


def test_cross_build_for_arm64_links_the_tool_against_the_arm64_library(
    sbuild_farm: Farm, tmp_path: Path
) -> None:
    """``architectures: [amd64, arm64]`` on an amd64 farm: the amd64 steps are the ones the
    first test built (same keys: reused when it ran), the arm64 ones are cross-built with
    sbuild --host in the cross environment (made through the farm's package cache), and apt
    configured for arm64 downloads every arm64 package from the published branch."""
    record = json.loads((sbuild_farm.state_dir / "farm.json").read_text())
    settings = load_settings(state_dir=tmp_path / "unused", runner="sbuild")
    EnvironmentCache(settings.buildenv.cache_dir / "environments", proxy=record.get("apt_proxy")).ensure(
        cross_spec(spec_for(settings), "arm64")
    )  # downloads the cross toolchain once per machine
    manifest = _copy_examples(tmp_path, ["libgreet", "greet-cli"], "multiarch")
    manifest.write_text(manifest.read_text() + "architectures: [amd64, arm64]\n")
    view = _built(sbuild_farm, manifest)
    assert view["state"] == "succeeded", view
    steps = {s["name"]: s for s in view["steps"]}
    assert {n: s["host_arch"] for n, s in steps.items()} == {
        "libgreet": "amd64",
        "libgreet:arm64": "arm64",
        "greet-cli": "amd64",
        "greet-cli:arm64": "arm64",
    }
    assert steps["greet-cli:arm64"]["depends_on"] == ["libgreet:arm64"]
    cli_log = Path(steps["greet-cli:arm64"]["log"]).read_text()
    assert "--host=arm64" in cli_log or "Host Architecture: arm64" in cli_log
    assert "/sb/multiarch/staging/" in cli_log
    assert re.search(r"Unpacking libgreet-dev:arm64 \(1\.0\)", cli_log)  # the library's arm64 package
    built = {o["filename"] for s in steps.values() for o in s["outputs"]}
    assert {"greet-cli_1.0_arm64.deb", "libgreet1_1.0_arm64.deb"} <= built  # cross-built by this build
    # The amd64 steps may be reused from the first test (same keys): their packages are the
    # published ones, found by what `repo verify` fetched.
    verified = sbuild_farm.json("repo", "verify", "sb", "multiarch")
    published = {v["filename"]: v["sha256"] for v in verified}
    assert {"greet-cli_1.0_arm64.deb", "libgreet1_1.0_arm64.deb", "greet-cli_1.0_amd64.deb"} <= set(published)
    objects = sbuild_farm.state_dir / "artifacts" / "objects" / "sha256"
    stored = {name: objects / sha256[:2] / sha256 for name, sha256 in published.items()}
    tool = stored["greet-cli_1.0_arm64.deb"]
    assert _elf_machine(tool, "usr/bin/greet-cli", tmp_path / "cli-arm64") == AARCH64
    assert _elf_machine(stored["greet-cli_1.0_amd64.deb"], "usr/bin/greet-cli", tmp_path / "cli-amd64") == 62
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(tool), "Depends"], capture_output=True, text=True, check=True
    )
    assert "libgreet1" in depends.stdout  # dpkg-shlibdeps found the arm64 library it linked against
    release = (sbuild_farm.state_dir / "repos" / "sb" / "multiarch" / "latest" / "Release").read_text()
    assert "Architectures: amd64 arm64\n" in release
    assert all(v["identical"] for v in verified), verified  # apt for arm64 got the very bytes built


def test_missing_in_build_dependency_fails(sbuild_farm: Farm, tmp_path: Path) -> None:
    manifest = _copy_examples(tmp_path, ["greet-docs"], "lonely")
    result = sbuild_farm.cli(
        "--output",
        "json",
        "build",
        "submit",
        str(manifest),
        "--wait",
        "--timeout",
        str(SBUILD_DEADLINE),
        check=False,
        timeout=SBUILD_DEADLINE + 60,
    )
    assert result.returncode == 1
    view = json.loads(result.stdout)
    assert view["state"] == "failed"
    step = view["steps"][0]
    assert "sbuild exited with status" in step["error"]
    log = Path(step["log"]).read_text()
    assert "greet-cli" in log and ("unmet" in log.lower() or "not installable" in log.lower())


def _needing_zlib(root: Path, name: str) -> None:
    """hello-standalone renamed ``name``, with a Build-Depends the environment does not carry."""
    tree = root / name
    shutil.copytree(EXAMPLES / "hello-standalone", tree)
    for path in (tree / "debian" / "control", tree / "debian" / "changelog"):
        path.write_text(path.read_text().replace("hello-standalone", name))
    control = tree / "debian" / "control"
    control.write_text(
        control.read_text().replace("debhelper-compat (= 13)", "debhelper-compat (= 13), zlib1g-dev")
    )


def test_same_build_depends_share_a_layer_fetched_through_the_farms_cache_once(
    sbuild_farm: Farm, tmp_path: Path
) -> None:
    for name in ("zneed-one", "zneed-two"):
        _needing_zlib(tmp_path, name)
    manifest = tmp_path / "buildfarm.yaml"
    manifest.write_text(
        "project: sb\nbranch: cache\nkind: nightly\npackages:\n  - path: zneed-one\n  - path: zneed-two\n"
        "    depends: [zneed-one]\n"  # one after the other: the second finds the .deb cached
    )
    view = _built(sbuild_farm, manifest)
    assert view["state"] == "succeeded", view
    record = json.loads((sbuild_farm.state_dir / "farm.json").read_text())
    assert record["apt_cache_private"] and record["apt_proxy"].startswith("http://127.0.0.1:")
    logs = {step["name"]: Path(step["log"]).read_text() for step in view["steps"]}
    for log in logs.values():
        assert record["apt_proxy"] in log  # apt in the chroot was pointed at the cache
        assert "zlib1g-dev" in log
        assert not re.search(r"Get:.*deb\.debian\.org.*(InRelease|Packages)", log)  # no index download
    first = re.search(r"dependency layer (\w+): miss \(made now\), 1 archive packages", logs["zneed-one"])
    second = re.search(r"dependency layer (\w+): hit, 1 archive packages", logs["zneed-two"])
    assert first and second and first[1] == second[1], (logs["zneed-one"][-3000:], logs["zneed-two"][-3000:])
    layers = {step["name"]: step["layer"] for step in view["steps"]}  # on the steps' records too
    assert layers == {"zneed-one": f"miss:{first[1]}", "zneed-two": f"hit:{first[1]}"}
    assert "Unpacking zlib1g-dev" not in logs["zneed-two"]  # it was in the layer already
    for log in logs.values():  # the layer holds every Build-Depends: sbuild installs nothing
        assert "Null resolver: not installing main dependencies" in log
        assert "sbuild-build-depends-main-dummy" not in log
    cache_log = (sbuild_farm.state_dir / "apt-cache" / "log" / "apt-cacher.log").read_text().splitlines()
    fetched = [line for line in cache_log if "/zlib1g-dev_" in line]
    from_outside = [line for line in fetched if line.split("|")[1] == "I"]
    to_steps = [line for line in fetched if line.split("|")[1] == "O"]
    assert len(from_outside) == 1 and len(to_steps) == 1, fetched  # once, for the layer


def test_comment_change_in_the_library_rebuilds_it_and_nothing_below(
    sbuild_farm: Farm, tmp_path: Path
) -> None:
    """Issue 16 part 4: libgreet rebuilt from a comment change builds identical packages (sbuild's
    build directory and the build date differ), so greet-cli and greet-docs are reused; a new
    symbol in libgreet gives other packages, and everything below it is built again."""
    manifest = _copy_examples(tmp_path, ["libgreet", "greet-cli", "greet-docs"], "identity")
    first = _built(sbuild_farm, manifest)
    assert first["state"] == "succeeded", first
    source = tmp_path / "libgreet" / "greet.c"
    source.write_text(source.read_text().replace('return "1.0";', 'return "1.0"; /* the ABI version */'))
    second = _built(sbuild_farm, manifest)
    steps = {s["name"]: s for s in second["steps"]}
    assert {n: s["state"] for n, s in steps.items()} == {
        "libgreet": "succeeded",  # its source changed: built again, into the same packages
        "greet-cli": "reused",
        "greet-docs": "reused",
    }, second
    unchanged = "outputs of libgreet unchanged (identical to build "
    assert steps["greet-cli"]["reuse_reason"].startswith(unchanged)
    assert steps["greet-docs"]["reuse_reason"].startswith("outputs of greet-cli, libgreet unchanged")
    shown = sbuild_farm.cli("build", "show", str(second["id"])).stdout
    assert f"greet-cli: reused: {unchanged}" in shown

    (tmp_path / "libgreet" / "greet.h").write_text(
        (tmp_path / "libgreet" / "greet.h")
        .read_text()
        .replace(
            "const char *greet_version(void);", "const char *greet_version(void);\nint greet_level(void);"
        )
    )
    source.write_text(source.read_text() + "\nint greet_level(void)\n{\n    return 2;\n}\n")
    third = _built(sbuild_farm, manifest)
    assert third["state"] == "succeeded", third
    assert {s["name"]: s["state"] for s in third["steps"]} == {
        "libgreet": "succeeded",
        "greet-cli": "succeeded",
        "greet-docs": "succeeded",
    }
