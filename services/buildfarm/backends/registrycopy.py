"""Copying images out of a registry and back in, byte for byte (backups of release images).

A manifest is kept as the exact bytes the registry served, so the image keeps its digest when it
is put back; its config and layers are blobs named by their digests.  Uploads are monolithic
(one POST, one PUT per blob): the registries the farm runs (distribution) accept them and the
images of a build farm are small enough.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx

from buildfarm.backends.registry import INDEX_TYPES, RegistryClient
from buildfarm.model.errors import PermanentError, ServiceUnavailableError


class RegistryCopier(RegistryClient):
    """:class:`RegistryClient` plus the raw manifest bytes and uploads."""

    def raw_manifest(self, repository: str, ref: str) -> tuple[bytes, str]:
        """The manifest's exact bytes and media type; an index (multi-platform) is refused."""
        body, header_type = self._raw_manifest(repository, ref)
        manifest: dict[str, Any] = json.loads(body)
        media_type = str(manifest.get("mediaType") or header_type)
        if media_type in INDEX_TYPES:
            raise PermanentError(f"{repository}:{ref} is a multi-platform index; not copied")
        return body, media_type

    @staticmethod
    def blob_digests(manifest: bytes) -> list[str]:
        data: dict[str, Any] = json.loads(manifest)
        return [str(blob["digest"]) for blob in [data["config"], *data["layers"]]]

    def has_blob(self, repository: str, digest: str) -> bool:
        return self._request("HEAD", f"/v2/{repository}/blobs/{digest}").status_code == 200

    def push_blob(self, repository: str, digest: str, path: Path) -> None:
        """Upload one blob (skipped when the repository has it already)."""
        if self.has_blob(repository, digest):
            return
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        if started.status_code != 202 or "location" not in started.headers:
            raise ServiceUnavailableError(
                f"registry {self.url}: starting an upload to {repository}: HTTP {started.status_code}"
            )
        location = started.headers["location"]
        if "://" not in location:
            location = self.url + location
        try:
            with path.open("rb") as handle:
                response = httpx.put(
                    location,
                    params={"digest": digest},
                    content=handle.read(),
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=self.timeout,
                )
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(f"registry {self.url} unreachable: {exc}") from exc
        if response.status_code != 201:
            raise ServiceUnavailableError(
                f"registry {self.url}: uploading {digest} to {repository}: HTTP {response.status_code}"
            )

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """Put the manifest bytes as ``repository:tag``; returns its digest."""
        response = self._request(
            "PUT", f"/v2/{repository}/manifests/{tag}", content=body, headers={"Content-Type": media_type}
        )
        if response.status_code != 201:
            raise ServiceUnavailableError(
                f"registry {self.url}: putting {repository}:{tag}: HTTP {response.status_code}"
            )
        return "sha256:" + hashlib.sha256(body).hexdigest()
