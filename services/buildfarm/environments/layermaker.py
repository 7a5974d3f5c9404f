"""Making a dependency layer: the environment's tarball with a resolved package set installed.

The packages are downloaded on the host first (through the farm's package cache,
:meth:`buildfarm.environments.resolve.AptOnView.download`), so the chroot needs no network:
the environment is unpacked into a private directory (as sbuild unpacks it, without the device
nodes sbuild binds in itself), apt installs exactly the pinned ``name:arch=version`` list from
the local .debs with the chroot's own apt (which checks them against the environment's lists),
and the tree is packed again.  Anything apt would add beyond the list (a dependency the step's
staging repository satisfied during resolution) makes the layer unfaithful: it is refused and
the step runs in the bare environment instead.

Runs in a private mount and PID namespace (``unshare``), as root or, for a non-root worker,
with the user's subordinate ids mapped (``--map-auto``, as sbuild's unshare mode needs too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from buildfarm.model.errors import PermanentError, TemporaryError

LAYER_TIMEOUT_SECONDS = 1800
"""Installing a large -dev set (a C++ toolchain and friends) takes minutes on a loaded node."""
DEVICE_EXCLUDES = tuple(
    f"--exclude=./dev/{name}"
    for name in ("urandom", "random", "full", "null", "console", "zero", "tty", "ptmx")
)
"""What sbuild leaves out when it unpacks an environment (it binds the host's nodes instead)."""

LAYER_SCRIPT = (
    r"""
set -eu
root=$1; base=$2; debs=$3; out=$4; shift 4
tar -C "$root" -xf "$base" "$@" --numeric-owner
for name in null zero full random urandom tty; do
    : > "$root/dev/$name" 2>/dev/null || true
    mount --bind "/dev/$name" "$root/dev/$name"
done
mount -t proc proc "$root/proc"
cp "$debs"/*.deb "$root/var/cache/apt/archives/"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
"""
    + r"""
status=0
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    LC_ALL=C.UTF-8 apt-get -q -y --no-download --no-install-recommends \
    -o APT::Get::Show-Versions=false install $(cat "$debs/pins") > "$debs/install.log" 2>&1 || status=$?
chroot "$root" /usr/bin/dpkg-query -W -f '${Package}:${Architecture}=${Version}\n' > "$debs/after"
rm -f "$root/usr/sbin/policy-rc.d" "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/cache/apt/*.bin "$root"/var/log/apt/eipp.log.xz
umount "$root/proc"
for name in null zero full random urandom tty; do umount "$root/dev/$name"; rm -f "$root/dev/$name"; done
[ "$status" = 0 ] || { tail -n 5 "$debs/install.log" >&2; exit "$status"; }
tar -C "$root" --numeric-owner --one-file-system --sort=name -cf "$out" .
"""
)


def installed_set(listing: str) -> set[str]:
    """``dpkg-query -W -f '${Package}:${Architecture}=${Version}\\n'`` output as a set."""
    return {line.strip() for line in listing.splitlines() if line.strip()}


def installed_in(admindir: Path) -> set[str]:
    """The ``name:arch=version`` set of a dpkg database (an environment's, on the host)."""
    done = subprocess.run(
        ["dpkg-query", f"--admindir={admindir}", "-W", "-f", "${Package}:${Architecture}=${Version}\\n"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return installed_set(done.stdout)


def unshare_prefix() -> list[str]:
    base = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]
    if os.geteuid() == 0:
        return base
    return [*base[:1], "--map-auto", "--map-root-user", *base[1:]]


def make_layer(
    base: Path,
    debs: Path,
    pins: Sequence[str],
    dest: Path,
    *,
    before: set[str],
    scratch: Path | None = None,
) -> None:
    """Write ``base`` + the .debs in ``debs`` (installed as ``pins``) to the tarball ``dest``.

    ``before``: the environment's installed ``name:arch=version`` set; the layer must hold it
    plus exactly ``pins`` (else :class:`UnfaithfulLayer`).  ``scratch``: where to unpack (tmpfs
    is fastest; default: beside ``dest``)."""
    if shutil.which("unshare") is None:
        raise PermanentError("unshare is not installed (Debian package: util-linux)")
    # apt takes arch-qualified names except for "all" (dpkg-query reports it as the architecture)
    (debs / "pins").write_text("\n".join(p.replace(":all=", "=") for p in pins) + "\n")
    with tempfile.TemporaryDirectory(
        prefix="layer-", dir=scratch or dest.parent, ignore_cleanup_errors=True
    ) as root:
        os.chmod(root, 0o755)
        try:
            done = subprocess.run(
                [
                    *unshare_prefix(),
                    "sh",
                    "-c",
                    LAYER_SCRIPT,
                    "layer",
                    root,
                    str(base),
                    str(debs),
                    str(dest),
                    *DEVICE_EXCLUDES,
                ],
                capture_output=True,
                text=True,
                timeout=LAYER_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"making a dependency layer took over {LAYER_TIMEOUT_SECONDS} s") from exc
        finally:
            # the tree's files belong to the chroot's users: removed from inside the namespace
            subprocess.run(
                [*unshare_prefix(), "rm", "-rf", "--one-file-system", root], check=False, timeout=600
            )
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-5:])
        raise TemporaryError(f"installing the dependency layer failed: {tail}", retry_after=60)
    after = installed_set((debs / "after").read_text())
    extra = after - before - set(pins)
    missing = set(pins) - after
    if extra or missing:
        raise UnfaithfulLayer(
            f"the layer would differ from what sbuild installs: extra {sorted(extra)[:5]}, "
            f"missing {sorted(missing)[:5]}"
        )


def make_lean(base: Path, dest: Path) -> None:
    """Write ``base`` without the archive's apt lists to ``dest``: the layer of a step whose
    Build-Depends the environment already satisfies.  apt has nothing to install from the
    archive there, and without ~50 MB of lists each of sbuild's apt runs (the resolver's
    archive, the staging repository) parses kilobytes instead, and the unpack is smaller."""
    shutil.copyfile(base, dest)
    done = subprocess.run(
        ["tar", "--delete", "-f", str(dest), "--wildcards", "./var/lib/apt/lists/*_*"],
        capture_output=True,
        text=True,
        timeout=LAYER_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise TemporaryError(f"leaving the apt lists out of {base.name} failed: {done.stderr.strip()}")


class UnfaithfulLayer(Exception):
    """Installing the archive packages alone pulled others in (or left some out)."""
