"""Copying images out of a registry and back in, byte for byte (backups of release images).

A manifest is kept as the exact bytes the registry served, so the image keeps its digest when it
is put back; its config and layers are blobs named by their digests.  Supported: single-platform
image manifests (OCI and Docker schema 2, :data:`MANIFEST_TYPES`) and multi-platform indexes of
them (OCI index and Docker manifest list, :data:`INDEX_TYPES`); an index whose entries are
indexes, Docker schema 1 and anything else is refused with one line saying so.  Uploads are
monolithic (one POST, one streamed PUT per blob): the registries the farm runs (distribution)
accept them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from buildfarm.backends.base import ImageParts, RawManifest
from buildfarm.backends.registry import INDEX_TYPES, MANIFEST_TYPES, RegistryClient
from buildfarm.model.errors import PermanentError, ServiceUnavailableError

SUPPORTED_TYPES = (*MANIFEST_TYPES, *INDEX_TYPES)


def _parse(body: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise PermanentError(f"{where}: the manifest is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PermanentError(f"{where}: the manifest is not a JSON object")
    return data


def _digests(entries: Any, where: str) -> list[str]:
    try:
        return [str(entry["digest"]).removeprefix("sha256:") for entry in entries]
    except (TypeError, KeyError) as exc:
        raise PermanentError(f"{where}: a descriptor without a digest ({exc})") from exc


class RegistryCopier(RegistryClient):
    """:class:`RegistryClient` plus the raw manifest bytes, whole images and uploads."""

    def raw_manifest(self, repository: str, ref: str) -> RawManifest:
        """The manifest's exact bytes and media type; a type not in :data:`SUPPORTED_TYPES` is refused."""
        body, header_type = self._raw_manifest(repository, ref)
        where = f"{repository}@{ref}" if ref.startswith("sha256:") else f"{repository}:{ref}"
        media_type = str(_parse(body, where).get("mediaType") or header_type)
        if media_type not in SUPPORTED_TYPES:
            raise PermanentError(
                f"{where}: manifest type {media_type or 'unknown'} is not supported "
                f"(supported: {', '.join(SUPPORTED_TYPES)})"
            )
        return RawManifest(body, media_type)

    def image_parts(self, repository: str, digest: str) -> ImageParts:
        """The manifest ``digest`` (hex) of ``repository``, its platform manifests if it is an
        index, and the blobs they name; checks that every manifest has the digest it is named by."""
        top = self._manifest_by_digest(repository, digest)
        platforms: list[RawManifest] = []
        if top.media_type in INDEX_TYPES:
            where = f"{repository}@sha256:{digest}"
            for child in _digests(_parse(top.body, where).get("manifests", []), where):
                manifest = self._manifest_by_digest(repository, child)
                if manifest.media_type in INDEX_TYPES:
                    raise PermanentError(
                        f"{where}: an index of indexes is not supported "
                        f"(supported: {', '.join(MANIFEST_TYPES)}, or one index of them)"
                    )
                platforms.append(manifest)
        configs: list[str] = []
        blobs: dict[str, None] = {}
        for image in platforms or [top]:
            where = f"{repository}@sha256:{image.digest}"
            data = _parse(image.body, where)
            config = _digests([data.get("config")], where)
            configs.extend(config)
            blobs.update(dict.fromkeys([*config, *_digests(data.get("layers", []), where)]))
        return ImageParts(top, platforms, configs, list(blobs))

    def _manifest_by_digest(self, repository: str, digest: str) -> RawManifest:
        manifest = self.raw_manifest(repository, f"sha256:{digest}")
        if manifest.digest != digest:
            raise PermanentError(
                f"registry {self.url}: manifest {repository}@sha256:{digest} has other bytes"
            )
        return manifest

    def has_blob(self, repository: str, digest: str) -> bool:
        return self._request("HEAD", f"/v2/{repository}/blobs/{digest}").status_code == 200

    def push_blob(self, repository: str, digest: str, path: Path) -> None:
        """Upload one blob (the caller checked with :meth:`has_blob` that it is missing)."""
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        if started.status_code != 202 or "location" not in started.headers:
            raise ServiceUnavailableError(
                f"registry {self.url}: starting an upload to {repository}: HTTP {started.status_code}"
            )
        location = started.headers["location"]
        if "://" not in location:
            location = self.url + location
        # The location carries the upload's state in its query: the digest is added to it.
        target = httpx.URL(location).copy_merge_params({"digest": digest})
        try:
            with path.open("rb") as handle:  # streamed: a layer can be larger than memory allows
                response = httpx.put(
                    target,
                    content=handle,
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=self.timeout,
                    auth=self.auth,
                )
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(f"registry {self.url} unreachable: {exc}") from exc
        if response.status_code != 201:
            raise ServiceUnavailableError(
                f"registry {self.url}: uploading {digest} to {repository}: HTTP {response.status_code}"
            )

    def put_manifest(self, repository: str, ref: str, manifest: RawManifest) -> None:
        """Put the manifest bytes as ``repository:ref`` (a tag or ``sha256:...``); refused unless
        the registry stores them under the digest they had (so pulls by digest keep working)."""
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{ref}",
            content=manifest.body,
            headers={"Content-Type": manifest.media_type},
        )
        if response.status_code != 201:
            kind = PermanentError if 400 <= response.status_code < 500 else ServiceUnavailableError
            raise kind(
                f"registry {self.url}: putting {repository}:{ref}: HTTP {response.status_code} "
                f"{' '.join(response.text.split())[:200]}"
            )
        wanted = f"sha256:{manifest.digest}"
        stored = response.headers.get("docker-content-digest", wanted)
        if stored != wanted:
            raise PermanentError(
                f"registry {self.url}: {repository}:{ref} is stored as {stored}, not {wanted}"
            )
