"""The settings the chart renders are ones the farm accepts, and its volumes hold what they allow.

Every farm process reads the farm ConfigMap as BUILDFARM_* variables at start and exits on a value
it refuses (issue 13: `builders.resources` with `cpu: 2` passed the schema and stopped every farm
process), so the ConfigMap of each profile is loaded here with the farm's own settings code. The
work directory of each pod must hold the largest upload or outputs those same settings allow.

The contract both ways (issue 14): every BUILDFARM_* name any rendering of the chart holds is a
setting (or one of the farm's documented non-settings), since a farm process refuses an unknown
one at start; and every setting is either rendered or listed in NOT_IN_CHART with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildfarm.model.settings import NON_SETTING_VARIABLES, Settings, load_settings, setting_variables

VALUES = Path(__file__).resolve().parents[2] / "values"

DEFAULT_TUNABLE = "a tunable whose default suits a cluster: set it with <component>.extraEnvVars"
NOT_IN_CHART: dict[str, str] = {
    # Settings the chart never renders, and why.  A new setting must land here or in the chart.
    "BUILDFARM_NOTIFY_ATTEMPTS": "delivery tuning of notifications: the defaults (extraEnvVars for the rest)",
    "BUILDFARM_NOTIFY_LOOKBACK_SECONDS": "delivery tuning of notifications: the default (extraEnvVars)",
    "BUILDFARM_NOTIFY_RETRY_SECONDS": "delivery tuning of notifications: the default (extraEnvVars)",
    "BUILDFARM_NOTIFY_TICK_SECONDS": "delivery tuning of notifications: the default (extraEnvVars)",
    "BUILDFARM_NOTIFY_TIMEOUT_SECONDS": "delivery tuning of notifications: the default (extraEnvVars)",
    "BUILDFARM_NOTIFY_SMTP_USERNAME": "SMTP login: not in farm.notifications yet (extraEnvVars)",
    "BUILDFARM_NOTIFY_SMTP_PASSWORD_FILE": "not in farm.notifications yet (extraEnvVars, a Secret)",
    "BUILDFARM_BASE_TARBALL": "the local runners' chroot: the chart's runner is kubernetes (builder pods)",
    "BUILDFARM_CACHE_DIR": "the local runners' and buildah caches; builder pods have their images",
    "BUILDFARM_SBUILD_TMPDIR": "the local runners' chroots: the chart's runner is kubernetes",
    "BUILDFARM_ENV_PACKAGES": "the local runners' cached environments: the chart's runner is kubernetes",
    "BUILDFARM_APT_PROXY": "the local runners' package cache; builder pods fetch from the mirrors",
    "BUILDFARM_APT_CACHE": "whether `buildfarm start` runs apt-cacher-ng: the local profile only",
    "BUILDFARM_PACKAGE_CACHE": "local environments' package cache: the chart's runner is kubernetes",
    "BUILDFARM_ENV_LAYER_MAX_BYTES": "local runners' dependency layers: the chart's runner is kubernetes",
    "BUILDFARM_ENV_LAYER_MIN_PACKAGES": "local runners' dependency layers: the chart's runner is kubernetes",
    "BUILDFARM_REPO_HOST": "the local repository server; the chart serves packages from Pulp",
    "BUILDFARM_REPO_PORT": "the local repository server; the chart serves packages from Pulp",
    "BUILDFARM_KUBECONFIG": "out-of-cluster use only: the chart's pods use their in-cluster configuration",
    "BUILDFARM_SIGNING_KEYRING": "apt's place for the key (Debian's default) is right for clusters too; "
    + DEFAULT_TUNABLE,
    "BUILDFARM_S3_SECURE": "the chart gives the S3 endpoint as a URL, whose scheme decides https",
    "BUILDFARM_S3_ACCESS_KEY_FILE": "the chart passes the S3 keys from a Secret (BUILDFARM_S3_ACCESS_KEY)",
    "BUILDFARM_S3_SECRET_KEY_FILE": "the chart passes the S3 keys from a Secret (BUILDFARM_S3_SECRET_KEY)",
    "BUILDFARM_PULP_PASSWORD_FILE": "the chart passes it from a Secret (BUILDFARM_PULP_PASSWORD)",
    "BUILDFARM_REGISTRY_PASSWORD_FILE": "the chart passes it from a Secret (BUILDFARM_REGISTRY_PASSWORD)",
    "BUILDFARM_BACKUP_S3_ACCESS_KEY_FILE": "the chart passes it from farm.backup.existingSecret",
    "BUILDFARM_BACKUP_S3_SECRET_KEY_FILE": "the chart passes it from farm.backup.existingSecret",
    "BUILDFARM_REAPER_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_REDISPATCH_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_API_MAX_UNPACK_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_API_FOLLOW_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_PULP_TASK_TIMEOUT_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_PULP_HTTP_TIMEOUT_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_PULP_ORPHAN_PROTECTION_MINUTES": DEFAULT_TUNABLE + " (unset: Pulp's own, a day)",
    "BUILDFARM_REPOSITORY_RETRY_MIN_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_REPOSITORY_RETRY_MAX_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_REPOSITORY_GIVE_UP_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_RETENTION_UPLOAD_HOURS": DEFAULT_TUNABLE,
    "BUILDFARM_BUILD_PRIORITIES": DEFAULT_TUNABLE + " (release, on-demand, nightly, personal in that order)",
    "BUILDFARM_FAIR_SHARE_WEIGHTS": DEFAULT_TUNABLE + " (every project weighs 1)",
    "BUILDFARM_FAIR_SHARE_CHARGE_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_UNSCHEDULABLE_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_CROSS_FALLBACK_SECONDS": DEFAULT_TUNABLE,
    "BUILDFARM_NODE_HEARTBEAT_SECONDS": DEFAULT_TUNABLE,
}
"""Settings the chart does not render, each with the reason."""

# BUILDFARM_SIGNING_KEY_FILE is rendered, but into the Pulp pods only: their sign-release.sh reads
# the key under the farm's setting name. The farm's own processes never get it (Pulp signs).

CHART_NON_SETTINGS = {"BUILDFARM_ADMIN_USER", "BUILDFARM_SIGNING_GNUPGHOME"}
"""Non-settings the chart renders: the bootstrap Job's admin name, the Pulp pods' GnuPG home."""

VARIANTS: tuple[tuple[str, ...], ...] = (
    (
        "farm.backup.target=s3://backups/farm",
        "farm.backup.s3Endpoint=https://s3.example",
        "farm.backup.existingSecret=backup-s3",
        "farm.schedules.backup=0 4 * * *",
    ),
    ("pulp.signing.existingSecret=pulp-signing",),
    (
        "farm.notifications.smtpHost=mail.example.org",
        "farm.notifications.dashboardUrl=https://farm.example.org",
    ),
    ("registry.enabled=true",),
    ("registry.enabled=false", "builders.packageImage.repository=ghcr.io/corp/package-builder"),
    ("worker.nodeLabels={gpu,zone=lab}",),
)
"""--set lists that switch on the chart's optional settings (over the default values)."""

