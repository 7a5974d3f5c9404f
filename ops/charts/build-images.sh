#!/usr/bin/env bash
# `make images`: build and push the farm, package-builder and Pulp images, but only where a
# container builder and the target registry are reachable. Anywhere else (our CI machines reach
# no registry) say why and exit 0: the chart is verified by rendering, not by running images.
set -euo pipefail
cd "$(dirname "$0")/../.."

registry=${IMAGE_REGISTRY:-}
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/buildfarm/Chart.yaml)

builder=""
for tool in buildah podman docker; do
  if command -v "$tool" >/dev/null 2>&1; then builder=$tool; break; fi
done
if [ -z "$builder" ]; then
  echo "images: skipped: no container builder (buildah, podman or docker) on this machine"; exit 0
fi
if [ -z "$registry" ]; then
  echo "images: skipped: set IMAGE_REGISTRY=<registry>/<prefix> (e.g. registry.example.org/buildfarm) to build and push"; exit 0
fi
host=${registry%%/*}
if ! curl -fsS -o /dev/null --max-time 5 "https://$host/v2/" && ! curl -sS -o /dev/null --max-time 5 "https://$host/v2/"; then
  echo "images: skipped: registry $host is not reachable from here"; exit 0
fi

build() {  # name dockerfile context
  local ref="$registry/$1:$version"
  echo "images: $ref"
  if [ "$builder" = buildah ]; then
    buildah bud -f "$2" -t "$ref" "$3" && buildah push "$ref"
  else
    "$builder" build -f "$2" -t "$ref" "$3" && "$builder" push "$ref"
  fi
}
build farm buildtools/images/farm/Dockerfile .
# The package-builder image is the builder tarball (made once, then cached) plus the entrypoint.
builder_ctx=$(mktemp -d)
trap 'rm -rf "$builder_ctx"' EXIT
tarball=$(.venv/bin/python -c 'from buildfarm.model.settings import load_settings as l
from buildfarm.runners.sbuild import ensure_builder_tarball as e
s = l(); print(e(s.effective_base_tarball, s.distribution, s.mirror))')
ln "$tarball" "$builder_ctx/builder.tar" 2>/dev/null || cp "$tarball" "$builder_ctx/builder.tar"
cp buildtools/builder/buildfarm-step "$builder_ctx/"
build package-builder buildtools/images/package-builder/Dockerfile "$builder_ctx"
build pulp buildtools/images/pulp/Dockerfile buildtools/images/pulp
echo "images: pushed; set image.repository, builders.packageImage.repository and pulp.image.repository to $registry/..."
