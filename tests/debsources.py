"""Real source packages from Debian's archive, fetched once and cached for the suite and the bench.

``apt-get source --download-only`` from the Debian mirror the farm's settings name (the
machine's), with a private apt configuration holding a ``deb-src`` line, into
``~/.cache/buildfarm/debian-sources/<name>_<version>/``: the integration tests and
``make bench`` (ops/bench/quilt.py) download each package once per machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from buildfarm.model.debsource import source_package
from buildfarm.model.settings import load_settings

PACKAGES = {
    "rsakeyfind": "1:1.0-8",
    "mescc-tools": "1.4.0-1",
    "mbw": "1.2.2-1.1",
    "memstat": "1.1",
    "dh-autoreconf": "20",
    "minizip": "1.1-8+deb12u1",
}
"""The Debian source packages the suite builds (name -> version): small, few Build-Depends, and
each a different source format or entry kind (tests/integration/runners/test_real_sources_debian.py)."""

CACHE = Path.home() / ".cache" / "buildfarm" / "debian-sources"
APT_TIMEOUT_SECONDS = 600


def _apt_options(root: Path) -> list[str]:
    return [
        "-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={root / 'sources.list.d'}",
        "-o", f"Dir::Etc::PreferencesParts={root / 'preferences.d'}",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def debian_source(name: str, version: str) -> Path:
    """The .dsc of ``name`` ``version`` in the cache, fetched with apt-get source once."""
    noepoch = version.split(":", 1)[-1]
    directory = CACHE / f"{name}_{noepoch}"
    dsc = directory / f"{name}_{noepoch}.dsc"
    if dsc.is_file():
        try:
            source_package(dsc, name)
            return dsc
        except Exception:
            shutil.rmtree(directory)
    settings = load_settings(state_dir=CACHE / "unused")
    apt = CACHE / "apt"
    for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(
        f"deb-src {settings.buildenv.mirror} {settings.buildenv.distribution} main\n"
    )
    options = _apt_options(apt)
    if not any((apt / "lists").glob("*Sources*")):
        subprocess.run(
            ["apt-get", *options, "update"], check=True, capture_output=True, timeout=APT_TIMEOUT_SECONDS
        )
    scratch = CACHE / f".{name}.{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    subprocess.run(
        ["apt-get", *options, "source", "--download-only", f"{name}={version}"],
        cwd=scratch, check=True, capture_output=True, timeout=APT_TIMEOUT_SECONDS,
    )  # fmt: skip
    source_package(scratch / dsc.name, name)  # every file there, as the .dsc says
    scratch.rename(directory)
    return dsc
