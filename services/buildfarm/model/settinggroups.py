"""The farm's settings in groups, one typed model per concern, each handed only to what needs it.

Every field keeps the flat name it always had as its alias: ``BUILDFARM_<ALIAS>`` is its
environment variable (``BUILDFARM_DATABASE_URL`` fills ``database.url``), the key in the farm
file and the keyword of ``load_settings``.  Operators, the chart and the ops scripts keep the
names they know; code reads ``settings.database.url`` and a backend is given one group, not
the whole farm's configuration.  :mod:`buildfarm.model.settings` reads the sources and builds
the groups.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from buildfarm.model.errors import PermanentError
from buildfarm.model.names import check_git_ref
from buildfarm.model.urlpolicy import UrlPolicy, check_url_syntax

DEFAULT_SIGNING_KEYRING = "/etc/apt/keyrings/buildfarm.asc"
"""Where apt users keep the farm's public key: Debian's place for keys of local repositories."""
DEFAULT_ENV_PACKAGES = ("build-essential", "debhelper", "fakeroot", "eatmydata")
"""Preinstalled in build environments (issue 15): what nearly every package's Build-Depends names."""
MAX_PRIORITY = 9
"""Priorities are the broker's (Redis, through kombu): 0 is taken first, 9 last."""
DEFAULT_BUILD_PRIORITIES = {"release": 0, "on-demand": 3, "nightly": 6, "personal": 9}
"""Release before on-demand before nightly before personal (issue 16: a release build is not kept
waiting behind a nightly mass rebuild)."""


def comma_separated(value: Any) -> Any:
    """A list setting from the environment: "https,git" (or a JSON list); other values as given."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def read_secret(value: SecretStr | None, path: Path | None, name: str) -> str:
    """A credential from the environment, or from a file only its owner can read; ``name`` is
    the setting's flat name (``s3_access_key``), for the error line."""
    if value is not None:
        return value.get_secret_value()
    if path is None:
        raise PermanentError(f"setting {name} is missing (or {name}_file)")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise PermanentError(f"setting {name}_file: cannot read {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise PermanentError(f"setting {name}_file: {path} is readable by others: chmod 600 it")
    return path.read_text().strip()


class Group(BaseModel):
    """Base of every group: fields are filled by their flat name (alias) or their own name."""

    model_config = ConfigDict(extra="forbid", validate_by_alias=True, validate_by_name=True)


class MirrorConfig(BaseModel):
    """One 3rd-party Debian repository mirrored into the farm (never expired)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="simple name: the mirror's Pulp repository and distribution use it")
    url: str = Field(description="upstream repository URL (http or https)")
    distribution: str = Field(description="upstream suite, e.g. bookworm")
    components: list[str] = Field(default_factory=lambda: ["main"])
    architectures: list[str] = Field(default_factory=lambda: ["amd64"])
    signed_by: str | None = Field(
        default=None,
        description="absolute path of the upstream's ASCII-armored OpenPGP public key (.asc): a sync "
        "refuses a Release file it did not sign; unset: the signature is not checked",
    )


class ScheduleConfig(BaseModel):
    """One scheduled build: which project/branch, from which manifest, as whom, when (issue 7)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="simple name, unique among schedules")
    cron: str = Field(
        default="", description="5-field cron expression in UTC, e.g. '0 2 * * *'; empty: nightly_schedule"
    )
    project: str
    branch: str
    user: str = Field(description="the service user the build runs as")
    git: str | None = Field(default=None, description="git URL of the tree holding the manifest")
    ref: str | None = Field(default=None, description="branch, tag or commit of `git`")
    manifest: str = Field(
        default="buildfarm.yaml", description="manifest path inside the git tree, or a stored manifest"
    )
    kind: Literal["nightly", "release", "on-demand"] = "nightly"

    @field_validator("git")
    @classmethod
    def _network_url(cls, value: str | None) -> str | None:
        # offline: the farm's URL policy (hosts, schemes) is checked again at every fetch
        try:
            return None if value is None else check_url_syntax(value)
        except PermanentError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("ref")
    @classmethod
    def _git_ref(cls, value: str | None) -> str | None:
        try:
            return None if value is None else check_git_ref(value)
        except PermanentError as exc:
            raise ValueError(str(exc)) from exc


