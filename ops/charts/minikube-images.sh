#!/usr/bin/env bash
# Build the farm's three images inside minikube (`minikube image build`), tagged as the chart's
# defaults expect: localhost/buildfarm/{farm,package-builder,pulp}:<appVersion>. Nothing of the
# farm is published to a public registry, so on minikube the images are built where they run
# and pulled by nobody (pullPolicy IfNotPresent finds them in minikube's runtime).
#   minikube start --cpus 4 --memory 8g && bash ops/charts/minikube-images.sh
# Each build context holds only what its Dockerfile copies (never .venv, .helm or a farm's state).
# With a local builder instead (buildah, podman, docker): build the same tags and
# `minikube image load <tag>` each one.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v minikube >/dev/null || { echo "minikube-images: minikube is not installed" >&2; exit 1; }
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/buildfarm/Chart.yaml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build() {  # name context
  echo "minikube-images: localhost/buildfarm/$1:$version"
  minikube image build -t "localhost/buildfarm/$1:$version" -f Dockerfile "$2"
}

mkdir -p "$work/farm/buildtools/client"
cp -r pyproject.toml README.md services "$work/farm/"
cp -r buildtools/buildfarm_cli "$work/farm/buildtools/"
cp -r buildtools/client/buildfarm_client "$work/farm/buildtools/client/"
cp buildtools/images/farm/Dockerfile "$work/farm/"
find "$work/farm" -name __pycache__ -prune -exec rm -rf {} +
build farm "$work/farm"

# The package-builder image is the builder tarball (made once, ~25-45 s, then cached) plus the entrypoint.
mkdir -p "$work/package-builder"
tarball=$(.venv/bin/python -c 'from buildfarm.model.settings import load_settings as l
from buildfarm.runners.sbuild import ensure_builder_tarball as e
s = l(); print(e(s.effective_base_tarball, s.distribution, s.mirror))')
ln "$tarball" "$work/package-builder/builder.tar" 2>/dev/null || cp "$tarball" "$work/package-builder/builder.tar"
cp buildtools/builder/buildfarm-step buildtools/images/package-builder/Dockerfile "$work/package-builder/"
build package-builder "$work/package-builder"

cp -r buildtools/images/pulp "$work/pulp"
build pulp "$work/pulp"
echo "minikube-images: done; the chart's default image values name these tags"
