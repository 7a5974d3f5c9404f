"""The ``unshare`` runner: what a builder pod does, on the node, in one user namespace per step.

A package-builder pod on Kubernetes runs one command, ``buildfarm-step package``
(buildtools/builder/buildfarm-step), in an image that is the farm's environment plus python3
(:func:`buildfarm.environments.builder_spec`, the recipe :func:`~buildfarm.environments.spec_for`
gives this runner).  This runner runs the same command in a chroot of
the same environment on the worker's own node: the step's tarball (its environment, or that
environment's dependency layer, exactly as the sbuild runner chooses it:
:class:`~buildfarm.runners.envrunner.EnvironmentRunner`) unpacked once under the farm's chroot
root (tmpfs by default; :mod:`buildfarm.runners.trees`) is the lower layer of an overlay mounted
for the step, whose writes go to the attempt's own directory (``overlay=False``: the tarball is
unpacked for each step instead), all **inside** a user namespace mapped onto the subordinate ids
of /etc/subuid and /etc/subgid (``unshare --map-auto``), so root in the build is not root on the
host; /proc and a minimal /dev (the host's null, zero, full, random, urandom, tty bound in, a
private /dev/shm and /dev/pts) are mounted in a private mount and PID namespace, and
``buildfarm-step`` runs chrooted there: ``dpkg-source -x``, apt only when the tarball lacks a
Build-Depends (refreshing only the build's own repositories when the environment carries the
mirror's lists), then ``dpkg-buildpackage -b`` in a network namespace of its own (loopback
only), as sbuild builds.  A cross step (a foreign ``host_arch``) runs ``buildfarm-step
--host-arch`` in the cross environment of the recipe, as sbuild ``--host`` does in sbuild's.

Why not sbuild (runners/sbuildrc): sbuild 0.85 runs ~80 commands per build in the chroot, each in
a fresh namespace (~0.15 s apiece on a loaded node), which makes ~6 s of setup for a trivial step
on an idle node; here the whole step is one namespace and one command.  What differs from sbuild:
the build runs as root of the namespace (sbuild builds as its mapped ``sbuild`` user); the
environment also holds python3 and ca-certificates (the entrypoint's, as in a pod); apt installs
Build-Depends with ``apt-get build-dep`` (any satisfiable alternative; sbuild's apt resolver
takes only the first of ``a | b``); no .changes is kept (the farm stores .deb and .buildinfo
either way), no lintian (sbuild runs none here either); the build directory is
``/buildfarm/work/src`` (sbuild's ``/build/<pkg>-XXXXXX/<pkg>-<version>``).

Inputs go in through one small tar stream (the source, the entrypoint, keys of signed sources,
apt's proxy setting and the host's resolv.conf) and the outputs archive comes out through a file
descriptor: the mapped users can reach nothing of the worker's private directories.  The outputs
archive is checked as a pod's is (:func:`buildfarm.runners.outputs.unpack_outputs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from buildfarm.environments import EnvironmentCache, EnvironmentSpec, LayerPolicy, StepTarball
from buildfarm.environments.layermaker import DEVICE_EXCLUDES
from buildfarm.model.errors import PermanentError
from buildfarm.model.types import PACKAGE_SUFFIXES, AptSource, RunnerKind
from buildfarm.runners.base import REMOVE_TIMEOUT_SECONDS, StepJob, StepResult, remove_mapped_tree
from buildfarm.runners.envrunner import EnvironmentRunner, apt_proxy_conf, farm_hosts, step_dsc
from buildfarm.runners.outputs import unpack_outputs
from buildfarm.runners.process import ProcessOutcome, describe_failure, run_streaming
from buildfarm.runners.trees import UnpackedTrees

BUILDER_ENTRYPOINT = Path(__file__).resolve().parents[3] / "buildtools" / "builder" / "buildfarm-step"
"""buildtools/builder/buildfarm-step: the package-builder image's entrypoint, run in the chroot."""
INSIDE = "/buildfarm"
"""The step's own directory in the chroot: the source, the entrypoint, the work tree, the outputs."""
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUTS_MAX_BYTES = 4 << 30
"""Most bytes of outputs archive a step may hand back (what the kubernetes runner allows by default)."""
TREES = "trees"
"""The unpacked trees' directory in the farm's chroot root (beside the attempts' directories)."""

