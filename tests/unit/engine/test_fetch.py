"""git runs with user input as the farm: nothing it is given may run a command or read the host.

Each test serves a real repository with ``git daemon`` on loopback (~50 ms) and runs real git;
the whole module takes ~2 s.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.engine import fetch
from buildfarm.model.errors import ManifestError, TemporaryError
from buildfarm.model.urlpolicy import AllowedUrl, UrlPolicy

from gitkit import GitServer, commit_tree
from helpers import free_port
from httpkit import Redirecting, redirecting

LOOPBACK = UrlPolicy.parse(["git"], ["127.0.0.1"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitServer, Path]]:
    base = tmp_path_factory.mktemp("served")
    repo = base / "repo"
    (repo / "debian").mkdir(parents=True)
    (repo / "debian" / "control").write_text("Source: x\n")
    commit_tree(repo, tag="v1")
    with GitServer(base) as server:
        yield server, repo


def _vectors(marker: Path, repo: Path, url: str) -> list[tuple[str, str]]:
    """(url, ref) pairs that ran ``touch marker`` as the farm before issue 11."""
    command = f"--upload-pack=touch {marker};false"
    return [(command, str(repo)), (url, command), (command, command)]


def test_option_shaped_values_are_refused_before_git_runs(
    served: tuple[GitServer, Path], tmp_path: Path
) -> None:
    server, repo = served
    marker = tmp_path / "pwned"
    for index, (url, ref) in enumerate(_vectors(marker, repo, server.url(repo))):
        with pytest.raises(ManifestError, match="starts with '-'"):
            fetch.checkout(url, ref, tmp_path / f"clone{index}", "packages[0]", LOOPBACK)
        assert not (tmp_path / f"clone{index}").exists()
    assert not marker.exists()


def test_git_never_reads_values_as_options_even_past_the_checks(
    served: tuple[GitServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: were the checks bypassed, git still takes no option from a value."""
    server, repo = served
    marker = tmp_path / "pwned"
    monkeypatch.setattr(fetch, "check_url", lambda url, policy: AllowedUrl(url, "git", "127.0.0.1", 1, ()))
    monkeypatch.setattr(fetch.names, "check_git_ref", lambda ref: ref)
    for index, (url, ref) in enumerate(_vectors(marker, repo, server.url(repo))):
        with pytest.raises(ManifestError, match="git fetch failed"):
            fetch.checkout(url, ref, tmp_path / f"clone{index}", "packages[0]", LOOPBACK)
    assert not marker.exists()


def test_local_repositories_are_never_read(served: tuple[GitServer, Path], tmp_path: Path) -> None:
    _server, repo = served
    everything = UrlPolicy.parse(["https", "http", "git", "ssh"], ["0.0.0.0/0", "::/0", "localhost"])
    for url in (f"file://{repo}", str(repo), f"ext::git-upload-pack {repo}", f"{repo}/.git"):
        with pytest.raises(ManifestError, match=r"not a network URL|blank"):
            fetch.checkout(url, "v1", tmp_path / "clone", "packages[0]", everything)
    assert not (tmp_path / "clone").exists()


def test_an_allow_listed_loopback_server_is_fetched_from(
    served: tuple[GitServer, Path], tmp_path: Path
) -> None:
    server, repo = served
    fetch.checkout(server.url(repo), "v1", tmp_path / "clone", "packages[0]", LOOPBACK)
    assert (tmp_path / "clone" / "debian" / "control").read_text() == "Source: x\n"
    with pytest.raises(ManifestError, match="does not fetch from this host"):
        fetch.checkout(
            server.url(repo), "v1", tmp_path / "refused", "packages[0]", UrlPolicy.parse(["git"], [])
        )


def test_a_refused_host_says_nothing_of_its_ports(served: tuple[GitServer, Path], tmp_path: Path) -> None:
    """An open port (the git server) and a closed one give the same message: nothing is tried."""
    server, _repo = served
    policy = UrlPolicy.parse(["git"], [])
    messages = []
    for port in (server.port, free_port()):
        with pytest.raises(ManifestError) as refused:
            fetch.checkout(f"git://127.0.0.1:{port}/repo", "v1", tmp_path / str(port), "p", policy)
        messages.append(str(refused.value).replace(str(port), "PORT"))
    assert messages[0] == messages[1]


