"""The URL policy: only network URLs of public hosts, unless an admin allows more (issue 11).

Every URL here is an address literal or ``localhost`` (resolved from /etc/hosts): no DNS.
"""

from __future__ import annotations

import re

import pytest

from buildfarm.model.errors import PermanentError, TemporaryError
from buildfarm.model.settings import load_settings
from buildfarm.model.urlpolicy import (
    UrlPolicy,
    UrlRefusedError,
    check_url,
    check_url_syntax,
    redact_text,
    redact_url,
)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("--upload-pack=touch /tmp/x;false", "starts with '-'"),
        ("-oProxyCommand=x", "starts with '-'"),
        ("file:///etc", "not a network URL"),
        ("FILE:///etc", "not a network URL"),
        ("/srv/git/repo", "not a network URL"),
        ("repo", "not a network URL"),
        ("ext::sh -c touch% /tmp/x", "blank"),
        ("ext::sh", "not a network URL"),
        ("fd::3", "not a network URL"),
        ("git@example.org:team/repo.git", "not a network URL"),
        ("https:example.org/repo", "not a network URL"),
        ("git+ssh://example.org/repo", "not a network URL"),
        ("https:///repo", "names no host"),
        ("ssh://-oProxyCommand=touch%20x/repo", "starts with '-'"),
        ("ssh://-x@example.org/repo", "starts with '-'"),
        ("https://example.org:99999/repo", "not a valid URL"),
        ("https://example.org/repo#x", "fragment"),
        ("https://example.org/re\npo", "control character"),
    ],
)
def test_only_network_urls_pass_the_syntax_check(url: str, reason: str) -> None:
    with pytest.raises(UrlRefusedError, match=re.escape(reason)):
        check_url_syntax(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/team/repo.git",
        "http://h:8080/r",
        "git://h/r",
        "ssh://git@h:2222/r",
        "https://u:p@h/r",
    ],
)
def test_network_urls_pass_the_syntax_check(url: str) -> None:
    assert check_url_syntax(url) == url


NOT_PUBLIC = [
    "127.0.0.1",
    "127.0.0.2",
    "[::1]",
    "169.254.169.254",  # cloud metadata
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "[::]",
    "224.0.0.1",
    "255.255.255.255",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[fe80::1]",
    "[fd00::1]",
    "2130706433",  # 127.0.0.1 as one number
    "0x7f000001",
    "127.1",
    "localhost",
]


@pytest.mark.parametrize("host", NOT_PUBLIC)
def test_non_public_hosts_are_refused_with_one_message(host: str) -> None:
    with pytest.raises(UrlRefusedError) as refused:
        check_url(f"https://{host}:8443/repo.git", UrlPolicy())
    assert str(refused.value) == (
        f"'https://{host}:8443/repo.git': the farm does not fetch from this host (only public hosts; "
        "an admin may allow others with fetch_allow_hosts)"
    )


def test_a_public_address_passes_and_its_addresses_are_returned() -> None:
    allowed = check_url("https://8.8.8.8/repo.git", UrlPolicy())
    assert (allowed.scheme, allowed.host, allowed.port, allowed.addresses) == (
        "https",
        "8.8.8.8",
        443,
        ("8.8.8.8",),
    )


def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]  # one public, one private (a rebinding trick)

    with pytest.raises(UrlRefusedError, match="does not fetch from this host"):
        check_url("https://example.org/r", UrlPolicy(), resolve)


def test_a_name_that_does_not_resolve_is_temporary() -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise OSError("Temporary failure in name resolution")

    with pytest.raises(TemporaryError, match=re.escape("cannot resolve host 'example.org'")):
        check_url("https://example.org/r", UrlPolicy(), resolve)


def test_schemes_are_https_only_unless_allowed() -> None:
    for url in ("http://8.8.8.8/r", "git://8.8.8.8/r", "ssh://8.8.8.8/r"):
        with pytest.raises(UrlRefusedError, match="URLs are not allowed here"):
            check_url(url, UrlPolicy())
    policy = UrlPolicy.parse(["https", "git"], [])
    assert check_url("git://8.8.8.8/r", policy).port == 9418


def test_the_allow_list_names_hosts_addresses_and_networks() -> None:
    policy = UrlPolicy.parse(
        ["git", "http"], ["127.0.0.1", "::1", "10.0.0.0/8", "localhost", ".corp.example"]
    )
    assert check_url("git://127.0.0.1:9999/r", policy).addresses == ("127.0.0.1",)
    assert check_url("http://[::1]/r", policy).addresses == ("::1",)
    assert check_url("http://10.200.0.1/r", policy).host == "10.200.0.1"
    assert check_url("http://localhost/r", policy).host == "localhost"
    assert check_url("http://git.corp.example/r", policy, lambda h, p: ["192.168.0.4"]).addresses == (
        "192.168.0.4",
    )
    for url in ("git://127.0.0.2/r", "http://169.254.169.254/r", "http://192.168.0.1/r"):
        with pytest.raises(UrlRefusedError, match="does not fetch from this host"):
            check_url(url, policy)
    with pytest.raises(UrlRefusedError, match="not a network URL"):
        check_url("file:///etc", policy)


@pytest.mark.parametrize(
    ("schemes", "hosts", "message"),
    [
        ("https,file", "", "fetch_allow_schemes: file cannot be allowed"),
        ("ext", "", "fetch_allow_schemes: ext cannot be allowed"),
        ("https", "bad host!", "fetch_allow_hosts: 'bad host!' is neither"),
    ],
)
def test_bad_allow_lists_stop_the_farm_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, schemes: str, hosts: str, message: str
) -> None:
    monkeypatch.setenv("BUILDFARM_FETCH_ALLOW_SCHEMES", schemes)
    monkeypatch.setenv("BUILDFARM_FETCH_ALLOW_HOSTS", hosts)
    with pytest.raises(PermanentError, match=re.escape(message)):
        load_settings(state_dir=tmp_path)


def test_allow_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    assert load_settings(state_dir=tmp_path).fetch.url_policy == UrlPolicy()  # https, public hosts only
    monkeypatch.setenv("BUILDFARM_FETCH_ALLOW_SCHEMES", "https, git")
    monkeypatch.setenv("BUILDFARM_FETCH_ALLOW_HOSTS", '["127.0.0.1", "git.corp.example"]')
    policy = load_settings(state_dir=tmp_path).fetch.url_policy
    assert policy.schemes == {"https", "git"} and policy.hosts == {"git.corp.example"}
    assert [str(n) for n in policy.networks] == ["127.0.0.1/32"]


def test_credentials_never_show() -> None:
    assert redact_url("https://user:s3cret@h/r.git") == "https://***@h/r.git"
    assert redact_url("https://ghp_token@h/r") == "https://***@h/r"
    said = "fatal: unable to access 'https://u:s3cret@h/r/': The requested URL returned error: 403"
    assert "s3cret" not in redact_text(said)
    with pytest.raises(UrlRefusedError) as refused:
        check_url("https://u:s3cret@127.0.0.1/r", UrlPolicy())
    assert "s3cret" not in str(refused.value)
