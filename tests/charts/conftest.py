"""The chart tests' fixtures: renders of the buildfarm chart (chartkit does the rendering).

The chart tests never skip: without `.helm/bin/helm` (or the built library dependency) they
fail and say to run `make charts`, which fetches helm and builds the dependency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from chartkit import (
    PROFILES,
    Manifest,
    Render,
    by_kind,
    find,
    helm_template,
    pod_spec,
    render_profile,
    workloads,
)


@pytest.fixture(scope="session")
def render() -> Render:
    return render_profile


@pytest.fixture(scope="session", params=PROFILES)
def profile_docs(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render_profile(request.param)


@pytest.fixture(scope="session")
def helpers() -> dict[str, Callable[..., Any]]:
    return {
        "pod_spec": pod_spec,
        "by_kind": by_kind,
        "find": find,
        "workloads": workloads,
        "helm_template": helm_template,
    }
