"""One settings object for every process of a farm: CLI, workers, scheduler, repository server.

Values come from, in order of precedence: keyword arguments, ``<state dir>/farm.json``
(written by ``buildfarm start`` with what it actually started: the private Redis's URL, the
repository server's port, the runner), then ``BUILDFARM_*`` environment variables, which
configure the next start.  Anything not set falls back
to the documented default.  A bad value stops the process at start with one clear line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from buildfarm.model.errors import PermanentError
from buildfarm.model.names import check_git_ref
from buildfarm.model.urlpolicy import UrlPolicy, check_url_syntax

MAX_PRIORITY = 9
"""Priorities are the broker's (Redis, through kombu): 0 is taken first, 9 last."""
DEFAULT_BUILD_PRIORITIES = {"release": 0, "on-demand": 3, "nightly": 6, "personal": 9}
"""Release before on-demand before nightly before personal (issue 16: a release build is not kept
waiting behind a nightly mass rebuild)."""

FARM_FILE = "farm.json"
DEFAULT_SIGNING_KEYRING = "/etc/apt/keyrings/buildfarm.asc"
DEFAULT_ENV_PACKAGES = ("build-essential", "debhelper", "fakeroot", "eatmydata")
"""Preinstalled in build environments (issue 15): what nearly every package's Build-Depends names."""
"""Where apt users keep the farm's public key: Debian's place for keys of local repositories."""


def default_state_dir() -> Path:
    return Path(os.environ.get("BUILDFARM_STATE_DIR", ".farm")).resolve()


