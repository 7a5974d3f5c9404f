"""Where backups go: a directory or an S3 bucket, holding content objects and a few documents.

The concrete targets; the interface is :class:`buildfarm.backends.base.BackupTarget`.

The target reuses the farm's own artifact stores as its object layer, so a backup is laid out
like an artifact store (``objects/sha256/..`` in a directory, ``sha256/..`` in a bucket): every
object is named by its sha256, stored once however many backups refer to it (a backup run copies
only what the target does not hold yet), and checked against its name whenever it is read back.
Besides objects the target holds named documents: ``manifest.json`` (the newest backup's list of
objects and checksums).

``backup_target`` is a directory path or ``s3://<bucket>[/<prefix>]``; an S3 target's endpoint
and credentials default to the farm's own (``s3_endpoint``, ``s3_access_key``...), so a second
bucket on the same MinIO needs only the URL.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from buildfarm.backends.base import BackupTarget
from buildfarm.backends.fs import FsArtifactStore, fsync_dir
from buildfarm.backends.s3 import S3ArtifactStore
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.settinggroups import BackupSettings, StorageSettings, read_secret


class DirectoryTarget:
    """A backup in a directory (a mounted disk, an NFS share)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.where = f"directory {self.root}"
        self.objects = FsArtifactStore(self.root)

    def put_document(self, name: str, data: bytes) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)

    def get_document(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None


class _PrefixedS3Store(S3ArtifactStore):
    """The S3 artifact store with its content objects under ``<prefix>``."""

    prefix = ""

    def object_name(self, sha256: str) -> str:  # type: ignore[override]
        return self.prefix + S3ArtifactStore.object_name(sha256)


class S3Target:
    """A backup in an S3 bucket (another bucket or another endpoint than the farm's)."""

    def __init__(self, store: _PrefixedS3Store) -> None:
        self.objects = store
        self._store = store
        self.where = f"{store.where}{f' under {store.prefix}' if store.prefix else ''}"

    def put_document(self, name: str, data: bytes) -> None:
        self._store.put_object_bytes(self._store.prefix + name, data, "application/json")

    def get_document(self, name: str) -> bytes | None:
        try:
            return self._store.get_object_bytes(self._store.prefix + name)
        except NotFoundError:
            return None


def make_backup_target(backup: BackupSettings, storage: StorageSettings) -> BackupTarget:
    """The configured backup target; one clear line when there is none or it is malformed.
    An S3 target defaults to the artifact store's endpoint and credentials (``storage``)."""
    target = (backup.target or "").strip()
    if not target:
        raise PermanentError("no backup target: set backup_target (BUILDFARM_BACKUP_TARGET)")
    if not target.startswith("s3://"):
        if "://" in target:
            raise PermanentError(
                f"backup_target {target!r}: give a directory path or s3://<bucket>[/<prefix>]"
            )
        return DirectoryTarget(Path(target))
    parts = urlsplit(target)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not bucket:
        raise PermanentError(f"backup_target {target!r} names no bucket: s3://<bucket>[/<prefix>]")
    endpoint = backup.s3_endpoint or storage.s3_endpoint
    if not endpoint:
        raise PermanentError("backup target is on S3 but neither backup_s3_endpoint nor s3_endpoint is set")
    secure = storage.s3_secure
    if "://" in endpoint:  # the chart passes a URL: the scheme decides https
        url = urlsplit(endpoint)
        endpoint, secure = url.netloc, url.scheme == "https"
    own = backup.s3_access_key is not None or backup.s3_access_key_file is not None
    if own:
        access = read_secret(backup.s3_access_key, backup.s3_access_key_file, "backup_s3_access_key")
        secret = read_secret(backup.s3_secret_key, backup.s3_secret_key_file, "backup_s3_secret_key")
    else:
        access, secret = storage.s3_credentials()
    store = _PrefixedS3Store(endpoint, access, secret, bucket, secure=secure, region=storage.s3_region)
    store.prefix = f"{prefix}/" if prefix else ""
    return S3Target(store)
