"""A ``git`` package in git-buildpackage layout: its upstream tarball made by ``gbp export-orig``.

A gbp repository keeps the packaging (``debian/``) on the branch the manifest's ``ref`` names,
the upstream sources on an upstream branch tagged ``upstream/<version>`` (gbp's
``--upstream-tag``, as ``debian/gbp.conf`` may change it), and often the exact upstream
tarballs on a ``pristine-tar`` branch.  The manifest says so explicitly (``layout: gbp``):
guessing from a ``debian/gbp.conf`` would silently change how a plain repository builds.

The checkout of ``ref`` is one commit deep; this module fetches, one commit deep each and
through the same hardened git invocation and URL policy
(:func:`buildfarm.engine.fetch.fetch_refs`), the refs gbp needs beside it: the upstream tag for
the changelog's upstream version, the ``pristine-tar`` branch, and the upstream branch (whose
tree pristine-tar rebuilds from when the tag is missing).  Submodules are never followed.
Then Debian's tool makes the tarball(s): from pristine-tar when the branch is there (the
upstream's own bytes), else from the upstream tag (``git archive``).  A repository from which
neither can be made is one line naming the tag and branch tried.

The tarballs it made lie beside the tree, so the ordinary tree resolver builds the source
package with ``dpkg-source -b`` and keeps them as build inputs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from buildfarm.engine.fetch import fetch_refs
from buildfarm.model.debsource import needs_upstream, tree_format, upstream_files_in, upstream_version
from buildfarm.model.errors import PermanentError, TemporaryError
from buildfarm.model.planner import read_source_info
from buildfarm.model.urlpolicy import UrlPolicy

GBP_TIMEOUT_SECONDS = 600
"""``gbp export-orig`` of a big upstream (compressing hundreds of MiB) takes minutes."""
PRISTINE_TAR_BRANCH = "pristine-tar"
"""gbp's fixed name for the branch pristine-tar commits to."""
_TAG_OF_VERSION = (
    "import sys\n"
    "from gbp.deb.git import DebianGitRepository\n"
    "print(DebianGitRepository.version_to_tag(sys.argv[1], sys.argv[2]))\n"
)
"""gbp's own version-to-tag mangling (``~`` to ``_``, ``:`` to ``%``, ``%(version%A%B)s``), run
with the system python that carries gbp: the tag fetched is the one gbp will look for."""


def _gbp_env(home: Path) -> dict[str, str]:
    """No user's or admin's gbp/git configuration: only the repository's debian/gbp.conf."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GBP_CONF_FILES": "%(top_dir)s/debian/gbp.conf",
    }


def _run(args: list[str], cwd: Path, home: Path, what: str) -> str:
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            env=_gbp_env(home),
            capture_output=True,
            text=True,
            timeout=GBP_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise PermanentError(f"{exc.filename} is not installed (Debian package: git-buildpackage)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"{what}: {Path(args[0]).name} took over {GBP_TIMEOUT_SECONDS} s") from exc
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("gbp:error:")] or [
            line for line in lines if "error" in line.lower()
        ]
        raise PermanentError(
            f"{what}: {' '.join(args[:2])} failed: {(errors or lines or ['(no message)'])[-1]}"
        )
    return result.stdout.strip()


def upstream_tag(repo: Path, version: str, home: Path, what: str) -> str:
    """The upstream tag gbp looks for: ``upstream-tag`` of debian/gbp.conf (default
    ``upstream/%(version)s``) filled with ``version`` as gbp mangles it."""
    pattern = _run(["gbp", "config", "export-orig.upstream-tag"], repo, home, what)
    return _run(["/usr/bin/python3", "-c", _TAG_OF_VERSION, pattern, version], repo, home, what)


def export_orig(url: str, repo: Path, out: Path, what: str, policy: UrlPolicy) -> list[Path]:
    """Make the upstream tarball(s) of the gbp checkout ``repo`` (fetched from ``url``) into
    ``out``: nothing for a native package.  One line naming the tag and branch tried when
    neither gives one."""
    info = read_source_info(repo, what)
    if not needs_upstream(tree_format(repo), info.version):
        return []
    out.mkdir(parents=True, exist_ok=True)
    home = out / ".home"
    home.mkdir(exist_ok=True)
    upstream = upstream_version(info.version)
    tag = upstream_tag(repo, upstream, home, what)
    tag_ref, pristine_ref = f"refs/tags/{tag}", f"refs/heads/{PRISTINE_TAR_BRANCH}"
    # pristine-tar rebuilds the tarball from the upstream tree it recorded: the tag's, or the
    # upstream branch's tip when the tag is missing, so that branch comes too (one commit)
    branch = _run(["gbp", "config", "export-orig.upstream-branch"], repo, home, what)
    found = fetch_refs(url, [tag_ref, pristine_ref, f"refs/heads/{branch}"], repo, what, policy)
    tried = f"upstream tag {tag!r} and branch {PRISTINE_TAR_BRANCH!r}"
    if tag_ref not in found and pristine_ref not in found:
        raise PermanentError(
            f"{what}: no upstream tarball for {info.name} {upstream} can be made: the repository "
            f"has neither the upstream tag {tag!r} nor the branch {PRISTINE_TAR_BRANCH!r}"
        )
    args = [
        "gbp",
        "export-orig",
        f"--tarball-dir={out}",
        "--upstream-tree=TAG",
        "--no-pristine-tar-commit",
        "--no-submodules",  # a submodule URL would be fetched past the farm's URL policy
        "--pristine-tar" if pristine_ref in found else "--no-pristine-tar",
    ]
    try:
        _run(args, repo, home, what)
    except PermanentError as exc:
        raise PermanentError(f"{exc} (tried the {tried}; the repository has {', '.join(found)})") from exc
    made = upstream_files_in(out, info.name, info.version)
    if not any(".orig.tar." in p.name and not p.name.endswith(".asc") for p in made):
        raise PermanentError(
            f"{what}: gbp export-orig made no {info.name}_{upstream}.orig.tar.* from the {tried}"
        )
    return made
