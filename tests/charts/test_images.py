"""The chart's images are ones that exist where it runs (issue 13).

Nothing of the farm is published to a public registry: the defaults name what the minikube
instructions build inside minikube, and the farm image has what the farm runs (git).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_default_images_are_the_ones_the_minikube_script_builds(render: Any, helpers: dict[str, Any]) -> None:
    script = (ROOT / "ops" / "charts" / "minikube-images.sh").read_text()
    built = {f"localhost/buildfarm/{name}" for name in re.findall(r"^build ([a-z-]+) ", script, re.M)}
    assert built == {
        "localhost/buildfarm/farm",
        "localhost/buildfarm/package-builder",
        "localhost/buildfarm/pulp",
    }
    assert 'minikube image build -t "localhost/buildfarm/$1:$version"' in script
    docs = render("minikube")
    images = {
        c["image"]
        for d in helpers["workloads"](docs)
        for c in helpers["pod_spec"](d)["containers"] + helpers["pod_spec"](d).get("initContainers", [])
    }
    ours = {i.rsplit(":", 1)[0] for i in images if "buildfarm" in i}
    assert ours == {"localhost/buildfarm/farm", "localhost/buildfarm/pulp"}
    builder = helpers["find"](docs, "ConfigMap", "farm")["data"]["BUILDFARM_BUILDER_IMAGE"]
    assert builder.rsplit(":", 1)[0] == "localhost/buildfarm/package-builder"
    readme = (ROOT / "charts" / "buildfarm" / "README.md").read_text()
    assert "bash ops/charts/minikube-images.sh" in readme


def test_farm_image_has_git() -> None:
    dockerfile = (ROOT / "buildtools" / "images" / "farm" / "Dockerfile").read_text()
    installs = re.findall(r"apt-get install[^&]*", dockerfile.replace("\\\n", " "))
    assert any(re.search(r"\bgit\b", line) for line in installs), (
        "sources from git need git in the farm image"
    )
