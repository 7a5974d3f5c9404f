"""Pulp signing in the chart: the farm key's Secret, the registering hook Job, the farm's setting.

There is no Kubernetes cluster here: the rendered objects are the test (``make charts`` also
validates them against the Kubernetes schemas and checkov).  The two scripts the Pulp image
ships (buildtools/images/pulp) run for real: the signing script in a fresh, empty GNUPGHOME as a
new Pulp pod would (it imports the mounted key itself), judged by gpgv with the public key alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from buildfarm.backends.signing import HOME_NAME, ReleaseSigner, generate_key, stop_agent

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "buildtools" / "images" / "pulp"
SIGN_RELEASE = IMAGE / "sign-release.sh"
ADD_SIGNING_SERVICE = IMAGE / "add-signing-service.sh"
ON = "pulp.signing.existingSecret=farm-signing-key"
KEY_PATH = "/etc/pulp/signing/signing.asc"
SIGNING_PODS = ("pulp-api", "pulp-worker")


def _container(doc: dict[str, Any], helpers: dict[str, Any]) -> dict[str, Any]:
    (container,) = helpers["pod_spec"](doc)["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _signing_volumes(doc: dict[str, Any], helpers: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in helpers["pod_spec"](doc)["volumes"] if "secret" in v and v["name"] == "signing-key"]


def _assert_key_mounted(doc: dict[str, Any], helpers: dict[str, Any], secret: str, key: str) -> None:
    name = doc["metadata"]["name"]
    (volume,) = _signing_volumes(doc, helpers)
    assert volume["secret"]["secretName"] == secret, name
    assert volume["secret"]["items"] == [{"key": key, "path": "signing.asc"}], name
    assert volume["secret"]["defaultMode"] == 0o440, name  # the pod's fsGroup reads it, nobody writes
    container = _container(doc, helpers)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "signing-key"]
    assert mount == {"name": "signing-key", "mountPath": "/etc/pulp/signing", "readOnly": True}, name
    env = _env(container)
    assert env["BUILDFARM_SIGNING_KEY_FILE"] == KEY_PATH, name
    assert env["BUILDFARM_SIGNING_GNUPGHOME"].startswith("/tmp/"), name  # the pod's writable emptyDir


def test_unsigned_by_default(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default")
    components = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs}
    assert "pulp-signing" not in components
    config = helpers["find"](docs, "ConfigMap", "farm")
    assert "BUILDFARM_PULP_SIGNING_SERVICE" not in config["data"]
    for doc in helpers["workloads"](docs):
        assert not _signing_volumes(doc, helpers), doc["metadata"]["name"]
        for container in helpers["pod_spec"](doc)["containers"]:
            assert "BUILDFARM_SIGNING_KEY_FILE" not in _env(container), doc["metadata"]["name"]


@pytest.mark.parametrize("profile", ["default", "multi-node"])
def test_signing_mounts_the_key_and_registers_the_service(
    profile: str, render: Any, helpers: dict[str, Any]
) -> None:
    docs = render(profile, ON)
    for component in SIGNING_PODS:
        _assert_key_mounted(
            helpers["find"](docs, "Deployment", component), helpers, "farm-signing-key", "signing.asc"
        )
    content = helpers["find"](docs, "Deployment", "pulp-content")
    assert not _signing_volumes(content, helpers)  # serves files, never signs
    assert "BUILDFARM_SIGNING_KEY_FILE" not in _env(_container(content, helpers))

    job = helpers["find"](docs, "Job", "pulp-signing")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    # schema first: pulp-migrate is an ordinary Job, the signing hook waits for its migrations
    init = helpers["pod_spec"](job)["initContainers"]
    assert [c["name"] for c in init] == ["wait-migrations"]
    assert "pulpcore-manager migrate --check" in init[0]["command"][-1]
    assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["backoffLimit"] > 0
    _assert_key_mounted(job, helpers, "farm-signing-key", "signing.asc")
    container = _container(job, helpers)
    service = helpers["find"](docs, "ConfigMap", "farm")["data"]["BUILDFARM_PULP_SIGNING_SERVICE"]
    assert container["command"] == ["buildfarm-add-signing-service", service, KEY_PATH]
    assert service == "buildfarm"  # ops/pulp/pulpstack.py's SIGNING_SERVICE: one name everywhere
    assert (
        container["image"] == _container(helpers["find"](docs, "Deployment", "pulp-worker"), helpers)["image"]
    )


def test_the_secret_key_name_is_a_value(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default", ON, "pulp.signing.key=private.asc")
    _assert_key_mounted(
        helpers["find"](docs, "Deployment", "pulp-worker"), helpers, "farm-signing-key", "private.asc"
    )


def test_schema_rejects_a_misspelt_signing_value(helpers: dict[str, Any]) -> None:
    proc = helpers["helm_template"]("--set", "pulp.signing.secret=farm-signing-key")
    assert proc.returncode != 0 and "secret" in proc.stderr


def test_the_pulp_image_ships_gnupg_and_both_scripts() -> None:
    dockerfile = (IMAGE / "Dockerfile").read_text()
    assert "gnupg" in dockerfile.split("apt-get install", 1)[1].split("\n", 1)[0]
    assert "COPY sign-release.sh /usr/local/bin/buildfarm-sign-release" in dockerfile
    assert "COPY add-signing-service.sh /usr/local/bin/buildfarm-add-signing-service" in dockerfile
    for script in (SIGN_RELEASE, ADD_SIGNING_SERVICE):
        assert os.access(script, os.X_OK), f"{script} must be executable (COPY keeps the mode)"
        subprocess.run(["sh", "-n", str(script)], check=True)


def test_sign_release_imports_the_mounted_key_into_an_empty_home(tmp_path: Path) -> None:
    key_file = generate_key(tmp_path / "farm")
    stop_agent(tmp_path / "farm" / HOME_NAME)
    signer = ReleaseSigner(key_file, tmp_path / "farm" / HOME_NAME)
    fingerprint, public = signer.fingerprint, signer.signing_key().public_key
    stop_agent(tmp_path / "farm" / HOME_NAME)
    work = tmp_path / "task"
    work.mkdir()
    (work / "Release").write_text("Origin: buildfarm\nSuite: buildfarm\n")
    home = tmp_path / "h"  # a new pod's: nothing in it yet (short path: gpg-agent's socket)
    env = {
        "PATH": os.environ["PATH"],
        "PULP_SIGNING_KEY_FINGERPRINT": fingerprint,
        "BUILDFARM_SIGNING_GNUPGHOME": str(home),
        "BUILDFARM_SIGNING_KEY_FILE": str(key_file),
    }
    try:
        for _ in range(2):  # the first run imports the key, the second finds it
            done = subprocess.run(
                [str(SIGN_RELEASE), "Release"], cwd=work, env=env, capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout) == {
                "signatures": {"inline": str(work / "InRelease"), "detached": str(work / "Release.gpg")}
            }
    finally:
        stop_agent(home)
    keyring = tmp_path / "public.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(keyring)], input=public.encode(), check=True)
    for args in (["InRelease"], ["Release.gpg", "Release"]):
        subprocess.run(["gpgv", "--keyring", str(keyring), *args], cwd=work, check=True, capture_output=True)


@pytest.mark.parametrize("content", [None, "not a key\n"])
def test_add_signing_service_refuses_a_bad_key_file_in_one_line(tmp_path: Path, content: str | None) -> None:
    key_file = tmp_path / "signing.asc"
    if content is not None:
        key_file.write_text(content)
    env = {"PATH": os.environ["PATH"], "BUILDFARM_SIGNING_GNUPGHOME": str(tmp_path / "h")}
    done = subprocess.run(
        [str(ADD_SIGNING_SERVICE), "buildfarm", str(key_file)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    expected = "cannot read the signing key" if content is None else "holds no OpenPGP key"
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
