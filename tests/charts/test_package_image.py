"""The package-builder image of builder pods defaults to the tag ``buildfarm env image`` pushes
to the farm's registry (issue 15 part 5): the farm resolves it to its digest at each submit, so a
refreshed environment is a new input key, and the kubelet pulls it with the builders' Secret."""

from __future__ import annotations

from typing import Any

from buildfarm.model.images import registry_host, split_reference


def test_the_default_is_the_farm_registrys_current_builder_image(
    render: Any, helpers: dict[str, Any]
) -> None:
    data = helpers["find"](render("default"), "ConfigMap", "farm")["data"]
    image = data["BUILDFARM_BUILDER_IMAGE"]
    host, repository, tag = split_reference(image)
    # what `buildfarm env image` requires of builder_image, and pushes
    assert host == registry_host(data["BUILDFARM_REGISTRY_URL"]) and (repository, tag) == (
        "buildfarm/package-builder",
        "current",
    )
    assert data["BUILDFARM_BUILDER_REGISTRY_SECRET"]  # the kubelet's pull credentials
    pinned = helpers["find"](
        render("default", f"builders.packageImage.digest=sha256:{'a' * 64}"), "ConfigMap", "farm"
    )
    assert pinned["data"]["BUILDFARM_BUILDER_IMAGE"] == f"{image}@sha256:{'a' * 64}"


def test_an_image_built_elsewhere_keeps_the_charts_version(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default", "builders.packageImage.repository=ghcr.io/corp/package-builder")
    image = helpers["find"](docs, "ConfigMap", "farm")["data"]["BUILDFARM_BUILDER_IMAGE"]
    assert image.startswith("ghcr.io/corp/package-builder:") and not image.endswith(":current")


def test_without_the_farms_registry_the_image_must_be_named(helpers: dict[str, Any]) -> None:
    failed = helpers["helm_template"]("--set", "registry.enabled=false")
    assert failed.returncode != 0
    assert "builders.packageImage.repository is required when registry.enabled is false" in failed.stderr
    named = helpers["helm_template"](
        "--set", "registry.enabled=false", "--set", "builders.packageImage.repository=ghcr.io/corp/pb"
    )
    assert named.returncode == 0, named.stderr