class DatabaseSettings(Group):
    """The farm's database (builds, steps, leases, accounts)."""

    url: str | None = Field(
        default=None,
        alias="database_url",
        description="SQLAlchemy URL; default: SQLite file in the state dir (local profile)",
    )


class BrokerSettings(Group):
    """Celery's broker, also the API's rate-limit counter."""

    url: str | None = Field(
        default=None,
        alias="redis_url",
        description="Celery broker; unset: `buildfarm start` runs a private redis-server",
    )


class BuildEnvSettings(Group):
    """The Debian build environment of sbuild and local image steps."""

    distribution: str = Field(
        default="bookworm", alias="distribution", description="Debian suite of the build environment"
    )
    mirror: str = Field(
        default="http://deb.debian.org/debian",
        alias="mirror",
        description="Debian mirror for the base tarball",
    )
    base_tarball: Path | None = Field(
        default=None,
        alias="base_tarball",
        description="sbuild base tarball; default: <cache dir>/<distribution>-base.tar",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "buildfarm",
        alias="cache_dir",
        description="shared across farms and test runs: the base tarball lives here (~445 MB, ~20 s to make)",
    )
    sbuild_tmpdir: Path | None = Field(
        default_factory=lambda: Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None,
        alias="sbuild_tmpdir",
        description="where sbuild unpacks the chroot; tmpfs makes a tiny build ~15 s instead of ~27 s, "
        "at ~0.6 GB RAM per running build; unset: the system's temporary directory (/tmp)",
    )

    # -- Build environments (issue 15, buildfarm.environments): cached, content-addressed
    # toolchain tarballs and the farm's package cache.
    packages: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ENV_PACKAGES),
        alias="env_packages",
        description="packages preinstalled in every build environment besides the buildd variant "
        "(comma-separated in env); default: the Debian build toolchain nearly every package needs, "
        "so a step installs only what is particular to it. Changing it makes a new environment",
    )
    apt_proxy: str | None = Field(
        default=None,
        alias="apt_proxy",
        description="HTTP proxy (a package cache, e.g. http://127.0.0.1:3142) through which environments "
        "are made and every step's apt fetches packages; `buildfarm start` sets it to the apt-cacher-ng "
        "it runs (local profile); unset: straight to the mirrors",
    )
    package_cache: Literal["auto", "proxy"] = Field(
        default="auto",
        alias="package_cache",
        description="the farm-side package cache environments and steps fetch Debian's packages through: "
        "auto = with the Pulp repository backend, Pulp's on-demand distribution of the mirror (each .deb "
        "fetched from outside once; the first sync reads the mirror's whole index, minutes), else apt_proxy; "
        "proxy = apt_proxy whatever the backend (the Pulp demo, a farm behind its own cache)",
    )
    apt_cache: bool = Field(
        default=True,
        alias="apt_cache",
        description="whether `buildfarm start` runs apt-cacher-ng as the farm's package cache (when "
        "installed and apt_proxy is unset): N steps and nodes fetch each .deb from outside once",
    )
    layer_max_bytes: int = Field(
        default=8 << 30,
        ge=0,
        alias="env_layer_max_bytes",
        description="bytes of dependency layers (an environment with one step's resolved Build-Depends "
        "preinstalled, ~0.5-1 GB each) kept in the cache directory; least recently used go first. "
        "8 GiB: about ten big Build-Depends sets. 0: no layers (every step installs its dependencies)",
    )
    layer_min_packages: int = Field(
        default=5,
        ge=1,
        alias="env_layer_min_packages",
        description="a step gets a dependency layer when it needs at least this many packages from the "
        "Debian archive beyond its environment; below, sbuild installs them (a few small packages take "
        "~1-2 s, a layer costs a whole environment of disk)",
    )
    refresh_schedule: str = Field(
        default="",
        alias="env_refresh_schedule",
        description="cron of the scheduler's refresh of the build environment from the mirror (security "
        "updates; an unchanged mirror changes nothing), followed by pruning environments and layers no "
        "kept build names; empty: off (`buildfarm env refresh` by hand)",
    )

    @field_validator("packages", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return comma_separated(value)

    @property
    def tarball(self) -> Path:
        """The base tarball in use: the one set, else the cache's one of the distribution."""
        return self.base_tarball or self.cache_dir / f"{self.distribution}-base.tar"


class StepSettings(Group):
    """Leases and timing of build steps (the reaper's clock)."""

    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        alias="lease_seconds",
        description="a running step's lease; a node silent this long is taken as dead",
    )
    heartbeat_seconds: float = Field(
        default=5.0, gt=0, alias="heartbeat_seconds", description="lease renewal period, well under lease"
    )
    timeout_seconds: float = Field(
        default=3600.0, gt=0, alias="step_timeout_seconds", description="longest one build step may run"
    )
    reaper_seconds: float = Field(
        default=5.0, gt=0, alias="reaper_seconds", description="how often expired leases are reclaimed"
    )
    redispatch_seconds: float = Field(
        default=30.0,
        gt=0,
        alias="redispatch_seconds",
        description="a step ready this long without a taker is sent to the queue again (then at pauses "
        "that double, up to 20 times this; the step keeps its place in the queue)",
    )
    priorities: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_BUILD_PRIORITIES),
        alias="build_priorities",
        description="dispatch priority of each build kind's steps, 0 (first) to 9 (last): a ready step of "
        "a release build is taken before any queued nightly step; JSON, e.g. "
        '{"release": 0, "on-demand": 3, "nightly": 6, "personal": 9} (the default); kinds left out keep '
        "their default",
    )

    share_weights: dict[str, float] = Field(
        default_factory=dict,
        alias="fair_share_weights",
        description="weight of each project in the fair share of nodes inside a priority class (node-"
        "seconds are charged divided by it: a project of weight 2 gets twice the share of one of "
        'weight 1, the default for projects left out); JSON, e.g. {"core": 2, "sandbox": 0.5}',
    )
    share_charge_seconds: float = Field(
        default=60.0,
        gt=0,
        alias="fair_share_charge_seconds",
        description="node-seconds charged to a tenant when one of its steps is taken, before its real "
        "duration is known (corrected when the step ends): the default is about a small package build",
    )
    unschedulable_seconds: float = Field(
        default=1800.0,
        gt=0,
        alias="unschedulable_seconds",
        description="a ready step that no online node can run (its required labels: arch=arm64...) "
        "fails with the reason after this long; 30 minutes lets a node reboot or a pool scale up",
    )
    cross_fallback_seconds: float = Field(
        default=60.0,
        gt=0,
        alias="cross_fallback_seconds",
        description="a foreign-architecture step placed on a native node of its architecture (arm64 "
        "on an arm64 node) that no online node has been able to run for this long is cross-built on "
        "the farm's own architecture instead (re-keyed with its pending dependents); never one whose "
        "manifest says arch:",
    )
    node_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        alias="node_heartbeat_seconds",
        description="how often a worker records itself and its labels in the nodes table; a node "
        "unheard for three periods is offline for routing and for `waiting:` reasons",
    )

    @field_validator("share_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(project for project, weight in value.items() if not weight > 0)
        if bad:
            raise ValueError(f"the weight of {', '.join(bad)} must be more than 0")
        return value

    @field_validator("priorities")
    @classmethod
    def _known_kinds(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(DEFAULT_BUILD_PRIORITIES))
        if unknown:
            known = ", ".join(DEFAULT_BUILD_PRIORITIES)
            raise ValueError(f"unknown build kind(s) {', '.join(unknown)}: use {known}")
        bad = sorted(kind for kind, priority in value.items() if not 0 <= priority <= MAX_PRIORITY)
        if bad:
            raise ValueError(f"priority of {', '.join(bad)} must be 0 (first) to {MAX_PRIORITY} (last)")
        return {**DEFAULT_BUILD_PRIORITIES, **value}


class BuildersSettings(Group):
    """Who builds: the runner of this node's steps, and builder pods on Kubernetes."""

    runner: Literal["sbuild", "unshare", "host", "kubernetes"] = Field(
        default="unshare",
        alias="runner",
        description="unshare: a builder pod's command (buildfarm-step) in a clean chroot of one user "
        "namespace per step, on this node (what kubernetes runs, with far less setup than sbuild); "
        "sbuild: Debian's sbuild in a clean unshare chroot per step (what Debian's buildds run); "
        "host: dpkg-buildpackage here; kubernetes: one transient builder pod per step (the chart's)",
    )
    concurrency: int = Field(
        default=1, ge=1, le=64, alias="node_concurrency", description="steps one node builds at once"
    )
    node: str | None = Field(
        default=None,
        alias="node",
        description="this worker's node (the chart sets spec.nodeName on a DaemonSet)",
    )
    labels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        alias="node_labels",
        description="labels this node advertises besides the ones it finds (arch=<dpkg architectures>, "
        "builder=<kinds>, cpu=/memory=small|medium|large): key=value or tags, comma-separated in env, "
        "e.g. gpu,zone=lab; a step whose manifest `requires:` them runs only on such a node",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_comma_separated(cls, value: Any) -> Any:
        return comma_separated(value)

    kubeconfig: Path | None = Field(
        default=None,
        alias="kubeconfig",
        description="kubeconfig for out-of-cluster use; unset: in-cluster configuration",
    )
    namespace: str = Field(
        default="buildfarm-builders", alias="builder_namespace", description="namespace of builder pods"
    )
    service_account: str | None = Field(
        default=None,
        alias="builder_service_account",
        description="service account of builder pods (no token is mounted)",
    )
    image: str = Field(
        default="buildfarm/package-builder:latest",
        alias="builder_image",
        description="package-builder image (builder pods)",
    )
    image_builder_image: str = Field(
        default="ghcr.io/osscontainertools/kaniko:v1.28.2",
        alias="image_builder_image",
        description="kaniko-compatible image of image steps (the maintained fork of archived kaniko)",
    )
    pin_to_node: bool = Field(
        default=False,
        alias="builder_pin_to_node",
        description="pin builder pods to the worker's node (true when workers run as a DaemonSet and "
        "`node` is spec.nodeName; a Deployment's `node` is a pod name, not a node)",
    )
    sysbox_image: str = Field(
        default="docker.io/library/docker:27-dind",
        alias="builder_sysbox_image",
        description="image of sysbox steps: runs dockerd and `docker build` inside the sysbox runtime",
    )
    runtime_class: str = Field(
        default="",
        alias="builder_runtime_class",
        description="runtimeClassName of sysbox steps (empty: sysbox steps are refused)",
    )
    ttl_seconds: int = Field(
        default=3600, ge=0, alias="builder_ttl_seconds", description="ttlSecondsAfterFinished of builder Jobs"
    )
    deadline_seconds: int = Field(
        default=7200,
        gt=0,
        alias="builder_deadline_seconds",
        description="activeDeadlineSeconds of builder Jobs",
    )
    resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        alias="builder_resources",
        description="default resource requests/limits of builder pods (a manifest may override); "
        "quantities as Kubernetes writes them: strings, or numbers (cpu: 2, as YAML gives it)",
    )
    max_outputs_bytes: int = Field(
        default=16 << 30,
        gt=0,
        alias="builder_max_outputs_bytes",
        description="largest outputs archive a worker downloads from one builder pod (bytes; 16 GiB): "
        "the pod is untrusted, the worker's disk is not endless (the chart sizes the work volume from it)",
    )
    registry_secret: str = Field(
        default="buildfarm-registry-push",
        alias="builder_registry_secret",
        description="push-scoped registry Secret in the builder namespace (all image pods may use)",
    )

    @field_validator("resources", mode="before")
    @classmethod
    def _quantities_as_strings(cls, value: Any) -> Any:
        """``{"limits": {"cpu": 2}}`` (a YAML or JSON number) is the quantity "2", as in Kubernetes."""
        if not isinstance(value, dict):
            return value
        return {
            kind: (
                {
                    name: str(q) if isinstance(q, int | float) and not isinstance(q, bool) else q
                    for name, q in quantities.items()
                }
                if isinstance(quantities, dict)
                else quantities
            )
            for kind, quantities in value.items()
        }