def test_an_allowed_host_that_does_not_answer_is_temporary(tmp_path: Path) -> None:
    """One message whatever git said (refused, reset, timed out): a nightly run tries again."""
    closed = free_port()
    with pytest.raises(TemporaryError) as failed:
        fetch.checkout(f"git://127.0.0.1:{closed}/repo", "v1", tmp_path / "clone", "p", LOOPBACK)
    assert str(failed.value) == f"p: git fetch failed: no git server answered at 127.0.0.1 port {closed}"


def test_git_errors_keep_their_meaning_and_hide_secrets() -> None:
    said = (
        "fatal: unable to access 'https://bob:s3cret@git.example.org/r/': "
        "The requested URL returned error: 403"
    )
    assert fetch._git_error(said) == (
        "fatal: unable to access 'https://***@git.example.org/r/': The requested URL returned error: 403"
    )
    ssh = (
        "fatal: '/nope' does not appear to be a git repository\n"
        "fatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.\n"
    )
    assert fetch._git_error(ssh).startswith("fatal: '/nope' does not appear to be a git repository")
    assert len(fetch._git_error("fatal: " + "x" * 5000)) == fetch.MAX_GIT_ERROR_CHARS
    assert re.fullmatch(r"\(no message\)", fetch._git_error(""))


@pytest.fixture
def http_server() -> Iterator[Redirecting]:
    with redirecting() as server:
        yield server


def test_git_uses_the_checked_addresses_and_follows_no_redirect(
    http_server: Redirecting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name checked at one address is fetched from that address (no second DNS answer counts),
    and a redirect (to a host nobody checked) is not followed."""
    port = http_server.port
    url = f"http://name.invalid:{port}/repo"  # resolves nowhere: only the pinned address reaches it
    monkeypatch.setattr(
        fetch, "check_url", lambda u, p: AllowedUrl(u, "http", "name.invalid", port, ("127.0.0.1",))
    )
    with pytest.raises(ManifestError, match="not found"):
        fetch.checkout(url, "v1", tmp_path / "pinned", "p", LOOPBACK)
    assert http_server.seen and http_server.seen[0].startswith("/repo/info/refs")
    http_server.target = f"http://127.0.0.1:{free_port()}/elsewhere"
    with pytest.raises(ManifestError, match="302"):
        fetch.checkout(url, "v1", tmp_path / "redirected", "p", LOOPBACK)


def test_a_symlink_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    """``debian/changelog -> /etc/passwd`` was read as the farm (a parse error showed its first line)."""
    base = tmp_path / "served"
    repo = base / "linked"
    (repo / "debian").mkdir(parents=True)
    (repo / "debian" / "control").write_text("Source: linked\n\nPackage: linked\n")
    (repo / "debian" / "changelog").symlink_to("/etc/passwd")
    (repo / "loop").symlink_to("loop")
    commit_tree(repo, tag="v1")
    with GitServer(base) as server, pytest.raises(ManifestError) as refused:
        fetch.checkout(server.url(repo), "v1", tmp_path / "clone", "packages[0]", LOOPBACK)
    assert re.fullmatch(
        r"packages\[0\]: symlink (debian/changelog|loop) points outside the repository", str(refused.value)
    )


def test_a_host_that_does_not_resolve_is_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*_args: object, **_kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(TemporaryError) as failed:
        fetch.checkout("https://git.example.org/r", "v1", tmp_path / "clone", "packages[0]", UrlPolicy())
    assert (
        str(failed.value) == "packages[0]: 'https://git.example.org/r': cannot resolve host 'git.example.org'"
    )
    assert not (tmp_path / "clone").exists()


def test_tree_paths_resolve_as_path_resolve_does(tmp_path: Path) -> None:
    """Trees below one directory share its resolution; symlinks, ``..`` and a symlinked parent
    still resolve as :meth:`Path.resolve`."""
    (tmp_path / "real" / "src" / "a").mkdir(parents=True)
    (tmp_path / "real" / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "src" / "b").symlink_to(tmp_path / "real" / "other")
    parents: dict[Path, Path] = {}
    for relative in ("link/src/a", "link/src/b", "link/src/missing", "link/src/a/..", "real/src/../other"):
        path = tmp_path / relative
        assert fetch._resolved(path, parents) == path.resolve(), relative
    assert parents[tmp_path / "link" / "src"] == tmp_path / "real" / "src"
