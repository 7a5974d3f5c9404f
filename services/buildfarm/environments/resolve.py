"""Which Debian packages a step's Build-Depends add to its environment (the layer's contents).

Resolved on the node, with the host's apt pointed at a copy of the environment's own apt state
(its lists, its dpkg status, its sources; :func:`apt_view`, extracted once per environment) plus
the step's extra repositories (the build's staging repository, the farm's mirrors), refreshed
into a private directory as sbuild refreshes them in the chroot.  ``apt-get satisfy`` answers
with the same resolver sbuild's ``apt`` resolver uses; ``--print-uris`` says where each package
comes from, so the farm's own packages are told apart from the environment's archive by URL.

A step whose Build-Depends the environment already satisfies is told in ~0.1 s by
``dpkg-checkbuilddeps`` against the environment's dpkg status, without running apt at all.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from buildfarm.model.errors import TemporaryError
from buildfarm.model.types import AptSource

APT_TIMEOUT_SECONDS = 300
"""An apt run here reads local lists (seconds) or fetches the farm's own small indexes."""
VIEW_MEMBERS = ("./var/lib/apt/lists", "./var/lib/dpkg/status", "./var/lib/dpkg/arch", "./etc/apt")
_URI = re.compile(r"^'(?P<uri>[^']+)' (?P<file>\S+\.deb) ")
SBUILD_CORE_DEPENDS = "build-essential, fakeroot"
"""What sbuild's dummy package depends on besides the source's Build-Depends."""


def apt_view(tarball: Path, digest: str, root: Path) -> Path:
    """``root/<digest>``: the environment's apt lists, dpkg status and apt configuration, taken
    out of its tarball once (atomically: a temporary name, then a rename)."""
    view = root / digest
    if (view / "var" / "lib" / "dpkg" / "status").is_file():
        return view
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".new-{digest[:12]}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        extracted = subprocess.run(
            ["tar", "-C", str(tmp), "--no-same-owner", "--wildcards", "-xf", str(tarball), *VIEW_MEMBERS],
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_SECONDS,
            check=False,
        )
        # ./var/lib/dpkg/arch exists only with foreign architectures: tar says "not found"
        if not (tmp / "var" / "lib" / "dpkg" / "status").is_file():
            raise TemporaryError(f"cannot read the apt state of {tarball}: {extracted.stderr.strip()}")
        try:
            os.rename(tmp, view)
        except OSError:  # another step took it out first
            if not (view / "var" / "lib" / "dpkg" / "status").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return view


def unlike_host(view: Path) -> str:
    """Why the host's apt cannot stand in for the environment's ("" when it can): the set is
    resolved on the host, so the environment must have apt of the host's release series (another
    distribution's apt may decide otherwise) and no foreign architecture (a cross-build
    environment resolves ``:native``/``:any`` otherwise)."""
    arch = view / "var" / "lib" / "dpkg" / "arch"
    if arch.is_file() and len(arch.read_text().split()) > 1:
        return "a multi-architecture environment: no layers for it"
    status = (view / "var" / "lib" / "dpkg" / "status").read_text(errors="replace")
    inside = next(
        (
            line.partition(":")[2].strip()
            for stanza in status.split("\n\n")
            if stanza.startswith("Package: apt\n")
            for line in stanza.splitlines()
            if line.startswith("Version:")
        ),
        "",
    )
    host = _host_apt_version()
    if _series(inside) != _series(host):  # a stable release's updates keep the resolver
        return f"the environment's apt {inside or '?'} is not the host's {host or '?'}: no layers for it"
    return ""


def _series(version: str) -> str:
    """``2.6`` of ``2.6.1``: apt's release series (its resolver changes only between series)."""
    return ".".join(version.rpartition(":")[2].split(".")[:2])


@functools.cache
def _host_apt_version() -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "apt"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip()


