"""Names follow git's ref rules and map reversibly, without collisions, to safe path segments."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildfarm.model.errors import NameError_
from buildfarm.model.names import check_git_ref, check_ref_name, check_simple_name, from_safe, to_safe


@pytest.mark.parametrize("name", ["main", "r/stx.9.0", "feature/a-b_c", "v1.2.3", "über", "a+b=c"])
def test_valid_branch_names(name: str) -> None:
    assert check_ref_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("../etc", "'..'"),
        ("a/../b", "'..'"),
        ("/abs", "starts or ends with '/'"),
        ("a//b", "'//'"),
        ("a b", "space"),
        ("a:b", "space, a control character"),
        ("x.lock", ".lock"),
        ("a/.hidden", "starts with '.'"),
        ("end.", "ends with '.'"),
        ("a@{b", "@{"),
        ("x" * 101, "longer than 100"),
        ("-rf", "starts with '-'"),  # issue 11: git refuses these as branches
        ("--", "starts with '-'"),
        ("HEAD", "'HEAD'"),
        ("a\\b", "\\"),
        ("a\x7fb", "control character"),
        ("@", "'@'"),
    ],
)
def test_invalid_branch_names(name: str, reason: str) -> None:
    with pytest.raises(NameError_, match=re.escape(reason)):
        check_ref_name(name)


_REF_CHARS = st.sampled_from([*"ab-./@{}:~^?*[\\ \t\x7fHEADlock", "ü"])


@settings(max_examples=300, deadline=None)
@given(st.text(_REF_CHARS, max_size=12))
def test_branch_names_are_what_git_takes(name: str) -> None:
    """The rules are git's own: a name is accepted iff ``git check-ref-format --branch`` takes it
    (except '@', which git reads as HEAD there; ~3 ms per example)."""
    git_takes = (
        "\x00" not in name
        and subprocess.run(
            ["git", "check-ref-format", "--branch", name], capture_output=True, check=False, timeout=30
        ).returncode
        == 0
    )
    try:
        check_ref_name(name)
        ours = True
    except NameError_:
        ours = False
    assert ours == (git_takes and name != "@"), name


@pytest.mark.parametrize("ref", ["v1.2", "refs/tags/v1", "HEAD", "0123abcd" * 5, "main"])
def test_git_refs_of_sources(ref: str) -> None:
    assert check_git_ref(ref) == ref


@pytest.mark.parametrize("ref", ["-x", "--upload-pack=x", "a:b", "+refs/heads/*:refs/x", "a b", "x" * 256])
def test_git_refs_that_git_could_misread_are_refused(ref: str) -> None:
    with pytest.raises(NameError_, match="invalid git ref"):
        check_git_ref(ref)


def test_project_names_have_no_slash() -> None:
    with pytest.raises(NameError_, match="contains '/'"):
        check_simple_name("a/b", "project")


def test_safe_names_keep_branches_apart() -> None:
    assert to_safe("r/stx.9.0") == "r_2fstx.9.0"
    assert to_safe("r/stx.9.0") != to_safe("r_stx.9.0")
    assert to_safe("r/stx.9.0") != to_safe("r_2fstx.9.0")


@given(st.text(min_size=1, max_size=40))
def test_to_safe_is_reversible_and_path_safe(name: str) -> None:
    safe = to_safe(name)
    assert re.fullmatch(r"[A-Za-z0-9._\-]+", safe)
    assert "/" not in safe
    assert from_safe(safe) == name


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_to_safe_is_injective(a: str, b: str) -> None:
    if a != b:
        assert to_safe(a) != to_safe(b)
