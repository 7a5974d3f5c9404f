"""Node labels and step requirements (issue 16): which node may run which step."""

from __future__ import annotations

import pytest

from buildfarm.model.errors import PermanentError
from buildfarm.model.labels import (
    build_architecture,
    format_requires,
    missing,
    node_labels,
    satisfies,
    step_requirements,
)

NODE = node_labels(["amd64", "i386"], ["sbuild", "buildah"], 2, 3.5, ["gpu", "zone=lab"])


def test_a_node_advertises_its_architectures_builders_size_and_custom_labels() -> None:
    assert {
        "arch=amd64",
        "arch=i386",
        "native-arch=amd64",  # its own; i386 is a foreign architecture its dpkg accepts
        "builder=sbuild",
        "builder=buildah",
        "cpu=small",
        "memory=small",
        "gpu",
        "zone=lab",
    } == NODE
    assert "cpu=large" in node_labels(["arm64"], [], 64, 256)
    assert "memory=medium" in node_labels(["arm64"], [], 8, 16)


def test_a_step_runs_only_where_every_required_label_is() -> None:
    assert satisfies(NODE, "")
    assert satisfies(NODE, "arch=i386")
    assert satisfies(NODE, "arch=amd64,builder=sbuild,gpu")
    assert not satisfies(NODE, "arch=arm64")
    assert not satisfies(NODE, "arch=amd64,cpu=large")
    assert missing(NODE, "arch=arm64,gpu") == {"arch=arm64"}


def test_requirements_come_from_the_manifest_and_where_the_step_is_built() -> None:
    assert build_architecture("any", None) is None
    assert build_architecture("any all", None) is None
    assert build_architecture("all", None) is None
    assert build_architecture("linux-any", None) is None  # a wildcard: the build's architectures
    assert build_architecture("amd64 arm64", None) is None  # a list: the build's architectures
    assert build_architecture("arm64", None) == "arm64"
    assert build_architecture("amd64", "arm64") == "arm64"  # the manifest's arch wins
    assert step_requirements([]) == ""
    assert step_requirements(["gpu", "cpu=large"], "arm64") == "arch=arm64,cpu=large,gpu"
    assert step_requirements([], "arm64", native=True) == "arch=arm64,native-arch=arm64"
    assert step_requirements(["cpu=large"]) == "cpu=large"
    assert format_requires(["b", "a", "b"]) == "a,b"


def test_a_bad_label_is_refused_with_its_name() -> None:
    with pytest.raises(PermanentError, match="'Zone=Lab'"):
        node_labels(["amd64"], [], 1, 1, ["Zone=Lab"])
