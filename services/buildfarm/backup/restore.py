"""Restoring a backup into a fresh, empty farm (``buildfarm backup restore``).

Order matters: objects, logs, build manifests and images go into the new farm's stores first,
then every release is published again (oldest first, each with its own packages, moving its
branch's ``latest``: so ``latest`` ends at the newest restored release of the branch, whatever it
pointed at before), and the records go in last, in one transaction.  Until that transaction the
farm still has no builds, so a restore that failed half way (a service down) is simply run
again: the stores skip what they hold, the repository keeps what it published.
Each release is published with its source packages (``apt-get source`` works on the restored
farm), and every build input goes back into the store and, on Pulp, into its file repository of
build inputs; their ``build_inputs`` rows go in with the records.

Images are pushed to the new farm's registry under the same repository paths; when the
registry's address changed, the references of the records' image outputs are rewritten to it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from buildfarm.backends.base import BackupTarget, BuildInputKeeper, BuildRef, PackageFile, RawManifest
from buildfarm.backup.catalog import CATALOGUE_FORMAT, farm_has_builds, import_catalogue, upgrade_catalogue
from buildfarm.backup.manifest import Progress, RestoreReport, no_progress, read_manifest
from buildfarm.engine.advance import materialize_sources
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import moves_latest
from buildfarm.model.errors import ConflictError, PermanentError
from buildfarm.model.images import registry_host, split_reference
from buildfarm.model.types import OutputKind, StepKind, StepState


def _catalogue(target: BackupTarget, scratch: Path) -> dict[str, Any]:
    manifest = read_manifest(target)
    path = scratch / "catalogue.json"
    target.objects.fetch(manifest["catalogue"]["sha256"], path)  # checks its sha256
    data: dict[str, Any] = json.loads(path.read_bytes())
    if data.get("format") not in (1, CATALOGUE_FORMAT) or "tables" not in data:
        raise PermanentError(f"the catalogue in {target.where} has an unknown format {data.get('format')!r}")
    return upgrade_catalogue(data)


def restore(ctx: FarmContext, progress: Progress) -> RestoreReport:
    started = time.monotonic()
    target = ctx.parts.backup_target()
    count = farm_has_builds(ctx.db)
    if count:
        raise ConflictError(
            f"the farm already has {count} builds: restore only into a fresh, empty farm (new database)"
        )
    target.objects.check()
    ctx.store.check()
    ctx.repo.check()
    with tempfile.TemporaryDirectory(dir=ctx.work_root, prefix="restore-") as tmp:
        scratch = Path(tmp)
        catalogue = _catalogue(target, scratch)
        tables: dict[str, list[dict[str, Any]]] = catalogue["tables"]
        total = 0
        files: list[str] = catalogue["files"]
        for done, sha256 in enumerate(files, 1):
            if not ctx.store.has(sha256):
                path = scratch / sha256
                target.objects.fetch(sha256, path)
                total += ctx.store.put_file(path).size
                path.unlink()
            progress("files", done, len(files))
        logs: dict[str, str] = catalogue["logs"]
        for done, (key, sha256) in enumerate(sorted(logs.items()), 1):
            _restore_log(ctx, target, key, sha256, scratch)
            progress("logs", done, len(logs))
        for build_id, manifest in catalogue["build_manifests"].items():
            ctx.store.put_build_manifest(int(build_id), manifest)
        _restore_images(ctx, target, catalogue, scratch, progress)
        published, latest = _publish(ctx, tables, scratch, progress)
        _keep_inputs(ctx, tables.get("build_inputs", []), scratch)
    import_catalogue(ctx.db, catalogue, published)
    return RestoreReport(
        target=target.where,
        builds=sorted(published),
        steps=len(tables["steps"]),
        objects=len(files),
        bytes=total,
        logs=len(logs),
        images=len(catalogue["images"]),
        latest=latest,
        seconds=time.monotonic() - started,
    )


def _keep_inputs(ctx: FarmContext, inputs: list[dict[str, Any]], scratch: Path) -> None:
    """Every restored build input into the repository's own store of them, where it has one
    (Pulp's file repository of build inputs), as the builds that used them put them there."""
    if not isinstance(ctx.repo, BuildInputKeeper) or not inputs:
        return
    into = scratch / "inputs"
    files: dict[str, PackageFile] = {}
    for row in inputs:
        key = f"{row['sha256']}/{row['name']}"
        if key in files or not ctx.store.has(row["sha256"]):
            continue
        path = into / row["sha256"] / row["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        ctx.store.fetch(row["sha256"], path)
        files[key] = PackageFile(row["name"], row["sha256"], int(row["size"]), path)
    ctx.repo.keep_build_inputs(list(files.values()))


def _restore_log(ctx: FarmContext, target: BackupTarget, key: str, sha256: str, scratch: Path) -> None:
    if ctx.store.read_log(key, 0)[0]:
        return  # written by an earlier, interrupted restore
    path = scratch / "log"
    target.objects.fetch(sha256, path)
    writer = ctx.store.open_log(key)
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            writer.write_line(line)
    finally:
        writer.close()
    path.unlink()


def _restore_images(
    ctx: FarmContext, target: BackupTarget, catalogue: dict[str, Any], scratch: Path, progress: Progress
) -> None:
    """Push every image back: its blobs, an index's platform manifests (by digest), then the
    manifest under its tag, each with the bytes (so the digest) it had."""
    images: list[dict[str, Any]] = catalogue["images"]
    if not images:
        return
    if not ctx.settings.registry.url:
        raise PermanentError("the backup has images but registry_url is not set: nowhere to push them")
    registry = ctx.parts.registry()
    host = registry_host(ctx.settings.registry.url)
    renamed: dict[str, str] = {}
    for done, image in enumerate(images, 1):
        old_host, repository, ref = split_reference(image["reference"])
        for blob in image["blobs"]:
            if not registry.has_blob(repository, f"sha256:{blob}"):
                path = scratch / blob
                target.objects.fetch(blob, path)
                registry.push_blob(repository, f"sha256:{blob}", path)
                path.unlink()
        for platform in image.get("platforms", []):
            manifest = _manifest(target, platform, scratch)
            registry.put_manifest(repository, f"sha256:{manifest.digest}", manifest)
        registry.put_manifest(repository, ref, _manifest(target, image, scratch))
        if old_host != host:
            renamed[image["reference"]] = f"{host}/{image['reference'].partition('/')[2]}"
        progress("images", done, len(images))
    for output in catalogue["tables"]["step_outputs"]:
        if output["kind"] == OutputKind.IMAGE and output["filename"] in renamed:
            output["filename"] = renamed[output["filename"]]


def _manifest(target: BackupTarget, entry: dict[str, Any], scratch: Path) -> RawManifest:
    """The manifest ``entry`` names (``manifest``: its sha256, ``media_type``), read from the target."""
    path = scratch / "image-manifest"
    target.objects.fetch(entry["manifest"], path)  # checks its sha256
    try:
        return RawManifest(path.read_bytes(), entry["media_type"])
    finally:
        path.unlink()


def _publish(
    ctx: FarmContext, tables: dict[str, list[dict[str, Any]]], scratch: Path, progress: Progress
) -> tuple[dict[int, str], dict[str, int]]:
    """Publish every build again, oldest first; (build id -> apt line, branch -> latest build)."""
    steps_of: dict[int, list[dict[str, Any]]] = {}
    for step in tables["steps"]:
        steps_of.setdefault(step["build_id"], []).append(step)
    outputs_of: dict[int, list[dict[str, Any]]] = {}
    for output in tables["step_outputs"]:
        outputs_of.setdefault(output["step_id"], []).append(output)
    builds = sorted(tables["builds"], key=lambda b: b["id"])
    published: dict[int, str] = {}
    latest: dict[str, int] = {}
    for done, build in enumerate(builds, 1):
        into = scratch / f"publish-{build['id']}"
        into.mkdir()
        packages: list[PackageFile] = []
        for step in steps_of.get(build["id"], []):
            producer = step["reused_from"] if step["reused_from"] is not None else step["id"]
            for output in outputs_of.get(producer, []):
                if OutputKind(output["kind"]).is_package:
                    path = into / output["filename"]
                    ctx.store.fetch(output["sha256"], path)
                    packages.append(PackageFile(output["filename"], output["sha256"], output["size"], path))
        # The source packages too, as the build published them (``apt-get source`` on the restore).
        bundles = [
            step["source_sha256"]
            for step in steps_of.get(build["id"], [])
            if step["kind"] == StepKind.PACKAGE and step["state"] == StepState.SUCCEEDED
        ]
        packages += materialize_sources(ctx, bundles, into)
        ref = BuildRef(build["id"], build["project"], build["branch"], build["kind"], build["user"])
        source = ctx.repo.publish(ref, packages, move_latest=moves_latest(ref.kind))
        published[ref.build_id] = source.line()
        if moves_latest(ref.kind):
            latest[f"{ref.project}/{ref.branch}"] = ref.build_id
        progress("publish", done, len(builds))
    return published, latest


def restore_backup(ctx: FarmContext, *, progress: Progress | None = None) -> RestoreReport:
    """Bring a fresh, empty farm back to the newest backup (see the module's docstring)."""
    return restore(ctx, progress or no_progress)