class _FarmFileSource(PydanticBaseSettingsSource):
    """Reads ``<state dir>/farm.json`` if it exists."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path.is_file():
            try:
                self._data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise PermanentError(f"{path}: unreadable farm file: {exc}") from exc

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUILDFARM_", extra="ignore")

    state_dir: Path = Field(
        default_factory=default_state_dir, description="where the local farm keeps everything"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the state dir (local profile)"
    )
    redis_url: str | None = Field(
        default=None, description="Celery broker; unset: `buildfarm start` runs a private redis-server"
    )
    runner: Literal["sbuild", "host", "kubernetes"] = Field(
        default="sbuild",
        description="sbuild: clean unshare chroot per step; host: dpkg-buildpackage here; "
        "kubernetes: one transient builder pod per step",
    )
    distribution: str = Field(default="bookworm", description="Debian suite of the build environment")
    mirror: str = Field(
        default="http://deb.debian.org/debian", description="Debian mirror for the base tarball"
    )
    base_tarball: Path | None = Field(
        default=None, description="sbuild base tarball; default: <cache dir>/<distribution>-base.tar"
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "buildfarm",
        description="shared across farms and test runs: the base tarball lives here (~445 MB, ~20 s to make)",
    )
    sbuild_tmpdir: Path | None = Field(
        default_factory=lambda: Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None,
        description="where sbuild unpacks the chroot; tmpfs makes a tiny build ~15 s instead of ~27 s, "
        "at ~0.6 GB RAM per running build; unset: the system's temporary directory (/tmp)",
    )
    repo_host: str = Field(default="127.0.0.1", description="address the repository server binds")
    repo_port: int = Field(default=8780, ge=0, le=65535, description="repository server port (0: any free)")
    lease_seconds: float = Field(
        default=30.0, gt=0, description="a running step's lease; a node silent this long is taken as dead"
    )
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="lease renewal period, well under lease")
    step_timeout_seconds: float = Field(default=3600.0, gt=0, description="longest one build step may run")
    reaper_seconds: float = Field(default=5.0, gt=0, description="how often expired leases are reclaimed")
    build_priorities: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_BUILD_PRIORITIES),
        description="dispatch priority of each build kind's steps, 0 (first) to 9 (last): a ready step of "
        "a release build is taken before any queued nightly step; JSON, e.g. "
        '{"release": 0, "on-demand": 3, "nightly": 6, "personal": 9} (the default); kinds left out keep '
        "their default",
    )
    redispatch_seconds: float = Field(
        default=30.0, gt=0, description="a step ready this long without a taker is sent to the queue again"
    )
    api_host: str = Field(default="127.0.0.1", description="address the REST API binds")
    api_port: int = Field(default=8781, ge=0, le=65535, description="REST API port (0: any free)")
    api_max_upload_bytes: int = Field(
        default=256 << 20, gt=0, description="largest source tarball accepted (bytes); 256 MiB by default"
    )
    api_max_unpacked_bytes: int = Field(
        default=4 << 30, gt=0, description="largest size an uploaded source tree may unpack to (bytes)"
    )
    api_max_unpacked_files: int = Field(
        default=100_000,
        gt=0,
        description=(
            "most files, directories and symlinks an uploaded source tree may hold. 100 000 by "
            "default: the biggest Debian source trees people build on a desk are around 80 000 "
            "(the Linux kernel), while unpacking costs API CPU and inodes per member (a 2 MB "
            "gzip of 300 000 empty files took minutes); raise it for trees like Chromium's"
        ),
    )
    api_max_unpack_seconds: float = Field(
        default=120.0,
        gt=0,
        description=(
            "longest the API spends checking and unpacking one uploaded tree (seconds); a Linux "
            "kernel tree takes well under a minute, so only a hostile tarball reaches it"
        ),
    )
    api_rate_per_minute: int = Field(
        default=600,
        gt=0,
        description="requests one token may make per minute (counted in Redis, all replicas)",
    )
    api_anonymous_rate_per_minute: int = Field(
        default=120,
        gt=0,
        description=(
            "requests per minute from one client address without a valid token (missing, wrong "
            "or expired; health checks excepted), counted in Redis across replicas. Behind a "
            "proxy every client has the proxy's address: raise it there"
        ),
    )
    api_max_running_builds: int = Field(
        default=10, gt=0, description="builds one user may have running at once (personal builds included)"
    )
    api_follow_seconds: float = Field(default=3600.0, gt=0, description="longest one `logs --follow` stream")
    projects: list[str] = Field(default_factory=list, description="projects declared in configuration")
    # -- What the farm fetches on a user's behalf (model/urlpolicy.py): git sources, image
    # contexts, schedules' git, upstream tarballs.  Secure by default in every profile.
    fetch_allow_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https"],
        description="URL schemes sources may be fetched with, among https, http, git and ssh "
        "(comma-separated in env); default https only: encrypted, and needs no keys on the farm",
    )
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts (git.corp.example, or .corp.example for every name below it), addresses "
        "or networks (127.0.0.1, ::1, 10.0.0.0/8) sources may be fetched from although not public "
        "(comma-separated in env); default none: loopback, private, link-local and other "
        "non-public addresses are refused, so a manifest cannot reach the farm's own services",
    )
    artifacts: Literal["fs", "s3"] = Field(
        default="fs", description="artifact store: fs (a directory in the state dir) or s3 (any S3 endpoint)"
    )
    s3_endpoint: str | None = Field(default=None, description="S3 host:port (MinIO in the chart)")
    s3_secure: bool = Field(default=True, description="https to the S3 endpoint")
    s3_region: str | None = Field(default=None, description="S3 region (saves a lookup request)")
    s3_bucket: str = Field(default="buildfarm", description="bucket for artifacts and logs")
    s3_access_key: SecretStr | None = Field(default=None, description="S3 access key (from a Secret)")
    s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret key (from a Secret)")
    s3_access_key_file: Path | None = Field(default=None, description="file holding the access key (0600)")
    s3_secret_key_file: Path | None = Field(default=None, description="file holding the secret key (0600)")
    repository: Literal["local", "pulp"] = Field(
        default="local",
        description="package repository: local (apt-ftparchive) or pulp (pulpcore + pulp_deb)",
    )
    pulp_url: str | None = Field(default=None, description="Pulp API base URL, e.g. http://pulp-api:24817")
    pulp_username: str = Field(default="admin", description="Pulp user")
    pulp_password: SecretStr | None = Field(default=None, description="Pulp password (from a Secret)")
    pulp_password_file: Path | None = Field(default=None, description="file holding the Pulp password (0600)")
    pulp_content_origin: str | None = Field(
        default=None, description="where apt clients reach Pulp's content app, e.g. http://pulp-content:24816"
    )
    pulp_task_timeout_seconds: float = Field(default=600.0, gt=0, description="longest wait on one Pulp task")
    pulp_orphan_protection_minutes: int | None = Field(
        default=None,
        ge=0,
        description="minutes an orphaned Pulp artifact is protected from the retention sweep's cleanup "
        "(unset: Pulp's own ORPHAN_PROTECTION_TIME, a day by default)",
    )
    pulp_http_timeout_seconds: float = Field(
        default=30.0, gt=0, description="longest wait on one Pulp API request (a hung Pulp fails this fast)"
    )
    repository_retry_min_seconds: float = Field(
        default=5.0,
        gt=0,
        description="first pause before staging/publishing again after Pulp or S3 failed (about one "
        "reaper period: a short outage costs seconds)",
    )
    repository_retry_max_seconds: float = Field(
        default=60.0,
        gt=0,
        description="longest pause between publish attempts (half the outage so far, capped here)",
    )
    repository_give_up_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="a build not staged/published this long after its last step fails, naming the "
        "service; `build retry` publishes it later",
    )
    node_concurrency: int = Field(default=1, ge=1, le=64, description="steps one node builds at once")
    # -- Signed repositories: apt users need no [trusted=yes].
    signing_key_file: Path | None = Field(
        default=None,
        description="armored OpenPGP secret key (no passphrase, mode 0600) the local repository signs "
        "Release files with; unset: `buildfarm start` makes one under <state dir>/signing (local "
        "profile), otherwise publications are unsigned and apt lines say [trusted=yes]",
    )
    signing_keyring: str = Field(
        default=DEFAULT_SIGNING_KEYRING,
        description="where apt users keep the farm's public key (`buildfarm repo key`): the signed-by "
        "of every signed apt line; Debian's place for keys of local repositories",
    )
    pulp_signing_service: str | None = Field(
        default=None,
        description="name of the Pulp AptReleaseSigningService every build publication is signed with "
        "(ops/pulp/pulpstack.py registers 'buildfarm'); unset: Pulp publications are unsigned",
    )
    # -- Data lifecycle (issue 7): schedules, retention, backups.
    schedules: list[ScheduleConfig] = Field(
        default_factory=list, description="scheduled (nightly) builds, run by the one scheduler (JSON in env)"
    )
    nightly_schedule: str = Field(
        default="", description="default cron of schedules that give none (empty: schedules must give one)"
    )
    schedule_start_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="a scheduled slot claimed this long ago with neither build nor error was left by a "
        "scheduler that died while starting it, and is started again (10 minutes: above a normal start, "
        "a git fetch and packing the sources; shorter is safe, a run never gets two builds, but wasteful)",
    )
    schedule_start_attempts: int = Field(
        default=5,
        ge=1,
        description="attempts to start one slot that fails for a temporary reason (git or a service "
        "down); 1: never retried.  A permanent error (bad manifest, no permission) is never retried",
    )
    schedule_retry_seconds: float = Field(
        default=60.0,
        gt=0,
        description="pause before the second attempt, doubled before each next one (1, 2, 4, 8 min by "
        "default: a blip costs a minute, a long outage few attempts); never past the next slot",
    )
    retention_schedule: str = Field(default="30 3 * * *", description="cron of the daily retention sweep")
    backup_schedule: str = Field(
        default="", description="cron of the backup run (empty: no scheduled backup)"
    )
    retention_nightly_days: int = Field(default=14, ge=0, description="days a nightly build is kept")
    retention_on_demand_days: int = Field(default=7, ge=0, description="days an on-demand build is kept")
    retention_personal_days: int = Field(default=7, ge=0, description="days a personal build is kept")
    retention_keep_newest: int = Field(
        default=3, ge=0, description="the newest K builds of every branch are kept whatever their age"
    )
    retention_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="a content object younger than this is never collected (an upload may be in flight)",
    )
    retention_upload_hours: float = Field(
        default=24.0,
        gt=0,
        description="hours an uploaded source tarball or image context that no build names is kept "
        "(a day: time to submit the build it was sent for, even after a failed first try)",
    )
    backup_target: str | None = Field(
        default=None, description="where backups go: a directory path, or s3://<bucket>[/<prefix>]"
    )
    backup_s3_endpoint: str | None = Field(
        default=None, description="S3 endpoint of an s3:// backup target (default: s3_endpoint)"
    )
    backup_s3_access_key: SecretStr | None = Field(default=None, description="backup target's S3 access key")
    backup_s3_secret_key: SecretStr | None = Field(default=None, description="backup target's S3 secret key")
    backup_s3_access_key_file: Path | None = Field(default=None, description="file holding it (0600)")
    backup_s3_secret_key_file: Path | None = Field(default=None, description="file holding it (0600)")
    # -- 3rd-party mirrors (issue 4): Pulp deb remotes + repositories synced on demand, kept forever.
    mirrors: list[MirrorConfig] = Field(
        default_factory=list,
        description="3rd-party Debian repositories usable as build-dependency sources (JSON list in env)",
    )
    mirror_retain_versions: int = Field(
        default=2,
        ge=2,
        le=100,
        description="repository versions Pulp keeps of each mirror (the served one included); older "
        "ones and their publications are deleted at the next sync that changes something. Default 2: "
        "the served version and the one before it. At least 2: a sync makes its new version while "
        "the previous one is still served",
    )
    # -- Builder pods on Kubernetes (runner: kubernetes) and image steps.
    node: str | None = Field(
        default=None, description="this worker's node (the chart sets spec.nodeName on a DaemonSet)"
    )
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig for out-of-cluster use; unset: in-cluster configuration"
    )
    builder_namespace: str = Field(default="buildfarm-builders", description="namespace of builder pods")
    builder_service_account: str | None = Field(
        default=None, description="service account of builder pods (no token is mounted)"
    )
    builder_image: str = Field(
        default="buildfarm/package-builder:latest", description="package-builder image (builder pods)"
    )
    image_builder_image: str = Field(
        default="ghcr.io/osscontainertools/kaniko:v1.28.2",
        description="kaniko-compatible image of image steps (the maintained fork of archived kaniko)",
    )
    builder_pin_to_node: bool = Field(
        default=False,
        description="pin builder pods to the worker's node (true when workers run as a DaemonSet and "
        "`node` is spec.nodeName; a Deployment's `node` is a pod name, not a node)",
    )
    builder_sysbox_image: str = Field(
        default="docker.io/library/docker:27-dind",
        description="image of sysbox steps: runs dockerd and `docker build` inside the sysbox runtime",
    )
    builder_runtime_class: str = Field(
        default="", description="runtimeClassName of sysbox steps (empty: sysbox steps are refused)"
    )
    builder_ttl_seconds: int = Field(
        default=3600, ge=0, description="ttlSecondsAfterFinished of builder Jobs"
    )
    builder_deadline_seconds: int = Field(
        default=7200, gt=0, description="activeDeadlineSeconds of builder Jobs"
    )
    builder_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        description="default resource requests/limits of builder pods (a manifest may override); "
        "quantities as Kubernetes writes them: strings, or numbers (cpu: 2, as YAML gives it)",
    )

    builder_max_outputs_bytes: int = Field(
        default=16 << 30,
        gt=0,
        description="largest outputs archive a worker downloads from one builder pod (bytes; 16 GiB): "
        "the pod is untrusted, the worker's disk is not endless (the chart sizes the work volume from it)",
    )
    builder_registry_secret: str = Field(
        default="buildfarm-registry-push",
        description="push-scoped registry Secret in the builder namespace (all image pods may use)",
    )
    registry_url: str | None = Field(
        default=None, description="the farm's container registry, e.g. http://registry:5000"
    )
    registry_username: str | None = Field(
        default=None,
        description="account the farm reads and deletes manifests with, when the registry requires one "
        "(the chart's does: htpasswd); unset: anonymous (the local profile's registry)",
    )
    registry_password: SecretStr | None = Field(default=None, description="its password (from a Secret)")
    registry_password_file: Path | None = Field(default=None, description="file holding it (0600)")

    # -- Build environments (issue 15, buildfarm.environments): cached, content-addressed
    # toolchain tarballs and the farm's package cache.
    env_packages: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ENV_PACKAGES),
        description="packages preinstalled in every build environment besides the buildd variant "
        "(comma-separated in env); default: the Debian build toolchain nearly every package needs, "
        "so a step installs only what is particular to it. Changing it makes a new environment",
    )
    apt_proxy: str | None = Field(
        default=None,
        description="HTTP proxy (a package cache, e.g. http://127.0.0.1:3142) through which environments "
        "are made and every step's apt fetches packages; `buildfarm start` sets it to the apt-cacher-ng "
        "it runs (local profile); unset: straight to the mirrors",
    )
    apt_cache: bool = Field(
        default=True,
        description="whether `buildfarm start` runs apt-cacher-ng as the farm's package cache (when "
        "installed and apt_proxy is unset): N steps and nodes fetch each .deb from outside once",
    )

    @field_validator("fetch_allow_schemes", "fetch_allow_hosts", "env_packages", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment: "https,git" (or a JSON list)
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def url_policy(self) -> UrlPolicy:
        """What sources may be fetched from (checked at start by :meth:`check`)."""
        return UrlPolicy.parse(self.fetch_allow_schemes, self.fetch_allow_hosts)

    @field_validator("build_priorities")
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

    @field_validator("builder_resources", mode="before")
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # An explicit state_dir wins over BUILDFARM_STATE_DIR, as every other keyword does (make
        # exports BUILDFARM_STATE_DIR=.farm: `make bench` read the demo farm's file instead of its own).
        state_dir = Path(
            init_settings().get("state_dir") or os.environ.get("BUILDFARM_STATE_DIR") or default_state_dir()
        )
        # The farm file records what `buildfarm start` actually started (ports, runner): while it
        # exists it wins over the environment, which only configures the next start.
        return init_settings, _FarmFileSource(settings_cls, Path(state_dir) / FARM_FILE), env_settings

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'buildfarm.db'}"

    @property
    def effective_base_tarball(self) -> Path:
        return self.base_tarball or self.cache_dir / f"{self.distribution}-base.tar"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def repo_url(self) -> str:
        return f"http://{self.repo_host}:{self.repo_port}"

    def secret(self, value: SecretStr | None, path: Path | None, name: str) -> str:
        """A credential from the environment or from a file only its owner can read."""
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

    def registry_auth(self) -> tuple[str, str] | None:
        """Basic-auth credentials of the farm's registry, or None for anonymous access."""
        if self.registry_username is None:
            return None
        return self.registry_username, self.secret(
            self.registry_password, self.registry_password_file, "registry_password"
        )

    def check(self) -> None:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise PermanentError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be at most half of lease_seconds "
                f"({self.lease_seconds}), or a slow heartbeat loses a live lease"
            )
        self._check_signing()
        self.url_policy  # noqa: B018 - a bad fetch_allow_* entry stops the process at start

    def _check_signing(self) -> None:
        keyring = self.signing_keyring
        if not keyring.startswith("/") or any(c.isspace() or c in "[]" for c in keyring):
            raise PermanentError(
                f"setting signing_keyring: {keyring!r} must be absolute, without spaces or brackets "
                "(it goes into apt lines as [signed-by=PATH])"
            )
        key = self.signing_key_file
        if key is None:
            return
        try:
            mode = key.stat().st_mode
        except OSError as exc:
            raise PermanentError(f"setting signing_key_file: cannot read {key}: {exc.strerror}") from exc
        if mode & 0o077:
            raise PermanentError(f"setting signing_key_file: {key} is readable by others: chmod 600 it")


def load_settings(**overrides: Any) -> Settings:
    """Settings from overrides, environment and farm file; one clear line on a bad value."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise PermanentError(f"setting {field}: {err['msg']} (got {err.get('input')!r})") from exc
    settings.check()
    return settings