class ApiSettings(Group):
    """The REST API: where it listens and what one request or user may cost."""

    host: str = Field(default="127.0.0.1", alias="api_host", description="address the REST API binds")
    port: int = Field(
        default=8781, ge=0, le=65535, alias="api_port", description="REST API port (0: any free)"
    )
    max_upload_bytes: int = Field(
        default=256 << 20,
        gt=0,
        alias="api_max_upload_bytes",
        description="largest source tarball accepted (bytes); 256 MiB by default",
    )
    max_unpacked_bytes: int = Field(
        default=4 << 30,
        gt=0,
        alias="api_max_unpacked_bytes",
        description="largest size an uploaded source tree may unpack to (bytes)",
    )
    max_unpacked_files: int = Field(
        default=100_000,
        gt=0,
        alias="api_max_unpacked_files",
        description=(
            "most files, directories and symlinks an uploaded source tree may hold. 100 000 by "
            "default: the biggest Debian source trees people build on a desk are around 80 000 "
            "(the Linux kernel), while unpacking costs API CPU and inodes per member (a 2 MB "
            "gzip of 300 000 empty files took minutes); raise it for trees like Chromium's"
        ),
    )
    max_unpack_seconds: float = Field(
        default=120.0,
        gt=0,
        alias="api_max_unpack_seconds",
        description=(
            "longest the API spends checking and unpacking one uploaded tree (seconds); a Linux "
            "kernel tree takes well under a minute, so only a hostile tarball reaches it"
        ),
    )
    rate_per_minute: int = Field(
        default=600,
        gt=0,
        alias="api_rate_per_minute",
        description="requests one token may make per minute (counted in Redis, all replicas)",
    )
    anonymous_rate_per_minute: int = Field(
        default=120,
        gt=0,
        alias="api_anonymous_rate_per_minute",
        description=(
            "requests per minute from one client address without a valid token (missing, wrong "
            "or expired; health checks excepted), counted in Redis across replicas. Behind a "
            "proxy every client has the proxy's address: raise it there"
        ),
    )
    max_running_builds: int = Field(
        default=10,
        gt=0,
        alias="api_max_running_builds",
        description="builds one user may have running at once (personal builds included)",
    )
    follow_seconds: float = Field(
        default=3600.0, gt=0, alias="api_follow_seconds", description="longest one `logs --follow` stream"
    )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class FetchSettings(Group):
    """What the farm fetches on a user's behalf (model/urlpolicy.py): git sources, image contexts,
    schedules' git, upstream tarballs.  Secure by default in every profile."""

    allow_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https"],
        alias="fetch_allow_schemes",
        description="URL schemes sources may be fetched with, among https, http, git and ssh "
        "(comma-separated in env); default https only: encrypted, and needs no keys on the farm",
    )
    allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        alias="fetch_allow_hosts",
        description="hosts (git.corp.example, or .corp.example for every name below it), addresses "
        "or networks (127.0.0.1, ::1, 10.0.0.0/8) sources may be fetched from although not public "
        "(comma-separated in env); default none: loopback, private, link-local and other "
        "non-public addresses are refused, so a manifest cannot reach the farm's own services",
    )

    @field_validator("allow_schemes", "allow_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return comma_separated(value)

    @property
    def url_policy(self) -> UrlPolicy:
        """What sources may be fetched from (checked at start by ``Settings.check``)."""
        return UrlPolicy.parse(self.allow_schemes, self.allow_hosts)


class StorageSettings(Group):
    """The artifact store: build logs, outputs, uploads."""

    kind: Literal["fs", "s3"] = Field(
        default="fs",
        alias="artifacts",
        description="artifact store: fs (a directory in the state dir) or s3 (any S3 endpoint)",
    )
    s3_endpoint: str | None = Field(
        default=None, alias="s3_endpoint", description="S3 host:port (MinIO in the chart)"
    )
    s3_secure: bool = Field(default=True, alias="s3_secure", description="https to the S3 endpoint")
    s3_region: str | None = Field(
        default=None, alias="s3_region", description="S3 region (saves a lookup request)"
    )
    s3_bucket: str = Field(
        default="buildfarm", alias="s3_bucket", description="bucket for artifacts and logs"
    )
    s3_access_key: SecretStr | None = Field(
        default=None, alias="s3_access_key", description="S3 access key (from a Secret)"
    )
    s3_secret_key: SecretStr | None = Field(
        default=None, alias="s3_secret_key", description="S3 secret key (from a Secret)"
    )
    s3_access_key_file: Path | None = Field(
        default=None, alias="s3_access_key_file", description="file holding the access key (0600)"
    )
    s3_secret_key_file: Path | None = Field(
        default=None, alias="s3_secret_key_file", description="file holding the secret key (0600)"
    )

    def s3_credentials(self) -> tuple[str, str]:
        """Access and secret key of the S3 store, from the environment or 0600 files."""
        return (
            read_secret(self.s3_access_key, self.s3_access_key_file, "s3_access_key"),
            read_secret(self.s3_secret_key, self.s3_secret_key_file, "s3_secret_key"),
        )


class RepositorySettings(Group):
    """The package repository builds are staged and published in, and how hard to retry it."""

    kind: Literal["local", "pulp"] = Field(
        default="local",
        alias="repository",
        description="package repository: local (apt-ftparchive) or pulp (pulpcore + pulp_deb)",
    )
    host: str = Field(
        default="127.0.0.1", alias="repo_host", description="address the repository server binds"
    )
    port: int = Field(
        default=8780, ge=0, le=65535, alias="repo_port", description="repository server port (0: any free)"
    )
    retry_min_seconds: float = Field(
        default=5.0,
        gt=0,
        alias="repository_retry_min_seconds",
        description="first pause before staging/publishing again after Pulp or S3 failed (about one "
        "reaper period: a short outage costs seconds)",
    )
    retry_max_seconds: float = Field(
        default=60.0,
        gt=0,
        alias="repository_retry_max_seconds",
        description="longest pause between publish attempts (half the outage so far, capped here)",
    )
    give_up_seconds: float = Field(
        default=3600.0,
        ge=0,
        alias="repository_give_up_seconds",
        description="a build not staged/published this long after its last step fails, naming the "
        "service; `build retry` publishes it later",
    )

    @property
    def url(self) -> str:
        """Where the local repository server serves (repository: local)."""
        return f"http://{self.host}:{self.port}"


class PulpSettings(Group):
    """Pulp (pulpcore + pulp_deb), the repository of the server profiles."""

    url: str | None = Field(
        default=None, alias="pulp_url", description="Pulp API base URL, e.g. http://pulp-api:24817"
    )
    username: str = Field(default="admin", alias="pulp_username", description="Pulp user")
    password: SecretStr | None = Field(
        default=None, alias="pulp_password", description="Pulp password (from a Secret)"
    )
    password_file: Path | None = Field(
        default=None, alias="pulp_password_file", description="file holding the Pulp password (0600)"
    )
    content_origin: str | None = Field(
        default=None,
        alias="pulp_content_origin",
        description="where apt clients reach Pulp's content app, e.g. http://pulp-content:24816",
    )
    task_timeout_seconds: float = Field(
        default=600.0, gt=0, alias="pulp_task_timeout_seconds", description="longest wait on one Pulp task"
    )
    orphan_protection_minutes: int | None = Field(
        default=None,
        ge=0,
        alias="pulp_orphan_protection_minutes",
        description="minutes an orphaned Pulp artifact is protected from the retention sweep's cleanup "
        "(unset: Pulp's own ORPHAN_PROTECTION_TIME, a day by default)",
    )
    http_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        alias="pulp_http_timeout_seconds",
        description="longest wait on one Pulp API request (a hung Pulp fails this fast)",
    )

    def password_value(self) -> str:
        return read_secret(self.password, self.password_file, "pulp_password")