def build_depends_met(view: Path, dsc: Path) -> bool:
    """Whether the environment already satisfies every Build-Depends and Build-Conflicts of
    ``dsc`` (arch and indep) and what sbuild adds to them (:data:`SBUILD_CORE_DEPENDS`: fakeroot
    is no Build-Essential package, so dpkg-checkbuilddeps alone would not ask for it): then
    sbuild has nothing to install (its resolver is not even run)."""
    depends, conflicts = dependency_string(dsc)
    checked = subprocess.run(
        [
            "dpkg-checkbuilddeps",
            f"--admindir={view / 'var' / 'lib' / 'dpkg'}",
            f"-d{depends}",
            *([f"-c{conflicts}"] if conflicts else []),
            str(dsc),
        ],
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT_SECONDS,
        check=False,
        env=dict(os.environ, LC_ALL="C.UTF-8"),
    )
    return checked.returncode == 0


def dependency_string(dsc: Path) -> tuple[str, str]:
    """(what to satisfy, what must not be installed) of ``dsc``, as sbuild's dummy package."""
    fields: dict[str, str] = {}
    current = ""
    for line in dsc.read_text(errors="replace").splitlines():
        if line.startswith("-----BEGIN PGP SIGNATURE"):
            break
        if line[:1] in (" ", "\t") and current:
            fields[current] += " " + line.strip()
        elif ":" in line:
            current, _, value = line.partition(":")
            current = current.strip().lower()
            fields[current] = value.strip()
    depends = [SBUILD_CORE_DEPENDS] + [
        fields[f] for f in ("build-depends", "build-depends-arch", "build-depends-indep") if fields.get(f)
    ]
    conflicts = [
        fields[f]
        for f in ("build-conflicts", "build-conflicts-arch", "build-conflicts-indep")
        if fields.get(f)
    ]
    return ", ".join(depends), ", ".join(conflicts)


@dataclass(frozen=True)
class ResolvedPackage:
    name: str
    version: str
    architecture: str
    uri: str
    filename: str  # what apt names the downloaded .deb

    def pin(self) -> str:
        """``name:arch=version``: the package's identity in a layer (as ``dpkg-query`` lists it)."""
        return f"{self.name}:{self.architecture}={self.version}"

    def apt_pin(self) -> str:
        """What apt installs it by (apt takes no ``:all`` qualifier)."""
        return self.pin().replace(":all=", "=")


