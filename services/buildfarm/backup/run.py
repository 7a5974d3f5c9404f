"""Backups of release builds, their verification, and the restore that proves them.

``run_backup`` copies to the backup target (:class:`buildfarm.backends.base.BackupTarget`) what a
release build is made of: its packages and other outputs, the source tarballs its steps built
from, its step logs, its images (manifest, config and every layer as they are in the registry;
a multi-platform index with each platform's manifest; the media types are those of
:mod:`buildfarm.backends.registrycopy`) and a catalogue of its records plus the farm's accounts
(:mod:`buildfarm.backup.catalog`), and every build input of the farm (upstream tarballs and
.dsc files, kept forever: their objects and their ``build_inputs`` rows), so a restored farm
never downloads them again.
Every object is named by its sha256 in the target, so a run copies only what the target lacks:
a second run with no new release copies nothing but one small ``manifest.json`` that lists every
object of the backup with its size and sha256 (the catalogue's too).

``verify_backup`` reads every object back and checks it against its sha256.  A corrupt object is
reported by name and moved aside by the store (its own rule), so the next ``backup run`` copies
it again from the farm.

``restore_backup`` brings a fresh, empty farm (new database after migrations, new repository,
new artifact store, new registry) back to the backed-up state: objects into the store, logs,
images pushed to the farm's registry, every release published again in build order (so each
branch's ``latest`` is its newest restored release), then the records in one transaction, last:
a restore that fails half way is run again from the start.  Nightly, on-demand and personal
builds are not backed up and so never restored.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildfarm.backends.base import BackupTarget
from buildfarm.backup.catalog import export_catalogue, upgrade_catalogue
from buildfarm.backup.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    BackupReport,
    Progress,
    VerifyReport,
    no_progress,
    read_manifest,
)
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.images import split_reference
from buildfarm.model.types import OutputKind

log = logging.getLogger(__name__)


class _Copier:
    """Puts objects into the target unless it holds them; records every object of this backup."""

    def __init__(self, target: BackupTarget, scratch: Path, sizes: dict[str, int]) -> None:
        self.target, self.scratch = target, scratch
        self._sizes = sizes  # of the previous backup's objects: no need to ask the target
        self.objects: dict[str, int] = {}
        self.copied_objects = 0
        self.copied_bytes = 0

    def has(self, sha256: str) -> bool:
        """True (and the object is part of this backup) if the target holds it already."""
        if not self.target.objects.has(sha256):
            return False
        size = self._sizes.get(sha256)
        if size is None:  # a target whose manifest was lost: measure the object once
            path = self.scratch / f"size-{sha256}"
            self.target.objects.fetch(sha256, path)
            size = path.stat().st_size
            path.unlink()
        self.objects[sha256] = size
        return True

    def _copied(self, sha256: str, size: int) -> None:
        self.objects[sha256] = size
        self.copied_objects += 1
        self.copied_bytes += size

    def put_file(self, path: Path) -> str:
        ref = self.target.objects.put_file(path)
        self._copied(ref.sha256, ref.size)
        return ref.sha256

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has(sha256):
            self.target.objects.put_bytes(data)
            self._copied(sha256, len(data))
        return sha256

    def copy_from(self, fetch: Callable[[Path], None], sha256: str) -> None:
        """Copy the object ``fetch`` writes to a path, unless the target holds it already."""
        if self.has(sha256):
            return
        path = self.scratch / sha256
        fetch(path)
        try:
            if self.put_file(path) != sha256:
                raise PermanentError(f"object {sha256} arrived with other bytes; not backed up")
        finally:
            path.unlink(missing_ok=True)


def _previous(target: BackupTarget, scratch: Path) -> tuple[dict[str, int], dict[str, Any]]:
    """The newest backup's object sizes and catalogue ({} when there is none or it is unreadable)."""
    try:
        manifest = read_manifest(target)
        path = scratch / "previous-catalogue.json"
        target.objects.fetch(manifest["catalogue"]["sha256"], path)
        catalogue: dict[str, Any] = json.loads(path.read_bytes())
        return {str(k): int(v) for k, v in manifest["objects"].items()}, catalogue
    except (PermanentError, ValueError, TypeError, KeyError):
        return {}, {}


