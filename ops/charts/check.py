"""`make charts`: lint, render, validate and scan the buildfarm chart for every values profile.

There is no Kubernetes API server on our machines, so the chart is verified by what can be
checked without one: ``helm lint --strict``, ``helm template``, every rendered object validated
strictly against the OpenAPI schemas of the oldest and newest Kubernetes we support, a security
scan (checkov) that must report nothing unexplained (a skip carries its reason as an annotation
in the chart), and the README's parameter table being the one generated from values.yaml.
Each stage is timed; any failure stops with the tool's own output and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "buildfarm"
PROFILES_DIR = ROOT / "values"
RELEASE, NAMESPACE = "buildfarm", "buildfarm"
TIMINGS: list[tuple[str, float]] = []


def profiles() -> dict[str, list[str]]:
    """Profile name -> extra helm arguments; `default` is values.yaml alone."""
    found = {"default": []}
    for overlay in sorted(PROFILES_DIR.glob("*.yaml")):
        found[overlay.stem] = ["-f", str(overlay)]
    return found


@contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.monotonic()
    print(f"charts: {name} ...", flush=True)
    yield
    TIMINGS.append((name, time.monotonic() - start))


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, check=False)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"charts: FAILED: {' '.join(cmd)} (exit {proc.returncode})")
    return proc


def scan(out: Path, rendered: dict[str, Path], venv_bin: Path) -> None:
    """checkov over every profile's manifests; fails on any finding not skipped in the chart."""
    proc = subprocess.run(
        [
            str(venv_bin / "checkov"),
            "--compact",
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",
            "-d",
            out.name,
        ],
        # checkov scans nothing under a path with a hidden directory (.helm) in it: run beside it.
        cwd=out.parent,
        text=True,
        capture_output=True,
        check=False,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
    )
    try:
        reports = json.loads(proc.stdout)
    except ValueError:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit("charts: FAILED: checkov printed no JSON report") from None
    if isinstance(reports, dict):
        reports = [reports]
    failed: dict[str, list[str]] = {name: [] for name in rendered}
    skipped: dict[str, int] = dict.fromkeys(rendered, 0)
    passed: dict[str, int] = dict.fromkeys(rendered, 0)
    for report in reports:
        results = report.get("results", {})
        for kind, bucket in (
            ("failed_checks", failed),
            ("skipped_checks", skipped),
            ("passed_checks", passed),
        ):
            for check in results.get(kind, []):
                profile = Path(check["file_path"]).stem
                if kind == "failed_checks":
                    failed[profile].append(f"{check['check_id']} {check['resource']}: {check['check_name']}")
                else:
                    bucket[profile] += 1  # type: ignore[operator]
    bad = False
    for name in rendered:
        if not passed[name] and not failed[name]:
            raise SystemExit(f"charts: FAILED: checkov checked nothing in {name}.yaml")
        print(
            f"charts: checkov {name}: {passed[name]} passed, {len(failed[name])} failed, "
            f"{skipped[name]} skipped with a reason in the chart"
        )
        for line in failed[name]:
            print(f"    {line}")
            bad = True
    if bad:
        raise SystemExit("charts: FAILED: checkov findings without a reason (fix them or skip with one)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True, type=Path)
    parser.add_argument("--kube-versions", required=True, help="space separated, e.g. '1.29 1.37'")
    parser.add_argument("--out", type=Path, default=ROOT / ".helm" / "rendered")
    args = parser.parse_args()
    helm = str(args.helm.resolve())
    venv_bin = Path(sys.executable).parent
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.yaml"):
        old.unlink()
    total = time.monotonic()

    with stage("helm dependency build"):
        run([helm, "dependency", "build", str(CHART)])
    with stage("helm lint --strict"):
        for extra in profiles().values():
            run([helm, "lint", "--strict", str(CHART), *extra])
    rendered: dict[str, Path] = {}
    with stage("helm template"):
        for name, extra in profiles().items():
            proc = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *extra])
            rendered[name] = args.out / f"{name}.yaml"
            rendered[name].write_text(proc.stdout)
    for version in args.kube_versions.split():
        with stage(f"kubernetes-validate --strict {version}"):
            run(
                [
                    str(venv_bin / "kubernetes-validate"),
                    "--strict",
                    "--quiet",
                    "-k",
                    f"{version}.0",
                    *map(str, rendered.values()),
                ]
            )
    with stage("checkov"):
        scan(args.out, rendered, venv_bin)
    with stage("values table in README is current"):
        run([sys.executable, str(ROOT / "ops" / "charts" / "values-table.py"), "--check"])

    print("charts: OK for profiles " + ", ".join(rendered))
    for name, seconds in TIMINGS:
        print(f"charts:   {seconds:6.1f} s  {name}")
    print(f"charts:   {time.monotonic() - total:6.1f} s  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
