"""A small client of the OCI distribution API (``/v2/``): read manifests and blobs, copy an image
to another repository of the same registry without moving its bytes (cross-repository blob
mounts), check that the registry answers.

The farm uses it to measure what an image step pushed, to put a reused image under a new
build's namespace, and tests use it to look inside pushed images.  Retention deletes an expired
build's manifests (:meth:`RegistryClient.delete_manifest`) and then, in the local profile, runs
the registry's own garbage collector on its storage (:func:`garbage_collect`); the chart runs the
same collector as a CronJob.  Anonymous access, or HTTP basic auth with ``auth`` (the chart's
registry requires its htpasswd account; the local profile's has no auth).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from buildfarm.model.errors import PermanentError, ServiceUnavailableError

GC_TIMEOUT_SECONDS = 600.0
"""Bound on one ``garbage-collect`` run: it walks every manifest and blob of the storage (seconds
for a build server's registry, minutes only for a very large one)."""
REQUEST_TIMEOUT_SECONDS = 30.0
"""One registry request; blobs stream, so only a stalled transfer hits it."""
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


class RegistryClient:
    """``gc_config``: the registry's configuration file when this node can run its collector (the
    local profile's registry); without it :meth:`collect_garbage` leaves that to the chart's CronJob."""

    def __init__(
        self,
        url: str,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        gc_config: Path | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/") if "://" in url else f"http://{url.strip('/')}"
        self.timeout = timeout
        self.gc_config = gc_config
        self.auth = auth

    def collect_garbage(self) -> int | None:
        """Run the registry's garbage collector (only with ``gc_config``); the bytes it freed."""
        if self.gc_config is None:
            return None
        return garbage_collect(self.gc_config).freed_bytes

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return httpx.request(method, self.url + path, timeout=self.timeout, auth=self.auth, **kw)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(f"registry {self.url} unreachable: {exc}") from exc

    def check(self) -> None:
        response = self._request("GET", "/v2/")
        if response.status_code != 200:
            raise ServiceUnavailableError(f"registry {self.url}: /v2/ answered HTTP {response.status_code}")

    def _raw_manifest(self, repository: str, ref: str) -> tuple[bytes, str]:
        headers = {"Accept": ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))}
        response = self._request("GET", f"/v2/{repository}/manifests/{ref}", headers=headers)
        if response.status_code == 404:
            raise PermanentError(f"registry {self.url}: no image {repository}:{ref}")
        if response.status_code != 200:
            raise ServiceUnavailableError(
                f"registry {self.url}: manifest {repository}:{ref}: HTTP {response.status_code}"
            )
        return response.content, response.headers.get("content-type", "").split(";")[0]

    def manifest(self, repository: str, ref: str) -> tuple[dict[str, Any], str, str]:
        """(manifest, its digest ``sha256:...``, media type) of an image or an index."""
        body, media_type = self._raw_manifest(repository, ref)
        data: dict[str, Any] = json.loads(body)
        return data, "sha256:" + hashlib.sha256(body).hexdigest(), data.get("mediaType") or media_type

    def has_manifest(self, repository: str, ref: str) -> bool:
        headers = {"Accept": ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))}
        return self._request("HEAD", f"/v2/{repository}/manifests/{ref}", headers=headers).status_code == 200

    def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` (empty if it has none or does not exist)."""
        response = self._request("GET", f"/v2/{repository}/tags/list")
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise ServiceUnavailableError(
                f"registry {self.url}: tags of {repository}: HTTP {response.status_code}"
            )
        return list(response.json().get("tags") or [])

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete the manifest ``digest`` (``sha256:...``) from ``repository``, with every tag of it
        there; other repositories holding the same manifest keep it.  Returns False if it was not
        there (expiring is idempotent).  The layers' bytes go at the next garbage collection."""
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise PermanentError(f"{digest!r} is not a manifest digest (sha256:<64 hex digits>)")
        headers = {"Accept": ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))}
        response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}", headers=headers)
        if response.status_code == 404:
            return False
        if response.status_code == 405:
            raise PermanentError(
                f"registry {self.url} does not allow deleting images: set storage.delete.enabled: true "
                "in its configuration"
            )
        if response.status_code != 202:
            raise ServiceUnavailableError(
                f"registry {self.url}: deleting {repository}@{digest}: HTTP {response.status_code}"
            )
        return True

    def image_size(self, repository: str, ref: str) -> int:
        """Bytes of the image's config and (compressed) layers, as stored in the registry."""
        manifest, _digest, _type = self.manifest(repository, ref)
        return int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in manifest["layers"])

    def fetch_blob(self, repository: str, digest: str, dest: Path) -> None:
        """Download one blob to ``dest`` and check its digest."""
        hasher = hashlib.sha256()
        try:
            with (
                httpx.stream(
                    "GET",
                    f"{self.url}/v2/{repository}/blobs/{digest}",
                    timeout=self.timeout,
                    follow_redirects=True,
                ) as response,
                dest.open("wb") as handle,
            ):
                if response.status_code != 200:
                    raise PermanentError(f"registry {self.url}: blob {digest}: HTTP {response.status_code}")
                for chunk in response.iter_bytes():
                    hasher.update(chunk)
                    handle.write(chunk)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(f"registry {self.url} unreachable: {exc}") from exc
        if "sha256:" + hasher.hexdigest() != digest:
            raise PermanentError(f"registry {self.url}: blob {digest} arrived with another digest")

    def copy_image(self, source_repository: str, ref: str, dest_repository: str, tag: str) -> str:
        """Tag an image of ``source_repository`` as ``dest_repository:tag`` on the same registry:
        blobs are mounted (no bytes move), then the same manifest bytes are put, so the digest
        stays the same. Returns the digest."""
        body, header_type = self._raw_manifest(source_repository, ref)
        manifest: dict[str, Any] = json.loads(body)
        media_type = manifest.get("mediaType") or header_type
        if media_type in INDEX_TYPES:
            raise PermanentError(f"{source_repository}:{ref} is a multi-platform index; not copied")
        for blob in [manifest["config"], *manifest["layers"]]:
            response = self._request(
                "POST",
                f"/v2/{dest_repository}/blobs/uploads/",
                params={"mount": blob["digest"], "from": source_repository},
            )
            if response.status_code != 201:
                raise ServiceUnavailableError(
                    f"registry {self.url}: mounting {blob['digest']} into {dest_repository}: "
                    f"HTTP {response.status_code}"
                )
        response = self._request(
            "PUT",
            f"/v2/{dest_repository}/manifests/{tag}",
            content=body,
            headers={"Content-Type": media_type},
        )
        if response.status_code != 201:
            raise ServiceUnavailableError(
                f"registry {self.url}: putting {dest_repository}:{tag}: HTTP {response.status_code}"
            )
        return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class GcResult:
    """What one ``garbage-collect`` run removed (counted from its output) and the bytes freed."""

    blobs_deleted: int
    freed_bytes: int


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def garbage_collect(config: Path, binary: str = "docker-registry") -> GcResult:
    """Run the registry's collector on the storage of ``config``: blobs no manifest references are
    deleted.  (Not ``--delete-untagged``: distribution 2.8 then also deletes the platform
    manifests of multi-platform images; :meth:`RegistryClient.delete_manifest` leaves nothing
    untagged behind anyway.)

    Meant for the local profile's registry (filesystem storage: the bytes freed are measured
    under its ``rootdirectory``).  A push while it runs can lose a layer uploaded but not yet
    referenced by a manifest, so run it when no image step pushes (the retention sweep's nightly
    slot).  AWS_CA_BUNDLE is dropped from its environment: the registry panics on it.
    """
    found = re.search(r"^\s*rootdirectory:\s*(\S+)\s*$", config.read_text(), re.MULTILINE)
    data_dir = Path(found.group(1)) if found else None
    exe = shutil.which(binary)
    if exe is None:
        raise PermanentError(f"{binary} is not installed: install the Debian package docker-registry")
    before = _tree_bytes(data_dir) if data_dir is not None else 0
    try:
        done = subprocess.run(
            [exe, "garbage-collect", str(config)],
            capture_output=True,
            text=True,
            timeout=GC_TIMEOUT_SECONDS,
            env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailableError(
            f"registry garbage-collect took over {GC_TIMEOUT_SECONDS:.0f}s"
        ) from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        last = (output.strip().splitlines() or ["no output"])[-1]
        raise PermanentError(f"registry garbage-collect of {config} failed (exit {done.returncode}): {last}")
    deleted = len(re.findall(r"^blob eligible for deletion:", output, re.MULTILINE))
    after = _tree_bytes(data_dir) if data_dir is not None else 0
    return GcResult(deleted, max(0, before - after))