class SigningSettings(Group):
    """Signed repositories: apt users need no [trusted=yes]."""

    key_file: Path | None = Field(
        default=None,
        alias="signing_key_file",
        description="armored OpenPGP secret key (no passphrase, mode 0600) the local repository signs "
        "Release files with; unset: `buildfarm start` makes one under <state dir>/signing (local "
        "profile), otherwise publications are unsigned and apt lines say [trusted=yes]",
    )
    keyring: str = Field(
        default=DEFAULT_SIGNING_KEYRING,
        alias="signing_keyring",
        description="where apt users keep the farm's public key (`buildfarm repo key`): the signed-by "
        "of every signed apt line; Debian's place for keys of local repositories",
    )
    pulp_service: str | None = Field(
        default=None,
        alias="pulp_signing_service",
        description="name of the Pulp AptReleaseSigningService every build publication is signed with "
        "(ops/pulp/pulpstack.py registers 'buildfarm'); unset: Pulp publications are unsigned",
    )


class RegistrySettings(Group):
    """The farm's container registry (image steps push there; retention deletes from it)."""

    url: str | None = Field(
        default=None,
        alias="registry_url",
        description="the farm's container registry, e.g. http://registry:5000",
    )
    username: str | None = Field(
        default=None,
        alias="registry_username",
        description="account the farm reads and deletes manifests with, when the registry requires one "
        "(the chart's does: htpasswd); unset: anonymous (the local profile's registry)",
    )
    password: SecretStr | None = Field(
        default=None, alias="registry_password", description="its password (from a Secret)"
    )
    password_file: Path | None = Field(
        default=None, alias="registry_password_file", description="file holding it (0600)"
    )

    def auth(self) -> tuple[str, str] | None:
        """Basic-auth credentials of the farm's registry, or None for anonymous access."""
        if self.username is None:
            return None
        return self.username, read_secret(self.password, self.password_file, "registry_password")


