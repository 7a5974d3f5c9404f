"""The image-builder stand-in: what runs in place of kaniko and the sysbox docker-in-pod image.

Neither can run here (kaniko needs a real cluster's node; its image cannot be pulled). The fake
kubelet (kubelet.py) runs this file as the container's process, and ``make e2e`` copies it into
its kaniko stand-in image (ops/e2e/images/kaniko), so it imports nothing but the standard library
and runs as a script: ``python3 imagebuilder.py <termination-file> <kaniko arguments>...``.

For kaniko it reads the context only from the directory the init container unpacked
(``--context=dir://...``); for sysbox it fetches the context URL (``CONTEXT_URL``). It makes a
one-layer image of that context, pushes it when the destination is on a plain-HTTP registry it
was given (``--insecure-registry``), and writes the manifest digest as the termination message,
as kaniko's ``--digest-file`` does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PUSH_TIMEOUT = 30
"""Seconds for each request of a push or of the context's download."""


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _layer_of(root: Path) -> bytes:
    """A deterministic gzip tar of a directory (tarfile.add walks it sorted)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name, filter=_normalised)
    return gzip.compress(raw.getvalue(), mtime=0)


def _registry_auth(host: str) -> dict[str, str]:
    """The Basic credentials for ``host`` from ``$DOCKER_CONFIG/config.json``, as kaniko reads the
    push Secret the pod mounts there; none when there is no such file or entry."""
    config = Path(os.environ.get("DOCKER_CONFIG", "/kaniko/.docker")) / "config.json"
    if not config.is_file():
        return {}
    entry = json.loads(config.read_text()).get("auths", {}).get(host) or {}
    auth = entry.get("auth") or (
        b64encode(f"{entry['username']}:{entry['password']}".encode()).decode() if "username" in entry else ""
    )
    return {"Authorization": f"Basic {auth}"} if auth else {}


def _push_blob(base: str, repository: str, data: bytes, auth: dict[str, str]) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(
        f"{base}/v2/{repository}/blobs/uploads/", data=b"", method="POST", headers=auth
    )
    with urllib.request.urlopen(start, timeout=PUSH_TIMEOUT) as response:
        location = urljoin(base, response.headers["Location"])
    put = urllib.request.Request(
        f"{location}{'&' if '?' in location else '?'}digest={digest}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream", **auth},
    )
    urllib.request.urlopen(put, timeout=PUSH_TIMEOUT).close()


def image_builder(termination: Path, argv: list[str]) -> int:
    """Build a one-layer image of the context, push it to a plain-HTTP registry if given one,
    write the manifest digest as the termination message (what kaniko's --digest-file does)."""
    options: dict[str, list[str]] = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            option, value = arg[2:].split("=", 1)
            options.setdefault(option, []).append(value)
    context = options.get("context", [os.environ.get("CONTEXT_URL", "")])[0]
    if context.startswith("dir://"):  # kaniko: only what the init container unpacked
        root = Path(context.removeprefix("dir://"))
        dockerfile = Path(options["dockerfile"][0])
        if not dockerfile.is_file():
            print(f"error: no Dockerfile {dockerfile} in the context {root}", flush=True)
            return 1
        layer = _layer_of(root)
        files = sum(1 for p in root.rglob("*") if p.is_file())
        print(f"image-builder stand-in: context dir {root.name}/ with {files} file(s)", flush=True)
    else:  # the sysbox script fetches the context itself
        with urllib.request.urlopen(context, timeout=PUSH_TIMEOUT) as response:
            layer = response.read()
        print(f"image-builder stand-in: context {len(layer)} bytes", flush=True)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    ).encode()

    def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
        return {
            "mediaType": media_type,
            "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    destination = options.get("destination", [os.environ.get("DESTINATION", "")])[0]
    host, _, path = destination.partition("/")
    repository, _, tag = path.rpartition(":")
    if host in options.get("insecure-registry", []):
        base = f"http://{host}"
        auth = _registry_auth(host)
        _push_blob(base, repository, config, auth)
        _push_blob(base, repository, layer, auth)
        put = urllib.request.Request(
            f"{base}/v2/{repository}/manifests/{tag}",
            data=manifest,
            method="PUT",
            headers={"Content-Type": OCI_MANIFEST, **auth},
        )
        urllib.request.urlopen(put, timeout=PUSH_TIMEOUT).close()
        print(f"image-builder stand-in: pushed {destination}@{digest}", flush=True)
    else:
        print("image-builder stand-in: nothing pushed (no plain-HTTP registry given)", flush=True)
    termination.write_text(digest)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: imagebuilder.py TERMINATION-FILE [KANIKO-ARGUMENT]...")
    sys.exit(image_builder(Path(sys.argv[1]), sys.argv[2:]))
