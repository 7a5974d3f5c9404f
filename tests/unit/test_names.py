"""Names follow git's ref rules and map reversibly, without collisions, to safe path segments."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildfarm.model.errors import NameError_
from buildfarm.model.names import check_ref_name, check_simple_name, from_safe, to_safe


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
    ],
)
def test_invalid_branch_names(name: str, reason: str) -> None:
    with pytest.raises(NameError_, match=re.escape(reason)):
        check_ref_name(name)


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