class ScheduleSettings(Group):
    """Scheduled (nightly) builds, started by the one scheduler (issue 7)."""

    builds: list[ScheduleConfig] = Field(
        default_factory=list,
        alias="schedules",
        description="scheduled (nightly) builds, run by the one scheduler (JSON in env)",
    )
    nightly: str = Field(
        default="",
        alias="nightly_schedule",
        description="default cron of schedules that give none (empty: schedules must give one)",
    )
    start_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        alias="schedule_start_timeout_seconds",
        description="a scheduled slot claimed this long ago with neither build nor error was left by a "
        "scheduler that died while starting it, and is started again (10 minutes: above a normal start, "
        "a git fetch and packing the sources; shorter is safe, a run never gets two builds, but wasteful)",
    )
    start_attempts: int = Field(
        default=5,
        ge=1,
        alias="schedule_start_attempts",
        description="attempts to start one slot that fails for a temporary reason (git or a service "
        "down); 1: never retried.  A permanent error (bad manifest, no permission) is never retried",
    )
    retry_seconds: float = Field(
        default=60.0,
        gt=0,
        alias="schedule_retry_seconds",
        description="pause before the second attempt, doubled before each next one (1, 2, 4, 8 min by "
        "default: a blip costs a minute, a long outage few attempts); never past the next slot",
    )


