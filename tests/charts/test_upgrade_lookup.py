"""An upgrade rendered against a cluster that holds the install's Secrets must not change them.

`helm template --dry-run=server` against the API test double (tests/kubekit/, which
serves discovery and Secrets) runs the chart's `lookup` as a real `helm upgrade` would; `make e2e`
found the registry's htpasswd (bcrypt, a fresh salt each render) rewritten by every upgrade.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from chartkit import CHART, HELM, helm_env
from kubekit import fake_cluster


def _render(kubeconfig: Path, *args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [
            str(HELM),
            "template",
            "bf",
            str(CHART),
            "-n",
            "buildfarm",
            "--dry-run=server",
            "--disable-openapi-validation",
            "--kubeconfig",
            str(kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        env=helm_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_an_upgrade_keeps_every_generated_secret(tmp_path: Path) -> None:
    with fake_cluster(tmp_path / "cluster") as cluster:
        kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
        installed = {d["metadata"]["name"]: d for d in _render(kubeconfig) if d["kind"] == "Secret"}
        for name, secret in installed.items():
            cluster.secrets[(secret["metadata"].get("namespace", "buildfarm"), name)] = secret
        upgraded = {
            d["metadata"]["name"]: d
            for d in _render(kubeconfig, "--is-upgrade", "--set", "farm.heartbeatSeconds=6")
            if d["kind"] == "Secret"
        }
    changed = sorted(
        n for n in installed if n in upgraded and installed[n].get("data") != upgraded[n].get("data")
    )
    assert changed == []
