"""Signed repositories judged by the real apt: only the farm's public key, never ``[trusted=yes]``.

Real gpg signs (the local profile's flat repositories, and Pulp's AptReleaseSigningService that
ops/pulp/pulpstack.py registers); real ``apt-get update`` with a private configuration verifies
with ``[signed-by=<the public key>]`` and must refuse a tampered Release or another key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import AptSource, BuildRef, PackageFile, require_signing_key
from buildfarm.backends.pulp import PulpRepository
from buildfarm.backends.signing import HOME_NAME, ReleaseSigner, generate_key, stop_agent
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.settings import DEFAULT_SIGNING_KEYRING, load_settings

from debpkgs import build_deb, fetch_from
from httpkit import serving_repos
from pulpkit import PulpServer, pulp_server

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests

PROJECT = "signed"
BRANCH = "main"
Apt = Callable[[AptSource, str], AptClient]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two farm keys: the farm's and another one (as `buildfarm start` makes them)."""
    root = tmp_path_factory.mktemp("keys")
    made = {name: generate_key(root / name) for name in ("farm", "other")}
    yield made
    for key_file in made.values():
        stop_agent(key_file.parent / HOME_NAME)


@pytest.fixture(scope="module")
def public_keys(keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    homes = tmp_path_factory.mktemp("homes")
    signers = {name: ReleaseSigner(key, homes / name) for name, key in keys.items()}
    try:
        return {name: signer.signing_key().public_key for name, signer in signers.items()}
    finally:
        for name in signers:
            stop_agent(homes / name)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PackageFile]:
    workdir = tmp_path_factory.mktemp("signed-debs")
    return {"hello": build_deb(workdir, "bf-signed", "1.0", architecture="all")}


@pytest.fixture
def apt(tmp_path: Path) -> Apt:
    """A fresh private apt client for ``source`` whose signed-by names a file holding ``public_key``,
    as a user stores what `buildfarm repo key` prints."""
    made: list[AptClient] = []

    def make(source: AptSource, public_key: str) -> AptClient:
        assert source.signed_by == DEFAULT_SIGNING_KEYRING and "trusted=yes" not in source.line()
        made.append(AptClient(tmp_path / f"apt-{len(made)}", source.line(), public_key))
        given = (made[-1].workdir / "etc" / "sources.list").read_text()
        assert given.startswith(f"deb [signed-by={made[-1].workdir}/etc/keyrings/buildfarm.asc] ")
        return made[-1]

    return make


def ref(build_id: int, kind: str = "nightly") -> BuildRef:
    return BuildRef(build_id=build_id, project=PROJECT, branch=BRANCH, kind=kind, user="alice")


# -- local profile ----------------------------------------------------------------------------


@pytest.fixture
def local_repo(tmp_path: Path, keys: dict[str, Path]) -> Iterator[LocalAptRepository]:
    root = tmp_path / "repos"
    home = tmp_path / "gnupg"
    with serving_repos(root) as server:
        try:
            yield LocalAptRepository(
                root, f"http://127.0.0.1:{server.server_port}/", signer=ReleaseSigner(keys["farm"], home)
            )
        finally:
            stop_agent(home)


def test_local_publication_verifies_with_the_public_key_only(
    local_repo: LocalAptRepository, debs: dict[str, PackageFile], public_keys: dict[str, str], apt: Apt
) -> None:
    local_repo.check()
    published = local_repo.publish(ref(1), [debs["hello"]], move_latest=True)
    url = f"{local_repo.base_url}/signed/main/builds/1"
    assert published.line() == f"deb [signed-by={DEFAULT_SIGNING_KEYRING}] {url} ./"
    tree = local_repo.root / PROJECT / BRANCH / "builds" / "1"
    assert {"Release", "InRelease", "Release.gpg"} <= {p.name for p in tree.iterdir()}
    assert not list(tree.parent.glob(".tmp-*"))  # signed inside the temp tree, then renamed
    key = require_signing_key(local_repo)
    assert key.public_key == public_keys["farm"]

    latest = local_repo.sources(PROJECT, BRANCH)
    assert latest.signed_by == DEFAULT_SIGNING_KEYRING
    client = apt(latest, key.public_key)
    client.update()
    assert client.download("bf-signed").read_bytes() == debs["hello"].path.read_bytes()

    # Staging trees are read only by the farm's builders: unsigned, [trusted=yes].
    staged = local_repo.stage(ref(2), [debs["hello"]], fetch_from(debs.values()))
    assert staged.line().startswith("deb [trusted=yes] ") and staged.signed_by is None


def test_local_tampered_release_or_another_key_fails(
    local_repo: LocalAptRepository, debs: dict[str, PackageFile], public_keys: dict[str, str], apt: Apt
) -> None:
    published = local_repo.publish(ref(3), [debs["hello"]], move_latest=False)
    with pytest.raises(AptError, match="NO_PUBKEY"):
        apt(published, public_keys["other"]).update()

    tree = local_repo.root / PROJECT / BRANCH / "builds" / "3"
    for name in ("InRelease", "Release"):  # what an attacker between apt and the farm would change
        path = tree / name
        path.write_text(path.read_text().replace("Origin: buildfarm", "Origin: attacker"))
    with pytest.raises(AptError, match="BADSIG"):
        apt(published, public_keys["farm"]).update()


