"""Making one environment tarball with Debian's mmdebstrap (the only maker of environments).

The tarball is written where the caller says (a temporary name: the cache renames it into place
once its digest is known), with the packages of the recipe preinstalled, the mirror's apt lists
kept (``--skip=cleanup/apt/lists``) and dpkg told not to fsync (``force-unsafe-io``, as Debian's
buildd chroots are: a build chroot is thrown away, never recovered after a crash).

A signed mirror (``[signed-by=PATH] URL``, the recipe holding the key: the farm's Pulp package
cache) is fetched with the key written to a temporary file (mmdebstrap's apt reads a signed-by
path on the host); the chroot gets the key at PATH and its sources name PATH, so the tarball's
bytes do not depend on where it was made, and apt in every chroot checks the mirror's indexes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from buildfarm.environments.spec import EnvironmentSpec
from buildfarm.model.errors import PermanentError, TemporaryError

MMDEBSTRAP_TIMEOUT_SECONDS = 1800
"""Making an environment downloads ~120-250 packages: ~1 min here, far longer on a slow mirror."""
SOURCE_DATE_EPOCH = "1700000000"
"""Fixed file times inside the tarball: mmdebstrap is reproducible with SOURCE_DATE_EPOCH, so the
same recipe on an unchanged mirror makes the same bytes and the same digest (outputs are reused)."""
UNSAFE_IO_HOOK = 'echo force-unsafe-io > "$1/etc/dpkg/dpkg.cfg.d/buildfarm-unsafe-io"'
MIRROR_DATE_HOOK = 'sed -n "s/^Date: //p" "$1"/var/lib/apt/lists/*Release | head -n 1 > {out}'


_SIGNED_BY = re.compile(r"signed-by=([^\s\]]+)")


def signed_by(mirror: str) -> str | None:
    """The ``signed-by`` path of a mirror's apt options (``[signed-by=PATH] URL``), if any."""
    found = _SIGNED_BY.search(mirror.split("]", 1)[0]) if mirror.startswith("[") else None
    return found[1] if found else None


def key_hook(key_file: Path, keyring: str) -> str:
    """Put the key where the chroot's sources say, and say so instead of the host's path."""
    host, inside = _shell_quote(str(key_file)), _shell_quote(keyring)
    return (
        f'mkdir -p "$1"$(dirname {inside}) && cp {host} "$1"{inside} && chmod 0644 "$1"{inside} && '
        f'sed -i "s|signed-by=$(printf %s {host})|signed-by=$(printf %s {inside})|" "$1/etc/apt/sources.list"'
    )


@contextlib.contextmanager
def mirror_key_file(spec: EnvironmentSpec) -> Iterator[Path | None]:
    """The recipe's mirror key in a file apt's download sandbox (user ``_apt``) may read, for as
    long as mmdebstrap runs (None: an unsigned mirror).  Not beside the tarball: the cache may be
    in a home directory that only its owner enters."""
    if not spec.mirror_key:
        yield None
        return
    if signed_by(spec.mirror) is None:
        raise PermanentError(
            f"the recipe holds a mirror key but its mirror names no signed-by: {spec.mirror}"
        )
    with tempfile.TemporaryDirectory(prefix="buildfarm-mirror-key-") as tmp:
        os.chmod(tmp, 0o755)
        key_file = Path(tmp) / "mirror.asc"  # .asc: apt reads it armored
        key_file.write_text(spec.mirror_key)
        key_file.chmod(0o644)
        yield key_file


def mmdebstrap_command(
    spec: EnvironmentSpec, dest: Path, date_file: Path | None = None, key_file: Path | None = None
) -> list[str]:
    """The mmdebstrap call making ``spec`` into the tar file ``dest`` (``key_file``: where
    :func:`make_tarball` wrote the signed mirror's key, ``spec.mirror_key``)."""
    mode = "root" if os.geteuid() == 0 else "unshare"
    hooks = [UNSAFE_IO_HOOK]
    if date_file is not None:
        hooks.append(MIRROR_DATE_HOOK.format(out=_shell_quote(str(date_file))))
    mirror = spec.mirror
    keyring = signed_by(mirror)
    if keyring is not None and key_file is not None:
        mirror = mirror.replace(f"signed-by={keyring}", f"signed-by={key_file}", 1)
        hooks.append(key_hook(key_file, keyring))
    return [
        "mmdebstrap",
        "--variant=buildd",
        f"--mode={mode}",
        "--format=tar",
        f"--architectures={','.join((spec.architecture, *spec.foreign_architectures))}",
        "--quiet",
        *([f"--include={','.join(spec.packages)}"] if spec.packages else []),
        *(["--skip=cleanup/apt/lists"] if spec.keep_lists else []),
        *(f"--customize-hook={hook}" for hook in hooks),
        spec.distribution,
        str(dest),
        f"deb {mirror} {spec.distribution} main",
    ]


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def make_tarball(
    spec: EnvironmentSpec,
    dest: Path,
    proxy: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Run mmdebstrap into ``dest``; returns the mirror's Release date the lists were made from
    ("" if unknown).  ``proxy``: an HTTP proxy for apt (the farm's package cache); apt outside the
    chroot reads it from the environment, so nothing of it is left inside the tarball."""
    if shutil.which("mmdebstrap") is None:
        raise PermanentError("mmdebstrap is not installed (Debian package: mmdebstrap)")
    date_file = dest.with_name(dest.name + ".date")
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    if proxy:
        env["http_proxy"] = proxy
    if progress:
        progress(f"making the build environment {spec.describe()} with mmdebstrap (once, ~1-3 min)...")
    try:
        with mirror_key_file(spec) as key_file:
            subprocess.run(
                mmdebstrap_command(spec, dest, date_file if spec.keep_lists else None, key_file),
                check=True,
                capture_output=True,
                text=True,
                timeout=MMDEBSTRAP_TIMEOUT_SECONDS,
                env=env,
            )
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or "").strip().splitlines()[-5:])
        raise TemporaryError(f"mmdebstrap failed to make {spec.describe()}: {tail}", retry_after=60) from exc
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"mmdebstrap took over {MMDEBSTRAP_TIMEOUT_SECONDS} s", retry_after=60) from exc
    try:
        return date_file.read_text().strip()
    except OSError:
        return ""
    finally:
        date_file.unlink(missing_ok=True)