STEP_SCRIPT = r"""
set -eu
root=$1; shift
if [ -n "$LOWER" ]; then
    mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK,$OVERLAY_OPTIONS" "$root"
else
    tar -C "$root" --numeric-owner -xf - $TAR_EXCLUDES <&3
fi
exec 3<&-
tar -C "$root" --no-same-owner -xf - <&4
exec 4<&-
for name in null zero full random urandom tty; do
    : > "$root/dev/$name"
    mount --bind "/dev/$name" "$root/dev/$name"
done
mkdir -p "$root/dev/shm" "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
rm -f "$root/dev/ptmx"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t proc proc "$root/proc"
[ -e "$root/dev/fd" ] || ln -s /proc/self/fd "$root/dev/fd"
if [ ! -x "$root/usr/bin/python3" ]; then
    echo "the environment has no python3 for buildfarm-step (the unshare runner's recipe adds it)"
    exit 2
fi
status=0
chroot "$root" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    python3 /buildfarm/buildfarm-step package --workdir /buildfarm/work \
    --source-file /buildfarm/source.tar.gz --outputs-file /buildfarm/outputs.tar.gz "$@" || status=$?
cat "$root/buildfarm/outputs.tar.gz" >&5 2>/dev/null || true
exit "$status"
"""
"""Runs as root of the step's user namespace (pid 1 of its PID namespace): fd 3 the step's
tarball, fd 4 the inputs tar, fd 5 where the outputs archive goes; its arguments: the chroot's
directory, then buildfarm-step's options.  With ``LOWER`` (the tarball unpacked once,
:mod:`buildfarm.runners.trees`) the chroot is an overlay on it instead of a fresh unpack;
``userxattr`` (overlay's own attributes as user.* ones, which tmpfs keeps): without, a directory made in
it cannot be renamed (EXDEV: dpkg unpacks every new directory as ``<name>.dpkg-new`` first).
Like Docker's overlay2 (redirect_dir off), renaming a directory of the tarball itself still
gets EXDEV, which ``mv`` and dpkg's own paths never need.
Whatever it leaves (the tree, the mounts) goes with the namespace; the runner removes the tree."""

OPEN_FDS = 'exec 3<"$1" 4<"$2" 5>"$3"; shift 3; exec "$@"'
"""The worker opens the files the mapped root cannot reach, then becomes ``unshare``."""

OVERLAY_OPTIONS = "userxattr"
PROBE_SCRIPT = r"""
set -eu
d=$1
mkdir -p "$d/lower/dir/sub"
mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work,$2" "$d/root"
mkdir "$d/root/dir/new.dpkg-new"
mv "$d/root/dir/new.dpkg-new" "$d/root/dir/new"
rm -r "$d/root/dir/sub"
mkdir "$d/root/dir/sub"
"""
"""What a step's overlay must allow (dpkg makes each new directory as ``<name>.dpkg-new`` and
renames it; a directory of the tarball removed and made again needs overlay's opaque attribute),
mounted in a user namespace like a step's, on the same filesystem.  tmpfs keeps the
``user.*`` attributes ``userxattr`` needs only from Linux 6.6 (Debian 12's kernel is 6.1)."""


def overlay_works(tmpdir: Path, options: str = OVERLAY_OPTIONS) -> bool:
    """Whether a step's overlay can be mounted under ``tmpdir`` and a new directory renamed in
    it, tried once in a user namespace as a step's (a few tens of milliseconds)."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    tmpdir.chmod(0o755)  # as a step makes it: the namespace's root (a subordinate id) passes through
    probe = Path(tempfile.mkdtemp(prefix="overlay-probe-", dir=tmpdir))
    try:
        for part in ("lower", "upper", "work", "root"):
            (probe / part).mkdir()
            (probe / part).chmod(0o777)  # the namespace's root (a subordinate id as root) writes here
        probe.chmod(0o755)
        done = subprocess.run(
            [*namespace_prefix(), "sh", "-c", PROBE_SCRIPT, "probe", str(probe), options],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        remove_mapped_tree(probe)


"""The worker opens the files the mapped root cannot reach, then becomes ``unshare``."""


def overlay_fallback(tmpdir: Path) -> str | None:
    """None where a step's overlay works under ``tmpdir`` (the farm's chroot root), else the line
    saying that each step unpacks its tarball instead, why, and what to do about it."""
    if overlay_works(tmpdir):
        return None
    return (
        f"no overlay with {OVERLAY_OPTIONS} in a user namespace under {tmpdir} (tmpfs keeps user "
        "xattrs from Linux 6.6): each step unpacks its tarball, a few seconds more per step "
        "(BUILDFARM_SBUILD_TMPDIR on a disk filesystem such as ext4 keeps them)"
    )


def subordinate_ids() -> tuple[int, int]:
    """The first subordinate uid and gid of this user (/etc/subuid, /etc/subgid), where the
    build's root is mapped: what ``unshare --map-auto`` maps from."""
    uid = os.geteuid()
    names = {str(uid)}
    with contextlib.suppress(KeyError):
        names.add(pwd.getpwuid(uid).pw_name)
    found = []
    for table in (Path("/etc/subuid"), Path("/etc/subgid")):
        try:
            lines = table.read_text().splitlines()
        except OSError:
            lines = []
        starts = [int(f[1]) for f in (line.split(":") for line in lines) if len(f) == 3 and f[0] in names]
        if not starts:
            user = sorted(names)[-1]
            raise PermanentError(
                f"{table} gives {user} no subordinate ids: the unshare runner maps the build's users "
                f"onto them (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user})"
            )
        found.append(starts[0])
    return found[0], found[1]


