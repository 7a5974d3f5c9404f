"""The real apt, pointed at one repository with a private configuration: the judge of what we publish.

``buildfarm repo verify`` and the tests prove a published repository works by doing what users
do: ``apt-get update`` and ``apt-get download``. The machine's own apt setup must neither leak
in (its sources, proxies, hooks, compressed-index settings) nor be touched, so every directory
apt reads or writes lives under ``workdir``. ``APT_CONFIG`` points at our own apt.conf, which
apt reads before anything else; there ``Dir::Etc::Parts`` and ``Dir::Etc::Main`` are moved away
from /etc/apt (``-o`` on the command line would come too late: apt.conf.d is read before options
are parsed).

``architectures`` are apt's foreign architectures (what ``dpkg --add-architecture arm64`` gives a
machine): ``download("pkg:arm64")`` then fetches another architecture's package.

A signed repository is read the way a user reads it: ``public_key`` (what ``buildfarm repo key``
prints) is stored in the private setup and the line's ``[signed-by=...]`` points there, so apt
verifies the Release file with that key alone (no ``trusted=yes``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

APT_TIMEOUT_SECONDS = 60.0
"""Bound on one apt-get run against a repository on localhost (they take well under a second)."""


_SIGNED_BY = re.compile(r"\[signed-by=[^\]\s]+\]")


def _native_architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"],
        capture_output=True,
        text=True,
        check=True,
        timeout=APT_TIMEOUT_SECONDS,
    ).stdout.strip()


class AptError(Exception):
    """apt-get failed; the message holds its exit status and output."""


class AptClient:
    """One private apt setup whose only source is ``source_line``; its ``signed-by`` key is
    ``public_key`` (armored) when the line has one."""

    def __init__(
        self,
        workdir: Path,
        source_line: str,
        public_key: str | None = None,
        architectures: tuple[str, ...] = (),
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.public_key = public_key
        self.downloads = self.workdir / "downloads"
        etc = self.workdir / "etc"
        state = self.workdir / "state"
        cache = self.workdir / "cache"
        for directory in (
            etc / "apt.conf.d",
            etc / "sources.list.d",
            etc / "preferences.d",
            etc / "trusted.gpg.d",
            state / "lists" / "partial",
            cache / "archives" / "partial",
            self.workdir / "log",
            self.downloads,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        status = state / "dpkg-status"
        status.touch()  # an empty dpkg database: nothing installed, the host's packages irrelevant
        self.set_source(source_line)
        self.config = etc / "apt.conf"
        settings = {
            "Dir::Etc": etc,
            "Dir::Etc::Main": etc / "apt.conf.main",  # does not exist: nothing more is read
            "Dir::Etc::Parts": etc / "apt.conf.d",
            "Dir::Etc::SourceList": etc / "sources.list",
            "Dir::Etc::SourceParts": etc / "sources.list.d",
            "Dir::Etc::Preferences": etc / "preferences",
            "Dir::Etc::PreferencesParts": etc / "preferences.d",
            "Dir::Etc::TrustedParts": etc / "trusted.gpg.d",
            "Dir::State": state,
            "Dir::State::Lists": state / "lists",
            "Dir::State::status": status,
            "Dir::Cache": cache,
            "Dir::Log": self.workdir / "log",
            "APT::Sandbox::User": "root",  # the _apt user could not write into a test's tmp dir
            "Acquire::Languages": "none",
            "Acquire::Retries": "0",
            "Acquire::http::Timeout": "10",
        }
        lines = [f'{key} "{value}";\n' for key, value in settings.items()]
        if architectures:  # the native one (apt's default) and the foreign ones
            native = _native_architecture()
            listed = "".join(f' "{a}";' for a in dict.fromkeys((native, *architectures)))
            lines.append(f"APT::Architectures {{{listed} }};\n")
        self.config.write_text("".join(lines))

    def set_source(self, source_line: str) -> None:
        """Replace the one sources line (e.g. to follow another build); call :meth:`update` after."""
        self.source_line = source_line
        if self.public_key is not None:
            key_file = self.workdir / "etc" / "keyrings" / "buildfarm.asc"
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(self.public_key)
            source_line = _SIGNED_BY.sub(f"[signed-by={key_file}]", source_line)
        (self.workdir / "etc" / "sources.list").write_text(source_line + "\n")

    def _apt_get(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
        env.update(APT_CONFIG=str(self.config), LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
        result = subprocess.run(
            ["apt-get", "-q", *args],
            cwd=cwd or self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise AptError(
                f"apt-get {' '.join(args)} exited {result.returncode} (source: {self.source_line})\n"
                f"{result.stderr}{result.stdout}"
            )
        return result

    def update(self) -> None:
        """``apt-get update``; any index that fails to download is an error, not a warning."""
        self._apt_get("update", "--error-on=any")

    def source(self, package: str) -> list[Path]:
        """``apt-get source --download-only package`` (needs a deb-src line): the .dsc and its files."""
        into = self.workdir / "sources" / package
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        self._apt_get("source", "--download-only", package, cwd=into)
        return sorted(into.iterdir())

    def download(self, package: str) -> Path:
        """``apt-get download package`` (``package:arch`` for another architecture's); returns the
        downloaded .deb (replacing an earlier one)."""
        name = package.split(":", 1)[0]
        for old in self.downloads.glob(f"{name}_*.deb"):
            old.unlink()
        self._apt_get("download", package, cwd=self.downloads)
        found = sorted(self.downloads.glob(f"{name}_*.deb"))
        if len(found) != 1:
            raise AptError(f"apt-get download {package} left {[p.name for p in found]} in {self.downloads}")
        return found[0]