SECRETS_FROM_ENV = {
    "BUILDFARM_S3_ACCESS_KEY": "k",
    "BUILDFARM_S3_SECRET_KEY": "s",
    "BUILDFARM_PULP_PASSWORD": "p",
}


def settings_of(
    docs: list[dict[str, Any]], helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    for name in [n for n in os.environ if n.startswith("BUILDFARM_")]:
        monkeypatch.delenv(name)
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    for name, value in {**config, **SECRETS_FROM_ENV}.items():
        monkeypatch.setenv(name, value)
    return load_settings(state_dir=tmp_path)


def test_every_profile_renders_settings_the_farm_accepts(
    profile_docs: Any, helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, docs = profile_docs
    settings = settings_of(docs, helpers, monkeypatch, tmp_path)
    assert settings.builders.runner == "kubernetes"  # production's, whatever the local default is


def test_integer_cpu_is_accepted_on_both_sides(
    render: Any, helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = render("default", "builders.resources.limits.cpu=2", "builders.resources.requests.cpu=1")
    settings = settings_of(docs, helpers, monkeypatch, tmp_path)
    assert settings.builders.resources["limits"]["cpu"] == "2"
    assert settings.builders.resources["requests"]["cpu"] == "1"
    proc = helpers["helm_template"]("--set", "builders.resources.limits.cpu=two")
    assert proc.returncode != 0 and "/builders/resources/limits/cpu" in proc.stderr


def test_the_workers_node_labels_reach_the_farm(
    render: Any, helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A node's custom labels (issue 16) are set in the values and advertised by its worker."""
    docs = render("default", "worker.nodeLabels={gpu,zone=lab}")
    [container] = helpers["pod_spec"](helpers["find"](docs, "DaemonSet", "worker"))["containers"]
    [value] = [e["value"] for e in container["env"] if e["name"] == "BUILDFARM_NODE_LABELS"]
    monkeypatch.setenv("BUILDFARM_NODE_LABELS", value)
    assert load_settings(state_dir=tmp_path).builders.labels == ["gpu", "zone=lab"]
    proc = helpers["helm_template"]("--set", "worker.nodeLabels={Zone=Lab}")
    assert proc.returncode != 0 and "nodeLabels" in proc.stderr


def work_volume_bytes(doc: dict[str, Any], helpers: dict[str, Any]) -> int:
    (state,) = [v for v in helpers["pod_spec"](doc)["volumes"] if v["name"] == "state"]
    if "emptyDir" in state:
        return int(state["emptyDir"]["sizeLimit"])
    return int(state["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"])


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("worker.concurrency=3", "farm.apiMaxUnpackedBytes=10737418240"),
        ("farm.workVolume.storageClassName=fast",),
    ],
)
def test_work_volumes_hold_what_the_settings_allow(
    sets: tuple[str, ...],
    render: Any,
    helpers: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    docs = render("default", *sets)
    settings = settings_of(docs, helpers, monkeypatch, tmp_path)
    api = work_volume_bytes(helpers["find"](docs, "Deployment", "api"), helpers)
    assert api >= settings.api.max_upload_bytes + settings.api.max_unpacked_bytes
    worker = work_volume_bytes(helpers["find"](docs, "DaemonSet", "worker"), helpers)
    assert worker >= settings.builders.concurrency * 2 * settings.builders.max_outputs_bytes
    scheduler = work_volume_bytes(helpers["find"](docs, "Deployment", "scheduler"), helpers)
    assert scheduler >= 2 * settings.builders.max_outputs_bytes


def test_fetch_policy_reaches_the_farm(
    render: Any, helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The URL policy of sources (issue 11: no reading the host) is set through the chart: https
    and public hosts only by default, an allow-list when the values name one."""
    default = settings_of(render("default"), helpers, monkeypatch, tmp_path)
    assert (default.fetch.allow_schemes, default.fetch.allow_hosts) == (["https"], [])
    docs = render(
        "default", "farm.fetchAllowSchemes={https,git}", "farm.fetchAllowHosts={git.corp.example,10.1.0.0/16}"
    )
    allowed = settings_of(docs, helpers, monkeypatch, tmp_path)
    assert allowed.fetch.allow_schemes == ["https", "git"]
    assert allowed.fetch.allow_hosts == ["git.corp.example", "10.1.0.0/16"]
    proc = helpers["helm_template"]("--set", "farm.fetchAllowSchemes={file}")
    assert proc.returncode != 0 and "fetchAllowSchemes" in proc.stderr


def buildfarm_names(docs: list[dict[str, Any]], helpers: dict[str, Any]) -> Iterator[str]:
    """Every BUILDFARM_* name in a rendering: ConfigMap keys, containers' env and envFrom prefixes."""
    for doc in helpers["by_kind"](docs, "ConfigMap"):
        yield from (name for name in doc.get("data") or {} if name.startswith("BUILDFARM_"))
    for doc in helpers["workloads"](docs):
        spec = helpers["pod_spec"](doc)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield from (e["name"] for e in container.get("env", []) if e["name"].startswith("BUILDFARM_"))


def profiles() -> list[str]:
    return ["default", *sorted(p.stem for p in VALUES.glob("*.yaml"))]


@pytest.fixture(scope="module")
def rendered_names(render: Any, helpers: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for profile in profiles():
        names.update(buildfarm_names(render(profile), helpers))
    for sets in VARIANTS:
        names.update(buildfarm_names(render("default", *sets), helpers))
    return names


def test_the_chart_renders_only_real_settings(rendered_names: set[str]) -> None:
    """A farm process stops at start on an unknown BUILDFARM_* variable: the chart holds none."""
    unknown = rendered_names - set(setting_variables()) - CHART_NON_SETTINGS
    assert not unknown, f"the chart renders BUILDFARM_* names that are no setting: {sorted(unknown)}"
    assert set(NON_SETTING_VARIABLES) >= CHART_NON_SETTINGS


def test_every_setting_is_in_the_chart_or_listed_with_a_reason(rendered_names: set[str]) -> None:
    settings = set(setting_variables())
    missing = settings - rendered_names - set(NOT_IN_CHART)
    assert not missing, f"settings neither rendered by the chart nor in NOT_IN_CHART: {sorted(missing)}"
    stale = set(NOT_IN_CHART) & rendered_names
    assert not stale, f"NOT_IN_CHART names settings the chart does render: {sorted(stale)}"
    unknown = set(NOT_IN_CHART) - settings
    assert not unknown, f"NOT_IN_CHART names no setting: {sorted(unknown)}"


def test_mirrors_are_set_through_the_chart(
    render: Any, helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """farm.mirrors reaches the farm as its own MirrorConfig list (signedBy is signed_by)."""
    assert settings_of(render("default"), helpers, monkeypatch, tmp_path).mirrors.repositories == []
    docs = render(
        "default",
        "farm.mirrors[0].name=extras",
        "farm.mirrors[0].url=https://deb.example/debian",
        "farm.mirrors[0].distribution=bookworm",
        "farm.mirrors[0].signedBy=/etc/buildfarm/keys/extras.asc",
        "farm.mirrors[1].name=plain",
        "farm.mirrors[1].url=http://deb.example/plain",
        "farm.mirrors[1].distribution=stable",
        "farm.mirrors[1].components={main,contrib}",
        "farm.mirrorRetainVersions=3",
    )
    mirrors = settings_of(docs, helpers, monkeypatch, tmp_path).mirrors
    extras, plain = mirrors.repositories
    assert (extras.name, extras.url, extras.distribution) == (
        "extras",
        "https://deb.example/debian",
        "bookworm",
    )
    assert (extras.components, extras.architectures) == (["main"], ["amd64"])
    assert extras.signed_by == "/etc/buildfarm/keys/extras.asc"
    assert (plain.components, plain.signed_by) == (["main", "contrib"], None)
    assert mirrors.retain_versions == 3
    proc = helpers["helm_template"]("--set", "farm.mirrors[0].name=x", "--set", "farm.mirrors[0].urls=y")
    assert proc.returncode != 0 and "urls" in proc.stderr


def test_extra_env_vars_reach_the_farm_processes(render: Any, helpers: dict[str, Any]) -> None:
    """Settings the chart leaves at their default are set per component with extraEnvVars."""
    sets = [
        f"{component}.extraEnvVars[0].{key}"
        for component in ("api", "worker", "scheduler")
        for key in ("name=BUILDFARM_SIGNING_KEYRING", "value=/etc/apt/keyrings/farm.asc")
    ]
    docs = render("default", *sets)
    for kind, component in (("Deployment", "api"), ("DaemonSet", "worker"), ("Deployment", "scheduler")):
        (container, *_) = helpers["pod_spec"](helpers["find"](docs, kind, component))["containers"]
        keyring = {"name": "BUILDFARM_SIGNING_KEYRING", "value": "/etc/apt/keyrings/farm.asc"}
        assert keyring in container["env"], component


def test_farm_pods_get_no_service_link_variables(profile_docs: Any, helpers: dict[str, Any]) -> None:
    """Kubernetes would put BUILDFARM_API_SERVICE_HOST and the like (from the buildfarm-* Services)
    into every pod, and a farm process refuses BUILDFARM_* variables that are no setting."""
    _, docs = profile_docs
    farm_pods = [
        doc
        for doc in helpers["workloads"](docs)
        if any(
            ref.get("configMapRef", {}).get("name", "").endswith("farm-config")
            for container in helpers["pod_spec"](doc)["containers"]
            for ref in container.get("envFrom", [])
        )
    ]
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in farm_pods} >= {
        "api",
        "worker",
        "scheduler",
    }
    for doc in farm_pods:
        assert helpers["pod_spec"](doc).get("enableServiceLinks") is False, doc["metadata"]["name"]