USERNS_SYSCTLS = (
    ("user.max_user_namespaces", "0", "15000", False),
    ("kernel.unprivileged_userns_clone", "0", "1", True),
    ("kernel.apparmor_restrict_unprivileged_userns", "1", "0", True),
)
"""The sysctls that turn user namespaces off: (name, the value that does, the one that allows them,
whether it stops only unprivileged users)."""


def _userns_remedy() -> str:
    """What to do where a user namespace could not be made: the sysctl that forbids it, if one
    does, else what a container's runtime must allow."""
    for name, off, on, unprivileged_only in USERNS_SYSCTLS:
        if unprivileged_only and os.geteuid() == 0:
            continue
        try:
            value = Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError:
            continue
        if value == off:
            return f"{name} is {off} here (sysctl -w {name}={on})"
    return "in a container, its runtime must allow user namespaces (unshare(CLONE_NEWUSER), newuidmap)"


def check_namespaces(runner: str = "unshare") -> None:
    """Raise one line saying why and what to do where this user cannot make a step's user
    namespace: no subordinate ids (:func:`subordinate_ids`), or user namespaces refused (the
    kernel's sysctls, a container's seccomp profile).  ``unshare ... true``: tens of milliseconds.
    ``runner`` names who needs it: the unshare runner, or sbuild (``--chroot-mode=unshare``)."""
    subordinate_ids()
    # a bare user namespace first: where unshare(2) fails, ``--map-auto``'s id-mapping helper
    # is left waiting for a namespace that never comes (and holds the pipes open)
    for command in (["unshare", "--user", "true"], [*namespace_prefix(), "true"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            reason = str(exc)
            break
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            reason = lines[-1] if lines else f"unshare exited {done.returncode}"
            break
    else:
        return
    also = (
        "sbuild's unshare mode needs one too"
        if runner == "unshare"
        else "it runs sbuild --chroot-mode=unshare, as the unshare runner needs one too"
    )
    raise PermanentError(
        f"the {runner} runner cannot make a user namespace here ({reason}): {_userns_remedy()}; "
        f"{also}, the host runner (--runner host) builds without"
    )


def namespace_prefix() -> list[str]:
    """``unshare`` into the step's user, mount and PID namespaces.  As root, the build's root is
    the first subordinate id (not the host's root); as another user, the build's root is that
    user and every other id a subordinate one (what sbuild's unshare mode does)."""
    if os.geteuid() == 0:
        user = ["--map-auto", "--setuid=0", "--setgid=0"]
    else:
        user = ["--map-auto", "--map-root-user"]
    return ["unshare", *user, "--mount", "--pid", "--fork", "--kill-child"]


def remove_trees(chroots: Path) -> None:
    """Remove the unpacked trees of a farm's chroot root (``buildfarm stop``: ~0.5 GB of tmpfs
    each, of no use once no node runs)."""
    remove_mapped_tree(chroots / TREES)
    with contextlib.suppress(OSError):
        chroots.rmdir()


def chroot_source(source: AptSource, index: int) -> tuple[AptSource, tuple[str, Path] | None]:
    """``source`` as apt in the chroot reads it, and the key file to copy in (signed sources:
    the key's host path means nothing there)."""
    if source.signed_by is None:
        return source, None
    key = Path(source.signed_by)
    inside = f"/etc/apt/keyrings/buildfarm-{index}{key.suffix or '.gpg'}"
    return replace(source, signed_by=inside), (inside, key)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


class UnshareRunner(EnvironmentRunner):
    """Runs each step as a builder pod would, in a chroot of its tarball in one user namespace.

    ``entrypoint``: the ``buildfarm-step`` to run (the repository's own).  ``overlay`` (with a
    ``tmpdir``): each step's chroot is an overlay on its tarball unpacked once under
    ``<tmpdir>/trees`` (:class:`~buildfarm.runners.trees.UnpackedTrees`); without, the tarball
    is unpacked for each step (``make bench`` compares both)."""

    name: str = RunnerKind.UNSHARE
    entrypoint: Path = BUILDER_ENTRYPOINT

    def __init__(
        self,
        base_tarball: Path | None,
        distribution: str,
        tmpdir: Path | None = None,
        *,
        environments: EnvironmentCache | None = None,
        spec: EnvironmentSpec | None = None,
        apt_proxy: str | None = None,
        layers: LayerPolicy | None = None,
        overlay: bool = True,
    ) -> None:
        super().__init__(
            base_tarball,
            distribution,
            tmpdir,
            environments=environments,
            spec=spec,
            apt_proxy=apt_proxy,
            layers=layers,
        )
        self.trees = None
        self._overlay_checked = False
        self._namespaces_checked = False
        if overlay and tmpdir is not None:
            self.trees = UnpackedTrees(tmpdir / TREES, self._unpack_tree, self.remove_tree)

    def _usable_trees(self, chroots: Path, log: Callable[[str], None]) -> UnpackedTrees | None:
        """The unpacked trees, once an overlay was seen to work here (checked at the first step,
        not when the runner is made: API processes make runners too); else None, and every step
        unpacks its tarball (a few seconds more of setup per step, said once in the step's log)."""
        if self.trees is not None and not self._overlay_checked:
            self._overlay_checked = True
            fallback = overlay_fallback(chroots.parent)
            if fallback is not None:
                self.trees = None
                log(f"buildfarm: {fallback}")
        return self.trees

    def _owned_dir(self, path: Path) -> None:
        """A new directory the build's root owns (a subordinate id when the worker is root)."""
        path.mkdir()
        path.chmod(0o755)
        if os.geteuid() == 0:
            os.chown(path, *subordinate_ids())

    def _unpack_tree(self, tarball: Path, dest: Path) -> None:
        """Unpack ``tarball`` into ``dest`` (new) as the builds' mapped root (an overlay's lower)."""
        self._owned_dir(dest)
        with tarball.open("rb") as stream:
            done = subprocess.run(
                [
                    *namespace_prefix(),
                    "tar",
                    "-C",
                    str(dest),
                    "--numeric-owner",
                    "-xf",
                    "-",
                    *DEVICE_EXCLUDES,
                ],
                stdin=stream,
                capture_output=True,
                text=True,
                timeout=REMOVE_TIMEOUT_SECONDS,
                check=False,
            )
        if done.returncode != 0:
            raise PermanentError(f"unpacking {tarball.name} failed: {done.stderr.strip()[-500:]}")

    def remove_tree(self, path: Path) -> None:
        remove_mapped_tree(path)

    def _check_tools(self) -> None:
        needed = [("unshare", "util-linux"), ("dpkg-source", "dpkg-dev")]
        if os.geteuid() != 0:
            needed.append(("newuidmap", "uidmap"))
        for tool, package in needed:
            if shutil.which(tool) is None:
                raise PermanentError(f"{tool} is not installed (Debian package: {package})")
        if not self.entrypoint.is_file():
            raise PermanentError(f"the builder entrypoint {self.entrypoint} is missing (buildtools/builder)")
        if not self._namespaces_checked:  # one line saying why and what to do, not unshare's own
            check_namespaces()
            self._namespaces_checked = True

    def _inputs(self, job: StepJob, dest: Path) -> list[str]:
        """Write the inputs tar (unpacked over the chroot's root); return buildfarm-step's
        ``--apt-source`` arguments."""
        args: list[str] = []
        with tarfile.open(dest, "w") as tar:
            tar.add(job.source_tarball, f"{INSIDE.lstrip('/')}/source.tar.gz", recursive=False)
            _add_file(tar, f"{INSIDE}/buildfarm-step", self.entrypoint.read_bytes(), 0o755)
            resolv = Path("/etc/resolv.conf")
            if resolv.is_file():  # apt reaches what the worker reaches (the build itself: nothing)
                _add_file(tar, "etc/resolv.conf", resolv.read_bytes())
            if self.apt_proxy:
                conf = apt_proxy_conf(self.apt_proxy, farm_hosts(job.extra_sources))
                _add_file(tar, "etc/apt/apt.conf.d/99buildfarm-proxy", conf.encode())
            for index, source in enumerate(job.extra_sources):
                inside, key = chroot_source(source, index)
                if key is not None:
                    try:
                        _add_file(tar, key[0], key[1].read_bytes())
                    except OSError as exc:
                        raise PermanentError(f"cannot read the key {key[1]} of {source.url}: {exc}") from exc
                args += ["--apt-source", inside.line()]
        return args

    def run(self, job: StepJob) -> StepResult:
        self._check_tools()
        dsc = step_dsc(job)
        if isinstance(dsc, StepResult):
            return dsc
        sha256 = hashlib.sha256(job.source_tarball.read_bytes()).hexdigest()
        cross = job.host_arch not in ("", self.native_architecture())
        inputs = job.workdir / "inputs.tar"
        archive = job.workdir / "outputs.tar.gz"
        apt_sources = self._inputs(job, inputs)
        chosen: StepTarball | None = None
        with self.attempt_chroots(job) as chroots, contextlib.ExitStack() as stack:
            try:
                chosen, has_lists = self._step_tarball(job, dsc, chroots)
                step_args = [
                    "--source-sha256",
                    sha256,
                    "--timeout",
                    f"{max(job.timeout_seconds, 1.0):.0f}",
                    "--no-build-network",
                    *(["--host-arch", job.host_arch] if cross else []),
                    *([] if job.arch_all else ["--no-arch-all"]),
                ]
                if chosen.satisfied:  # the tarball has every Build-Depends: no apt at all
                    step_args.append("--no-build-deps")
                else:
                    step_args += apt_sources
                    if has_lists:  # the mirror's lists are there: refresh the farm's repositories only
                        step_args.append("--update-given-only")
                base = chroots or job.workdir
                base.parent.chmod(0o755)  # the build's root reaches its tree whatever the umask
                base.chmod(0o755)
                env = {
                    "PATH": os.environ.get("PATH", CHROOT_PATH),
                    "CHROOT_PATH": CHROOT_PATH,
                    "TAR_EXCLUDES": " ".join(DEVICE_EXCLUDES),
                    "LOWER": "",
                    "OVERLAY_OPTIONS": OVERLAY_OPTIONS,
                }
                trees = self._usable_trees(chroots, job.log) if chroots is not None else None
                if trees is not None:
                    lower = stack.enter_context(trees.lower(chosen.path))
                    for part in ("upper", "work"):
                        self._owned_dir(base / part)
                    env |= {"LOWER": str(lower), "UPPER": str(base / "upper"), "WORK": str(base / "work")}
                root = base / "root"
                self._owned_dir(root)
                command = [
                    *("sh", "-c", OPEN_FDS, "sh", str(chosen.path), str(inputs), str(archive)),
                    *namespace_prefix(),
                    *("sh", "-c", STEP_SCRIPT, "step", str(root), *step_args),
                ]
                last: list[str] = [""]

                def log(line: str) -> None:
                    job.log(line)
                    if line.strip():
                        last[0] = line.strip()

                outcome = run_streaming(
                    command,
                    cwd=job.workdir,
                    log=log,
                    cancel=job.cancel,
                    timeout_seconds=job.timeout_seconds + 60,  # buildfarm-step keeps the limit itself
                    env=env,
                )
            finally:
                if chosen is not None:
                    chosen.release()  # the layer may be evicted again
        layer = chosen.label if chosen is not None and chosen.result else None
        return self._result(job, outcome, archive, layer, last[0])

    def _result(
        self, job: StepJob, outcome: ProcessOutcome, archive: Path, layer: str | None, last_line: str
    ) -> StepResult:
        """The step's result from the outputs archive buildfarm-step wrote (checked as a pod's);
        without one (the chroot could not be set up), the log's last line says why."""
        written = archive.is_file() and archive.stat().st_size > 0
        if outcome.cancelled or outcome.timed_out or outcome.killed_by or not written:
            failure = describe_failure("buildfarm-step", outcome, job.timeout_seconds)
            if not (outcome.cancelled or outcome.timed_out or outcome.killed_by) and last_line:
                failure = f"{failure}: {last_line}"
            return StepResult(False, [], failure, killed_by=outcome.killed_by, layer=layer)
        if archive.stat().st_size > OUTPUTS_MAX_BYTES:
            return StepResult(
                False, [], f"the outputs archive exceeds {OUTPUTS_MAX_BYTES} bytes", layer=layer
            )
        result = unpack_outputs(archive, job.workdir / "outputs")
        if not result.ok:
            error = result.error or describe_failure("buildfarm-step", outcome, job.timeout_seconds)
            return StepResult(False, [], error, layer=layer)
        if outcome.returncode != 0:
            return StepResult(
                False, [], f"buildfarm-step exited {outcome.returncode} but says ok", layer=layer
            )
        if not any(p.name.endswith(PACKAGE_SUFFIXES) for p in result.files):
            return StepResult(False, [], "the build succeeded but produced no .deb", layer=layer)
        return StepResult(True, list(result.files), layer=layer)
