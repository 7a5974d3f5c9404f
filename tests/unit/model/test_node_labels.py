"""Node labels and step requirements (issue 16): which node may run which step."""

from __future__ import annotations

import pytest

from buildfarm.model.errors import PermanentError
from buildfarm.model.labels import format_requires, missing, node_labels, satisfies, step_requirements

NODE = node_labels(["amd64", "i386"], ["sbuild", "buildah"], 2, 3.5, ["gpu", "zone=lab"])


def test_a_node_advertises_its_architectures_builders_size_and_custom_labels() -> None:
    assert {
        "arch=amd64",
        "arch=i386",
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


def test_requirements_come_from_architecture_and_the_manifest() -> None:
    assert step_requirements("any", None, []) == ""
    assert step_requirements("any all", None, []) == ""
    assert step_requirements("all", None, []) == ""
    assert step_requirements("linux-any", None, []) == ""  # a wildcard: any node may try
    assert step_requirements("amd64 arm64", None, []) == ""  # a list: any of them builds it
    assert step_requirements("arm64", None, []) == "arch=arm64"
    assert step_requirements("any", "arm64", ["gpu", "cpu=large"]) == "arch=arm64,cpu=large,gpu"
    assert step_requirements("amd64", "arm64", []) == "arch=arm64"  # the manifest's arch wins
    assert format_requires(["b", "a", "b"]) == "a,b"


def test_a_bad_label_is_refused_with_its_name() -> None:
    with pytest.raises(PermanentError, match="'Zone=Lab'"):
        node_labels(["amd64"], [], 1, 1, ["Zone=Lab"])