class AptOnView:
    """The host's apt run on an environment's apt state plus ``extra`` repositories, in ``work``."""

    def __init__(
        self,
        view: Path,
        work: Path,
        extra: Sequence[AptSource] = (),
        proxy: str | None = None,
        direct_hosts: Sequence[str] = (),
    ) -> None:
        self.view = view
        self.work = work
        self.extra = list(extra)
        self.proxy = proxy
        self.direct_hosts = list(direct_hosts)
        self.lists = work / "lists"
        self.archives = work / "archives"
        for sub in ("lists/partial", "archives/partial", "cache", "parts", "log", "extra-lists/partial"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.extended_states = work / "extended_states"
        self.extended_states.touch()
        env_sources = view / "etc" / "apt" / "sources.list"
        lines = env_sources.read_text().splitlines() if env_sources.is_file() else []
        for part in sorted((view / "etc" / "apt" / "sources.list.d").glob("*.list")):
            lines += part.read_text().splitlines()
        # The lists were checked when the environment was made; the host need not hold its keys.
        self.archive_lines = [_trusted(line) for line in lines if line.strip().startswith("deb ")]
        self.extra_lines = [s.line() for s in self.extra]
        (work / "sources.list").write_text("\n".join(self.archive_lines + self.extra_lines) + "\n")
        (work / "extra.list").write_text("\n".join(self.extra_lines) + "\n")
        (work / "apt.conf").write_text("")

    def archive_urls(self) -> list[str]:
        return [url for url in map(_url, self.archive_lines) if url]

    def _options(self, sources: Path, lists: Path) -> list[str]:
        options = {
            "Dir::Etc::SourceList": sources,
            "Dir::Etc::SourceParts": self.work / "parts",
            "Dir::Etc::Parts": self.work / "parts",
            "Dir::Etc::Preferences": self.work / "preferences",
            "Dir::Etc::PreferencesParts": self.work / "parts",
            "Dir::Etc::Trusted": self.view / "etc" / "apt" / "trusted.gpg",
            "Dir::Etc::TrustedParts": self.view / "etc" / "apt" / "trusted.gpg.d",
            "Dir::State::Lists": lists,
            "Dir::State::status": self.view / "var" / "lib" / "dpkg" / "status",
            "Dir::State::extended_states": self.extended_states,
            "Dir::Cache": self.work / "cache",
            # apt's parse of the environment's ~50 MB of lists, made once per environment (apt
            # writes it atomically and checks it against the lists); with extra repositories the
            # lists differ, so those steps parse them in their own directory
            "Dir::Cache::srcpkgcache": (self.work / "cache" if self.extra else self.view) / "srcpkgcache.bin",
            "Dir::Cache::pkgcache": "",
            "Dir::Cache::archives": self.archives,
            "Dir::Log": self.work / "log",
            "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root",
            "APT::Install-Recommends": "false",
            "APT::Get::Assume-Yes": "true",
        }
        if self.proxy:
            options["Acquire::http::Proxy"] = self.proxy
            for host in self.direct_hosts:
                options[f"Acquire::http::Proxy::{host}"] = "DIRECT"
        return [f"-o{k}={v}" for k, v in options.items()]

    def _run(self, args: list[str], sources: Path, lists: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env |= {"APT_CONFIG": str(self.work / "apt.conf"), "LC_ALL": "C.UTF-8"}
        try:
            return subprocess.run(
                ["apt-get", "-q", *self._options(sources, lists), *args],
                capture_output=True,
                text=True,
                timeout=APT_TIMEOUT_SECONDS,
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"apt took over {APT_TIMEOUT_SECONDS} s", retry_after=30) from exc

    def prepare(self) -> None:
        """The environment's lists plus the extra repositories' fresh ones, in one lists directory."""
        extra_lists = self.work / "extra-lists"
        if self.extra_lines:
            updated = self._run(["update"], self.work / "extra.list", extra_lists)
            if updated.returncode != 0:
                raise TemporaryError(f"apt-get update of the step's repositories failed: {_tail(updated)}")
        for source in (self.view / "var" / "lib" / "apt" / "lists", extra_lists):
            for item in source.iterdir():
                if item.is_file() and item.name != "lock":
                    target = self.lists / item.name
                    try:
                        os.link(item, target)
                    except OSError:
                        shutil.copy2(item, target)

    def resolve(self, depends: str, conflicts: str) -> list[ResolvedPackage]:
        """What apt would install into the environment for ``depends`` (and ``conflicts``)."""
        relations = [depends] + ([f"Conflicts: {conflicts}"] if conflicts else [])
        done = self._run(
            ["satisfy", "--print-uris", "-qq", *relations], self.work / "sources.list", self.lists
        )
        if done.returncode != 0:
            raise UnresolvableError(_tail(done))
        found = []
        for line in done.stdout.splitlines():
            match = _URI.match(line)
            if match:
                name, version, arch = unquote(match["file"]).removesuffix(".deb").split("_")
                found.append(ResolvedPackage(name, version, arch, match["uri"], match["file"]))
        return found

    def download(self, packages: Sequence[ResolvedPackage]) -> Path:
        """Fetch ``packages`` (through the proxy) into the archives directory; returns it."""
        done = self._run(
            ["install", "--download-only", *(p.apt_pin() for p in packages)],
            self.work / "sources.list",
            self.lists,
        )
        if done.returncode != 0:
            raise TemporaryError(f"downloading the layer's packages failed: {_tail(done)}", retry_after=30)
        return self.archives


class UnresolvableError(Exception):
    """apt found no way to install the Build-Depends (sbuild will say why, in the step's log)."""


def _trusted(line: str) -> str:
    """``line`` with ``trusted=yes`` among its options (any ``signed-by`` names a path inside
    the environment, which means nothing on the host)."""
    kind, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if rest.startswith("["):
        options, _, rest = rest[1:].partition("]")
        kept = [o for o in options.split() if not o.startswith(("trusted=", "signed-by="))]
        return " ".join([kind, "[" + " ".join(["trusted=yes", *kept]) + "]", rest.strip()])
    return " ".join([kind, "[trusted=yes]", rest])


def _url(line: str) -> str:
    """The URL of a one-line ``deb`` source."""
    rest = line.strip().partition(" ")[2].strip()
    if rest.startswith("["):
        rest = rest.partition("]")[2].strip()
    return rest.split()[0].rstrip("/") + "/" if rest else ""


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
