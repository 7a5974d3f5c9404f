"""One settings object for every process of a farm: CLI, workers, scheduler, repository server.

Values come from, in order of precedence: keyword arguments, ``<state dir>/farm.json``
(written by ``buildfarm start`` with what it actually started: the private Redis's URL, the
repository server's port, the runner), then ``BUILDFARM_*`` environment variables, which
configure the next start.  Anything not set falls back
to the documented default.  A bad value stops the process at start with one clear line, and so
does a ``BUILDFARM_*`` variable that is no setting (a typo would otherwise be lost): the ones
that deliberately are not settings are listed in ``NON_SETTING_VARIABLES``.

People write the flat names (``BUILDFARM_DATABASE_URL``, ``database_url``); code reads the
groups (``settings.database.url``, :mod:`buildfarm.model.settinggroups`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from buildfarm.model.errors import PermanentError
from buildfarm.model.settinggroups import (
    DEFAULT_BUILD_PRIORITIES,
    DEFAULT_ENV_PACKAGES,
    DEFAULT_SIGNING_KEYRING,
    MAX_PRIORITY,
    ApiSettings,
    BackupSettings,
    BrokerSettings,
    BuildEnvSettings,
    BuildersSettings,
    DatabaseSettings,
    FetchSettings,
    MetricsSettings,
    MirrorConfig,
    MirrorSettings,
    NotifyConfig,
    NotifyEvent,
    NotifySettings,
    PulpSettings,
    RegistrySettings,
    RepositorySettings,
    RetentionSettings,
    ScheduleConfig,
    ScheduleSettings,
    SigningSettings,
    StepSettings,
    StorageSettings,
    read_secret,
)
from buildfarm.model.statedir import default_state_dir

__all__ = [
    "DEFAULT_BUILD_PRIORITIES",
    "DEFAULT_ENV_PACKAGES",
    "DEFAULT_SIGNING_KEYRING",
    "FARM_FILE",
    "MAX_PRIORITY",
    "NON_SETTING_VARIABLES",
    "MetricsSettings",
    "MirrorConfig",
    "NotifyConfig",
    "NotifyEvent",
    "NotifySettings",
    "ScheduleConfig",
    "Settings",
    "check_environment",
    "load_settings",
    "read_secret",
    "setting_variables",
    "settings_at_start",
]

FARM_FILE = "farm.json"
ENV_PREFIX = "BUILDFARM_"
SERVICE_LINK = re.compile(r"_SERVICE_(HOST|PORT)(_\w+)?$|_PORT_\d+_(TCP|UDP|SCTP)(_\w+)?$")
"""What Kubernetes names the variables of a Service in every pod of its namespace (service links)."""


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
        return {k: v for k, v in self._data.items() if k in FLAT_NAMES}


NON_SETTING_VARIABLES: dict[str, str] = {
    # The one place naming the BUILDFARM_* variables that are deliberately not settings: every
    # other BUILDFARM_* in a farm process's environment stops it at start (a typo would be lost).
    "BUILDFARM_URL": "the CLI's farm API URL (buildfarm_cli/config.py), read by the client only",
    "BUILDFARM_TOKEN": "the CLI's API token (buildfarm_cli/config.py), read by the client only",
    "BUILDFARM_ADMIN_USER": "the chart's bootstrap Job: the first admin's name (files/bootstrap.py)",
    "BUILDFARM_SIGNING_GNUPGHOME": "the Pulp image's signing scripts: their GnuPG home",
    "BUILDFARM_SIGNING_SERVICE": "the Pulp image's add-signing-service.sh: the service it registers",
    "BUILDFARM_PULP_DEMO_DIR": "ops/demo/pulp-profile.sh: state directory of the Pulp demo farm",
    "BUILDFARM_BENCH_POSTGRES": "ops/bench/retention.py: the PostgreSQL server it times against",
    "BUILDFARM_APT_SOURCE": "a build arg of image steps (runners/buildah.py), never the farm's environment",
    "BUILDFARM_IMAGE_PREFIX": "a build arg of image steps (runners/buildah.py), never the farm's environment",
    "BUILDFARM_REGISTRY": "a build arg of image steps (runners/buildah.py), never the farm's environment",
}
"""``BUILDFARM_*`` variables that are not settings, each with who reads it."""


class Settings(BaseSettings):
    """Every setting of the farm, in groups (:mod:`buildfarm.model.settinggroups`).

    Filled by flat names everywhere a person writes them: ``BUILDFARM_DATABASE_URL`` in the
    environment, ``database_url`` in the farm file or as a keyword; read as
    ``settings.database.url``.  A backend or runner is given its group only.
    """

    model_config = SettingsConfigDict(extra="forbid")

    state_dir: Path = Field(
        default_factory=default_state_dir, description="where the local farm keeps everything"
    )
    projects: list[str] = Field(default_factory=list, description="projects declared in configuration")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    buildenv: BuildEnvSettings = Field(default_factory=BuildEnvSettings)
    steps: StepSettings = Field(default_factory=StepSettings)
    builders: BuildersSettings = Field(default_factory=BuildersSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    repository: RepositorySettings = Field(default_factory=RepositorySettings)
    pulp: PulpSettings = Field(default_factory=PulpSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    schedules: ScheduleSettings = Field(default_factory=ScheduleSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    mirrors: MirrorSettings = Field(default_factory=MirrorSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)

    @model_validator(mode="before")
    @classmethod
    def _grouped(cls, data: Any) -> Any:
        """Flat names (``database_url``) into their group (``database.url``); whole groups as given."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        flat: list[tuple[str, Any]] = []
        for key, value in data.items():
            if key in GROUPS and isinstance(value, dict | BaseModel):
                out[key] = dict(value)
            else:
                flat.append((key, value))
        for key, value in flat:
            group, attribute = FLAT_NAMES.get(key, (None, key))
            if group is None:
                out[key] = value  # top level, or unknown: refused by extra="forbid"
            else:
                out.setdefault(group, {})[attribute] = value
        return out

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
        return (
            init_settings,
            _FarmFileSource(settings_cls, Path(state_dir) / FARM_FILE),
            _FlatEnvSource(settings_cls),
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed by flat name (``registry_url=...``), checked again."""
        return type(self).model_validate({**dict(self), **changes})

    @property
    def effective_database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.state_dir / 'buildfarm.db'}"

    def check(self) -> None:
        steps = self.steps
        if steps.heartbeat_seconds * 2 > steps.lease_seconds:
            raise PermanentError(
                f"heartbeat_seconds ({steps.heartbeat_seconds}) must be at most half of lease_seconds "
                f"({steps.lease_seconds}), or a slow heartbeat loses a live lease"
            )
        self._check_signing()
        self.fetch.url_policy  # noqa: B018 - a bad fetch_allow_* entry stops the process at start

    def _check_signing(self) -> None:
        keyring = self.signing.keyring
        if not keyring.startswith("/") or any(c.isspace() or c in "[]" for c in keyring):
            raise PermanentError(
                f"setting signing_keyring: {keyring!r} must be absolute, without spaces or brackets "
                "(it goes into apt lines as [signed-by=PATH])"
            )
        key = self.signing.key_file
        if key is None:
            return
        try:
            mode = key.stat().st_mode
        except OSError as exc:
            raise PermanentError(f"setting signing_key_file: cannot read {key}: {exc.strerror}") from exc
        if mode & 0o077:
            raise PermanentError(f"setting signing_key_file: {key} is readable by others: chmod 600 it")


GROUPS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}
"""The groups of :class:`Settings` by attribute name."""


def _flat_names() -> dict[str, tuple[str | None, str]]:
    names: dict[str, tuple[str | None, str]] = {}
    for name in Settings.model_fields:
        if name not in GROUPS:
            names[name] = (None, name)
    for group, model in GROUPS.items():
        for attribute, field in model.model_fields.items():
            names[field.alias or attribute] = (group, attribute)
    return names


FLAT_NAMES: dict[str, tuple[str | None, str]] = _flat_names()
"""Every setting's flat name (``database_url``, i.e. ``BUILDFARM_DATABASE_URL``) -> (group, attribute);
group None: a field of :class:`Settings` itself."""

FLAT_OF: dict[tuple[str | None, str], str] = {where: flat for flat, where in FLAT_NAMES.items()}


def setting_variables() -> list[str]:
    """The environment variable of every setting, sorted."""
    return sorted(f"{ENV_PREFIX}{name.upper()}" for name in FLAT_NAMES)


def _field(flat: str) -> FieldInfo:
    group, attribute = FLAT_NAMES[flat]
    model: type[BaseModel] = Settings if group is None else GROUPS[group]
    return model.model_fields[attribute]


def _decode(flat: str, raw: str) -> Any:
    """A value from the environment: lists and maps are JSON (but see ``NoDecode`` fields)."""
    field = _field(flat)
    if any(isinstance(m, NoDecode) or m is NoDecode for m in field.metadata):
        return raw
    if typing.get_origin(field.annotation) not in (list, dict):
        return raw
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise PermanentError(f"setting {flat}: {ENV_PREFIX}{flat.upper()} is not valid JSON: {exc}") from exc


class _FlatEnvSource(PydanticBaseSettingsSource):
    """``BUILDFARM_<FLAT NAME>`` variables (any case, as pydantic-settings reads them)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {key.upper(): value for key, value in os.environ.items()}
        return {
            flat: _decode(flat, environ[f"{ENV_PREFIX}{flat.upper()}"])
            for flat in FLAT_NAMES
            if f"{ENV_PREFIX}{flat.upper()}" in environ
        }


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a ``BUILDFARM_*`` variable that is no setting: one line naming the nearest valid one."""
    known = set(setting_variables()) | set(NON_SETTING_VARIABLES)
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            # compared without the prefix all names share, or every guess looks close
            suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)
            nearest = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), suffixes, n=1)
            hint = f"; did you mean {ENV_PREFIX}{nearest[0]}?" if nearest else ""
            if SERVICE_LINK.search(name.upper()):
                hint = " (a Kubernetes service link of a buildfarm-* Service: set enableServiceLinks: false)"
            raise PermanentError(f"unknown setting {name} in the environment{hint}")


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """``("database", "url")`` -> ``database_url``; deeper places follow (``mirrors.0.url``)."""
    if len(loc) >= 2 and loc[0] in GROUPS:
        flat = FLAT_OF.get((str(loc[0]), str(loc[1])), f"{loc[0]}.{loc[1]}")
        return ".".join([flat, *(str(p) for p in loc[2:])])
    return ".".join(str(p) for p in loc)


def load_settings(**overrides: Any) -> Settings:
    """Settings of a starting process from overrides, farm file and environment; one clear line
    on a bad value or an unknown ``BUILDFARM_*`` variable."""
    check_environment(os.environ)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PermanentError(
            f"setting {_setting_name(err['loc'])}: {err['msg']} (got {err.get('input')!r})"
        ) from exc
    settings.check()
    return settings


def settings_at_start(**overrides: Any) -> Settings:
    """:func:`load_settings` for a process's entry point (API, worker, scheduler, hook Jobs): a
    bad or unknown setting ends the process with one line on stderr and status 1, no traceback."""
    try:
        return load_settings(**overrides)
    except PermanentError as exc:
        raise SystemExit(f"buildfarm: {exc}") from None
