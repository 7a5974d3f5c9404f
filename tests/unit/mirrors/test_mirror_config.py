"""Mirror configurations: what Pulp and apt can carry is accepted, the rest is one clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from buildfarm.backends.base import AptSource
from buildfarm.backends.pulp.mirrors import mirror_base_path
from buildfarm.model.errors import NameError_, NotFoundError, PermanentError
from buildfarm.model.mirrors import (
    MAX_KEY_BYTES,
    MirrorConfigError,
    check_mirror,
    check_mirrors,
    find_mirror,
    signing_key,
)
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
    assert load_settings().mirrors.repositories == [mirror()]


KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


def test_a_signing_key_file_is_read(tmp_path: Path) -> None:
    key = tmp_path / "docker.asc"
    key.write_text(KEY)
    assert check_mirror(mirror(signed_by=str(key))).signed_by == str(key)
    assert signing_key(mirror(signed_by=str(key))) == KEY
    assert signing_key(mirror()) is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("key.asc", None, "cannot be read: No such file or directory"),
        ("key.gpg", KEY, "is not an ASCII-armored key file ending in .asc"),
        ("key.asc", "not a key", "holds no ASCII-armored public key"),
        ("key.asc", "-----BEGIN PGP PRIVATE KEY BLOCK-----\n", "holds a private key"),
        ("key.asc", "x" * (MAX_KEY_BYTES + 1), "is larger than 1 MiB"),
        ("my key.asc", KEY, "contains a blank, ']' or a control character"),
    ],
)
def test_a_bad_signing_key_is_one_line_naming_the_mirror(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    key = tmp_path / name
    if content is not None:
        key.write_text(content)
    with pytest.raises(MirrorConfigError) as caught:
        check_mirror(mirror(signed_by=str(key)))
    assert str(caught.value).startswith(f"mirror 'docker': signed_by '{key}' ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_relative_key_path_is_refused() -> None:
    with pytest.raises(
        MirrorConfigError, match=r"^mirror 'docker': signed_by 'keys/d.asc' is not an absolute path$"
    ):
        check_mirror(mirror(signed_by="keys/d.asc"))


@pytest.mark.parametrize("retain", [0, 1, 101])
def test_mirror_retain_versions_is_bounded(monkeypatch: pytest.MonkeyPatch, retain: int) -> None:
    monkeypatch.setenv("BUILDFARM_MIRROR_RETAIN_VERSIONS", str(retain))
    monkeypatch.setenv("BUILDFARM_STATE_DIR", "/nonexistent-state-dir")
    with pytest.raises(PermanentError, match=r"^setting mirror_retain_versions: Input should be"):
        load_settings()


def test_apt_lines_of_signed_and_unsigned_sources() -> None:
    source = AptSource(url="http://u/", suite="s", components=("main",), trusted=False, signed_by="/k.asc")
    assert source.line() == "deb [signed-by=/k.asc] http://u/ s main"
    assert (
        AptSource(url="http://u/", suite="s", components=("main",)).line()
        == "deb [trusted=yes] http://u/ s main"
    )