def test_unsigned_repository_stays_trusted(tmp_path: Path, debs: dict[str, PackageFile]) -> None:
    repo = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:1/")
    published = repo.publish(ref(1), [debs["hello"]], move_latest=True)
    assert published.line() == "deb [trusted=yes] http://127.0.0.1:1/signed/main/builds/1 ./"
    assert not (repo.root / PROJECT / BRANCH / "builds" / "1" / "InRelease").exists()
    unsigned = r"^this farm publishes unsigned repositories: it has no signing key$"
    with pytest.raises(NotFoundError, match=unsigned):
        require_signing_key(repo)


def test_signing_settings_are_checked(tmp_path: Path, keys: dict[str, Path]) -> None:
    loose = tmp_path / "loose.asc"
    loose.write_bytes(keys["farm"].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(PermanentError, match=r"^setting signing_key_file: .*loose.asc is readable by others"):
        load_settings(state_dir=tmp_path, signing_key_file=loose)
    with pytest.raises(PermanentError, match=r"^setting signing_key_file: cannot read .*missing.asc"):
        load_settings(state_dir=tmp_path, signing_key_file=tmp_path / "missing.asc")
    with pytest.raises(PermanentError, match=r"^setting signing_keyring: 'keys/farm.asc' must be absolute"):
        load_settings(state_dir=tmp_path, signing_keyring="keys/farm.asc")
    public = tmp_path / "public.asc"
    public.write_text(ReleaseSigner(keys["farm"], tmp_path / "g").signing_key().public_key)
    public.chmod(0o600)
    stop_agent(tmp_path / "g")
    with pytest.raises(PermanentError, match=r"holds 0 secret keys, not one"):
        ReleaseSigner(public, tmp_path / "g2").check()


# -- Pulp -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulp_repo(pulp_server: PulpServer) -> PulpRepository:
    assert pulp_server.signing_service is not None
    return pulp_server.repository(signing_service=pulp_server.signing_service)


def test_pulp_publication_is_signed_by_the_signing_service(
    pulp_repo: PulpRepository,
    pulp_server: PulpServer,
    debs: dict[str, PackageFile],
    public_keys: dict[str, str],
    apt: Apt,
) -> None:
    pulp_repo.check()
    key = require_signing_key(pulp_repo)
    assert pulp_server.signing_key_file is not None
    home = pulp_server.signing_key_file.parent / HOME_NAME
    assert key.fingerprint == ReleaseSigner(pulp_server.signing_key_file, home).fingerprint
    stop_agent(home)
    published = pulp_repo.publish(ref(1), [debs["hello"]], move_latest=True)
    origin = pulp_repo.content_origin
    assert published.line() == (
        f"deb [signed-by={DEFAULT_SIGNING_KEYRING}] {origin}/pulp/content/signed/main/1/ buildfarm main"
    )
    latest = pulp_repo.sources(PROJECT, BRANCH)
    client = apt(latest, key.public_key)
    client.update()
    assert client.download("bf-signed").read_bytes() == debs["hello"].path.read_bytes()

    with pytest.raises(AptError, match="NO_PUBKEY"):
        apt(published, public_keys["other"]).update()

    staged = pulp_repo.stage(
        ref(2), [debs["hello"]], fetch_from(debs.values())
    )  # the farm's builders read it: unsigned
    assert staged.signed_by is None and staged.line().startswith("deb [trusted=yes] ")
    pulp_repo.drop_staging(ref(2))


def test_pulp_unknown_signing_service_is_one_line(pulp_server: PulpServer) -> None:
    repo = pulp_server.repository(signing_service="nosuch")
    with pytest.raises(PermanentError, match=r"no signing service 'nosuch' \(setting pulp_signing_service\)"):
        repo.check()


def test_a_deep_state_directory_still_signs(tmp_path: Path) -> None:
    """gpg-agent's sockets live in the home: a home deeper than a Unix socket path allows is
    reached through a short symlink (without it: "No agent running", seen in CI)."""
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4) / "state" / "signing"
    assert len(str(deep / HOME_NAME / "S.gpg-agent.browser")) > 107
    key_file = generate_key(deep)
    signer = ReleaseSigner(key_file, deep / HOME_NAME)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Release").write_text("Origin: buildfarm\n")
    signer.sign(repo)
    assert (repo / "InRelease").read_text().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    assert signer.signing_key().fingerprint == signer.fingerprint
    links = [p for p in Path(tempfile.gettempdir()).glob(f"bf-gpg-{os.getuid()}-*") if p.is_symlink()]
    assert any(os.readlink(p) == str((deep / HOME_NAME).absolute()) for p in links)
    stop_agent(deep / HOME_NAME)
    assert not any(
        p.is_symlink() and os.readlink(p) == str((deep / HOME_NAME).absolute())
        for p in Path(tempfile.gettempdir()).glob(f"bf-gpg-{os.getuid()}-*")
    )
