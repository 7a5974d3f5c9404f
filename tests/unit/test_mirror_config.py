"""Mirror configurations: what Pulp and apt can carry is accepted, the rest is one clear error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from buildfarm.backends.pulp.mirrors import mirror_base_path
from buildfarm.model.errors import NameError_, NotFoundError
from buildfarm.model.mirrors import MirrorConfigError, check_mirror, check_mirrors, find_mirror
from buildfarm.model.settings import MirrorConfig, load_settings


def mirror(**fields: Any) -> MirrorConfig:
    values: dict[str, Any] = {
        "name": "docker",
        "url": "https://download.docker.com/linux/debian",
        "distribution": "bookworm",
        "components": ["stable"],
        "architectures": ["amd64", "arm64"],
    }
    return MirrorConfig(**(values | fields))


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"distribution": "bookworm-updates"},
        {"distribution": "stable/updates", "components": ["main", "contrib", "non-free-firmware"]},
        {"url": "http://127.0.0.1:8080/debian/", "name": "r_stx.9.0"},
        {"architectures": ["kfreebsd-amd64"]},
    ],
)
def test_accepted(fields: dict[str, Any]) -> None:
    assert check_mirror(mirror(**fields)) == mirror(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "ftp://mirror/debian"}, "url 'ftp://mirror/debian' is not an http:// or https:// URL"),
        ({"url": "https:///debian"}, "is not an http:// or https:// URL with a host"),
        ({"url": "http://mirror/deb ian"}, "contains a blank or a control character"),
        ({"url": "http://user:pw@mirror/debian"}, "has a query, a fragment or credentials"),
        ({"distribution": "./"}, "is a flat repository, which cannot be mirrored"),
        ({"distribution": "bookworm main"}, "distribution 'bookworm main' is not a valid Debian"),
        ({"distribution": "../etc"}, "is not a valid Debian distribution name"),
        ({"distribution": "a//b"}, "is not a valid Debian distribution name"),
        ({"components": []}, "components [] is empty"),
        ({"components": ["main", "main"]}, "lists the same value twice"),
        ({"components": ["-o"]}, "component '-o' is not a valid Debian component name"),
        ({"architectures": []}, "architectures [] is empty"),
        ({"architectures": ["AMD64"]}, "architecture 'AMD64' is not a valid Debian architecture name"),
    ],
)
def test_refused_with_one_line_naming_the_mirror(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(MirrorConfigError) as caught:
        check_mirror(mirror(**fields))
    assert str(caught.value).startswith("mirror 'docker': ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["", "a/b", "..", "x.lock", "sp ace", "nul\0"])
def test_names_follow_the_farm_rules(name: str) -> None:
    with pytest.raises(NameError_, match="invalid mirror name"):
        check_mirror(mirror(name=name))


def test_names_map_to_distinct_base_paths() -> None:
    assert mirror_base_path("r_x") == "_mirrors/r_5fx"
    assert mirror_base_path("docker") == "_mirrors/docker"


def test_two_mirrors_of_one_name_are_refused() -> None:
    with pytest.raises(MirrorConfigError, match=r"^two mirrors are named 'docker'$"):
        check_mirrors([mirror(), mirror(url="http://other/debian")])


def test_find_names_the_known_mirrors() -> None:
    assert find_mirror([mirror()], "docker") == mirror()
    with pytest.raises(NotFoundError, match=r"^mirror 'nosuch' is not configured; known mirrors: docker$"):
        find_mirror([mirror()], "nosuch")
    with pytest.raises(NotFoundError, match=r"none is configured \(setting mirrors\)$"):
        find_mirror([], "nosuch")


def test_mirrors_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDFARM_MIRRORS", json.dumps([mirror().model_dump()]))
    monkeypatch.setenv("BUILDFARM_STATE_DIR", "/nonexistent-state-dir")
    assert load_settings().mirrors == [mirror()]