class RetentionSettings(Group):
    """How long builds and uploads are kept, and when the sweep runs."""

    schedule: str = Field(
        default="30 3 * * *", alias="retention_schedule", description="cron of the daily retention sweep"
    )
    nightly_days: int = Field(
        default=14, ge=0, alias="retention_nightly_days", description="days a nightly build is kept"
    )
    on_demand_days: int = Field(
        default=7, ge=0, alias="retention_on_demand_days", description="days an on-demand build is kept"
    )
    personal_days: int = Field(
        default=7, ge=0, alias="retention_personal_days", description="days a personal build is kept"
    )
    keep_newest: int = Field(
        default=3,
        ge=0,
        alias="retention_keep_newest",
        description="the newest K builds of every branch are kept whatever their age",
    )
    grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        alias="retention_grace_seconds",
        description="a content object younger than this is never collected (an upload may be in flight)",
    )
    upload_hours: float = Field(
        default=24.0,
        gt=0,
        alias="retention_upload_hours",
        description="hours an uploaded source tarball or image context that no build names is kept "
        "(a day: time to submit the build it was sent for, even after a failed first try)",
    )


class BackupSettings(Group):
    """Where and when backups go."""

    schedule: str = Field(
        default="", alias="backup_schedule", description="cron of the backup run (empty: no scheduled backup)"
    )
    target: str | None = Field(
        default=None,
        alias="backup_target",
        description="where backups go: a directory path, or s3://<bucket>[/<prefix>]",
    )
    s3_endpoint: str | None = Field(
        default=None,
        alias="backup_s3_endpoint",
        description="S3 endpoint of an s3:// backup target (default: s3_endpoint)",
    )
    s3_access_key: SecretStr | None = Field(
        default=None, alias="backup_s3_access_key", description="backup target's S3 access key"
    )
    s3_secret_key: SecretStr | None = Field(
        default=None, alias="backup_s3_secret_key", description="backup target's S3 secret key"
    )
    s3_access_key_file: Path | None = Field(
        default=None, alias="backup_s3_access_key_file", description="file holding it (0600)"
    )
    s3_secret_key_file: Path | None = Field(
        default=None, alias="backup_s3_secret_key_file", description="file holding it (0600)"
    )


