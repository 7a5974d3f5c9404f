"""The domain types of buildfarm.model.types and the conversions that read older encodings.

A backup catalogue written before migration 0009 (format 1) names an image output
``image:<reference>`` and has no output kinds; restoring it must give the same rows a farm
upgraded by 0009 has.
"""

from __future__ import annotations

import pytest

from buildfarm.backup.catalog import CATALOGUE_FORMAT, upgrade_catalogue
from buildfarm.model.types import AptSource, OutputKind


def test_a_built_file_has_the_kind_of_its_suffix() -> None:
    assert OutputKind.of_file("hello_1.0_amd64.deb") == OutputKind.DEB
    assert OutputKind.of_file("hello-udeb_1.0_amd64.udeb") == OutputKind.UDEB
    assert OutputKind.of_file("hello_1.0_amd64.buildinfo") == OutputKind.BUILDINFO
    assert OutputKind.DEB.is_package and OutputKind.UDEB.is_package
    assert not OutputKind.BUILDINFO.is_package and not OutputKind.IMAGE.is_package
    with pytest.raises(ValueError, match=r"hello\.changes"):
        OutputKind.of_file("hello.changes")


def test_an_apt_source_keeps_its_fields_through_json() -> None:
    staging = AptSource("http://pulp/content/p/main/_staging/3/", "stable", ("main",))
    signed = AptSource("http://pulp/content/p/main/", "stable", ("main",), signed_by="/etc/apt/farm.asc")
    for source in (staging, signed, AptSource("http://repo/flat/")):
        assert AptSource.from_json(source.to_json()) == source
    assert staging.line() == "deb [trusted=yes] http://pulp/content/p/main/_staging/3/ stable main"
    with pytest.raises(ValueError, match="not an apt source"):
        AptSource.from_json({"suite": "stable"})


def test_a_format_1_catalogue_gets_output_kinds_and_plain_image_references() -> None:
    reference = "registry:5000/p/main/2/app:latest"
    old = {
        "format": 1,
        "tables": {
            "step_outputs": [
                {"step_id": 1, "filename": "app_1.0_amd64.deb", "sha256": "a" * 64, "size": 1},
                {"step_id": 1, "filename": "app_1.0_amd64.buildinfo", "sha256": "b" * 64, "size": 2},
                {"step_id": 2, "filename": f"image:{reference}", "sha256": "c" * 64, "size": 3},
            ]
        },
    }
    upgraded = upgrade_catalogue(old)
    assert upgraded["format"] == CATALOGUE_FORMAT
    assert [(o["filename"], o["kind"]) for o in upgraded["tables"]["step_outputs"]] == [
        ("app_1.0_amd64.deb", OutputKind.DEB),
        ("app_1.0_amd64.buildinfo", OutputKind.BUILDINFO),
        (reference, OutputKind.IMAGE),
    ]
    assert upgrade_catalogue(upgraded) == upgraded  # a current catalogue is left as it is