def run_backup(ctx: FarmContext, *, progress: Progress | None = None) -> BackupReport:
    """Copy every succeeded release build (and the accounts) to the backup target, incrementally."""
    started = time.monotonic()
    report = progress or no_progress
    target = ctx.parts.backup_target()
    target.objects.check()
    catalogue = export_catalogue(ctx.db)
    tables = catalogue["tables"]
    with tempfile.TemporaryDirectory(dir=ctx.work_root, prefix="backup-") as tmp:
        scratch = Path(tmp)
        sizes, previous = _previous(target, scratch)
        copier = _Copier(target, scratch, sizes)

        images: dict[str, str] = {}  # reference -> manifest digest (hex)
        files: set[str] = set()
        for output in tables["step_outputs"]:
            if output["kind"] == OutputKind.IMAGE:
                images[output["filename"]] = output["sha256"]
            else:
                files.add(output["sha256"])
        files |= {s["source_sha256"] for s in tables["steps"] if ctx.store.has(s["source_sha256"])}
        files |= {i["sha256"] for i in tables["build_inputs"] if ctx.store.has(i["sha256"])}
        for done, sha256 in enumerate(sorted(files), 1):
            copier.copy_from(functools.partial(ctx.store.fetch, sha256), sha256)
            report("files", done, len(files))

        catalogue["files"] = sorted(files)
        catalogue["logs"] = _backup_logs(ctx, tables["steps"], previous.get("logs", {}), copier, report)
        catalogue["build_manifests"] = {
            str(b["id"]): manifest
            for b in tables["builds"]
            if (manifest := ctx.store.get_build_manifest(b["id"])) is not None
        }
        catalogue["images"] = _backup_images(ctx, images, previous.get("images", []), copier, report)
        encoded = json.dumps(catalogue, sort_keys=True, indent=1).encode("utf-8")
        catalogue_sha = copier.put_bytes(encoded)
    build_ids: list[int] = [b["id"] for b in tables["builds"]]
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "catalogue": {"sha256": catalogue_sha, "size": len(encoded)},
        "builds": build_ids,
        "objects": dict(sorted(copier.objects.items())),
    }
    target.put_document(MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    log.info("backup to %s: %d objects, %d copied", target.where, len(copier.objects), copier.copied_objects)
    return BackupReport(
        target=target.where,
        builds=build_ids,
        objects=len(copier.objects),
        bytes=sum(copier.objects.values()),
        copied_objects=copier.copied_objects,
        copied_bytes=copier.copied_bytes,
        logs=len(catalogue["logs"]),
        images=len(catalogue["images"]),
        catalogue_sha256=catalogue_sha,
        seconds=time.monotonic() - started,
    )


def _backup_logs(
    ctx: FarmContext, steps: list[dict[str, Any]], previous: dict[str, str], copier: _Copier, report: Progress
) -> dict[str, str]:
    """Log key -> sha256 of its bytes. A finished step's log never changes, so one that is in the
    previous backup is not read again."""
    keys = sorted({s["log_key"] for s in steps if s["log_key"]})
    logs: dict[str, str] = {}
    for done, key in enumerate(keys, 1):
        known = previous.get(key)
        if known is not None and copier.has(known):
            logs[key] = known
        else:
            data, _next = ctx.store.read_log(key, 0)
            if data:
                logs[key] = copier.put_bytes(data)
        report("logs", done, len(keys))
    return logs


def _backup_images(
    ctx: FarmContext,
    images: dict[str, str],
    previous: list[dict[str, Any]],
    copier: _Copier,
    report: Progress,
) -> list[dict[str, Any]]:
    """Each image's manifest (its exact bytes), an index's platform manifests, and every blob,
    fetched from the registry by digest.  An image of the previous backup whose manifests the
    target holds is not asked for again; only its blobs are checked."""
    if not images:
        return []
    if not ctx.settings.registry.url:
        raise PermanentError("release builds have images but registry_url is not set: images not backed up")
    registry = ctx.parts.registry()
    known = {(i.get("reference"), i.get("manifest")): i for i in previous}
    out: list[dict[str, Any]] = []
    for done, (reference, digest) in enumerate(sorted(images.items()), 1):
        _host, repository, _tag = split_reference(reference)
        entry = known.get((reference, digest))
        if entry is None or not _image_held(entry, copier):
            try:
                parts = registry.image_parts(repository, digest)
            except PermanentError as exc:
                raise PermanentError(f"release image {reference} not backed up: {exc}") from exc
            for manifest in (parts.manifest, *parts.platforms):
                copier.put_bytes(manifest.body)
            entry = {
                "reference": reference,
                "manifest": digest,
                "media_type": parts.manifest.media_type,
                "platforms": [{"manifest": m.digest, "media_type": m.media_type} for m in parts.platforms],
                "configs": parts.configs,
                "blobs": parts.blobs,
            }
        for blob in entry["blobs"]:
            copier.copy_from(functools.partial(registry.fetch_blob, repository, f"sha256:{blob}"), blob)
        out.append(entry)
        report("images", done, len(images))
    return out


def _image_held(entry: dict[str, Any], copier: _Copier) -> bool:
    """True if a previous backup's image entry is whole in this format and its manifests are held."""
    if not {"media_type", "platforms", "configs", "blobs"} <= entry.keys():
        return False
    return all(copier.has(d) for d in (entry["manifest"], *(p["manifest"] for p in entry["platforms"])))


def describe_objects(catalogue: dict[str, Any]) -> dict[str, str]:
    """sha256 -> what the object is, in words (``layer of image <reference>``), for messages."""
    tables: dict[str, list[dict[str, Any]]] = upgrade_catalogue(catalogue).get("tables", {})
    what: dict[str, str] = {}
    steps = {s["id"]: s for s in tables.get("steps", [])}
    for output in tables.get("step_outputs", []):
        step = steps.get(output["step_id"], {})
        if output["kind"] != OutputKind.IMAGE:
            what[output["sha256"]] = f"{output['filename']} of build {step.get('build_id')}"
    for step in steps.values():
        what.setdefault(step["source_sha256"], f"source of step {step['name']} of build {step['build_id']}")
    for kept in tables.get("build_inputs", []):
        what.setdefault(kept["sha256"], f"build input {kept['name']}")
    for key, sha256 in catalogue.get("logs", {}).items():
        what.setdefault(sha256, f"log {key}")
    for image in catalogue.get("images", []):
        reference = image["reference"]
        what[image["manifest"]] = f"manifest of image {reference}"
        for platform in image.get("platforms", []):
            what.setdefault(platform["manifest"], f"platform manifest of image {reference}")
        configs = set(image.get("configs", []))
        for blob in image["blobs"]:
            what.setdefault(blob, f"{'config' if blob in configs else 'layer'} of image {reference}")
    return what


# -- verify ---------------------------------------------------------------------------------------


def verify_backup(ctx: FarmContext, *, progress: Progress | None = None) -> VerifyReport:
    """Read every object of the newest backup back from the target and check its sha256."""
    report = progress or no_progress
    target = ctx.parts.backup_target()
    target.objects.check()
    manifest = read_manifest(target)
    objects: dict[str, int] = {str(k): int(v) for k, v in manifest["objects"].items()}
    objects.setdefault(manifest["catalogue"]["sha256"], int(manifest["catalogue"]["size"]))
    result = VerifyReport(target.where, str(manifest.get("created_at")), len(objects), sum(objects.values()))
    with tempfile.TemporaryDirectory(dir=ctx.work_root, prefix="verify-") as tmp:
        path = Path(tmp) / "object"
        for done, (sha256, size) in enumerate(sorted(objects.items()), 1):
            try:
                target.objects.fetch(sha256, path)  # raises if the bytes do not hash to the name
                if path.stat().st_size != size:
                    result.corrupt.append(sha256)
            except NotFoundError:
                result.missing.append(sha256)
            except PermanentError as exc:
                log.warning("backup verify: %s", exc)
                result.corrupt.append(sha256)
            path.unlink(missing_ok=True)
            report("verify", done, len(objects))
        catalogue_sha = manifest["catalogue"]["sha256"]
        bad = [*result.corrupt, *result.missing]
        if bad and catalogue_sha not in bad:
            # The catalogue was just read and checked: it says what each bad object is.
            target.objects.fetch(catalogue_sha, path)
            what = describe_objects(json.loads(path.read_bytes()))
            result.what = {sha256: what.get(sha256, "unknown object") for sha256 in bad}
        elif catalogue_sha in bad:
            result.what = {catalogue_sha: "the catalogue of build records"}
    return result