class MirrorSettings(Group):
    """3rd-party mirrors (issue 4): Pulp deb remotes + repositories synced on demand, kept forever."""

    repositories: list[MirrorConfig] = Field(
        default_factory=list,
        alias="mirrors",
        description="3rd-party Debian repositories usable as build-dependency sources (JSON list in env)",
    )
    retain_versions: int = Field(
        default=2,
        ge=2,
        le=100,
        alias="mirror_retain_versions",
        description="repository versions Pulp keeps of each mirror (the served one included); older "
        "ones and their publications are deleted at the next sync that changes something. Default 2: "
        "the served version and the one before it. At least 2: a sync makes its new version while "
        "the previous one is still served",
    )


# -- Observability and notifications (issue 17) --------------------------------------------------


class MetricsSettings(Group):
    """Prometheus metrics of each Celery worker (the API serves the farm-wide ones at /metrics)."""

    worker_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        alias="worker_metrics_port",
        description="port of each Celery worker's /metrics (the chart: 9808); 0: any free port, "
        "written to <state dir>/run/<node>.metrics-port (the local farm); unset: none",
    )
    worker_host: str = Field(
        default="127.0.0.1",
        alias="worker_metrics_host",
        description="address a worker's /metrics binds (the chart: 0.0.0.0, for the scraper)",
    )


NotifyEvent = Literal["finished", "failed", "fixed"]


class NotifyConfig(BaseModel):
    """Who hears about finished builds, and how (issue 17): a webhook, e-mail, or both.

    ``project`` alone: every build of that project except personal ones; ``user``: the builds
    that user submitted (their personal builds included), in ``project`` only if it is given.
    Events: ``failed``; ``fixed``, the first success after a failure of the same project, branch
    and kind; ``finished``, every outcome.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="simple name, unique among notifications; deliveries record it")
    project: str | None = None
    user: str | None = None
    events: list[NotifyEvent] = Field(default_factory=lambda: list[NotifyEvent](["failed", "fixed"]))
    webhook: str | None = Field(default=None, description="http(s) URL that receives a signed JSON POST")
    secret_file: Path | None = Field(
        default=None,
        description="file (0600) holding the HMAC-SHA256 key of the webhook's X-Buildfarm-Signature-256 "
        "header; unset: the webhook is sent unsigned",
    )
    email: list[str] = Field(default_factory=list, description="recipients of a plain-text mail (SMTP)")

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        try:
            return None if value is None else check_url_syntax(value)
        except PermanentError as exc:
            raise ValueError(str(exc)) from exc


class NotifySettings(Group):
    """Notifications: sent by the scheduler after builds end, never in a build's path."""

    targets: list[NotifyConfig] = Field(
        default_factory=list,
        alias="notifications",
        description="webhook and e-mail targets of finished builds (JSON in env)",
    )
    smtp_host: str | None = Field(
        default=None, alias="notify_smtp_host", description="SMTP server of e-mail notifications"
    )
    smtp_port: int = Field(
        default=25, ge=1, le=65535, alias="notify_smtp_port", description="its port (587 with STARTTLS)"
    )
    smtp_starttls: bool = Field(
        default=False, alias="notify_smtp_starttls", description="upgrade the SMTP connection with STARTTLS"
    )
    smtp_username: str | None = Field(
        default=None, alias="notify_smtp_username", description="SMTP login; unset: none"
    )
    smtp_password_file: Path | None = Field(
        default=None, alias="notify_smtp_password_file", description="file (0600) holding its password"
    )
    sender: str = Field(
        default="buildfarm@localhost", alias="notify_from", description="From: of notification mails"
    )
    dashboard_url: str | None = Field(
        default=None,
        alias="notify_dashboard_url",
        description="base URL of the web dashboard, for links in notifications; unset: api_url",
    )
    tick_seconds: float = Field(
        default=5.0,
        gt=0,
        alias="notify_tick_seconds",
        description="how often the scheduler looks for finished builds and due retries",
    )
    lookback_seconds: float = Field(
        default=3600.0,
        gt=0,
        alias="notify_lookback_seconds",
        description="builds finished this long ago or less are notified; a scheduler down for longer "
        "skips the older ones instead of flooding (1 hour)",
    )
    timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        alias="notify_timeout_seconds",
        description="bound on one webhook request or SMTP session",
    )
    retry_seconds: float = Field(
        default=30.0,
        gt=0,
        alias="notify_retry_seconds",
        description="pause before the second delivery attempt, doubled before each next",
    )
    attempts: int = Field(
        default=8,
        ge=1,
        alias="notify_attempts",
        description="delivery attempts before giving up (8: ~2 hours with the default pause)",
    )
