"""The REST API's wire models: every request body and every JSON answer of ``/api/v1``.

The server declares each route with these (``response_model=``), so the OpenAPI schema is made
from them, and :class:`buildfarm_client.Client` parses every answer into them: one definition
of the wire format for both ends.  Only pydantic is imported here, so a client can be installed
without anything the farm itself runs on.

Closed sets are ``Literal`` strings: the server's enums (roles, build kinds and states) must
spell the same values, which ``tests/unit/test_wire_models.py`` checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from buildfarm_client.limits import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS

SHA256_HEX_LENGTH = 64
SHA256_PATTERN = f"^[0-9a-f]{{{SHA256_HEX_LENGTH}}}$"
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
"""Free-text names (token labels) may hold anything but control characters (PostgreSQL refuses NUL)."""

RoleName = Literal["viewer", "builder", "maintainer"]


class _Request(BaseModel):
    """A request body: an unknown field is refused (422), not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    """An answer: a newer server may add fields, an older client ignores them.

    Its validator and serializer are built on first use (``defer_build``): a CLI command parses
    one or two of the answers, and building all of them at import was 0.02 s of CPU of every
    command.  The requests are built at once: FastAPI wraps a request body's model in its own
    annotation, whose deferred build warns (the schemas and errors are the same either way)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)


# -- farm ------------------------------------------------------------------------------------


class HealthOut(_Answer):
    status: str


class WhoAmI(_Answer):
    user: str
    admin: bool
    roles: dict[str, str]


class ProjectOut(_Answer):
    name: str
    role: str


class NodeOut(_Answer):
    online: bool
    active_tasks: int
    stopped: bool | None = None  # the local farm: held on purpose (`buildfarm node start` resumes it)
    labels: list[str] = Field(default_factory=list, description="what the node advertises: arch=...")


class RunningStepOut(_Answer):
    build: int
    step: str
    node: str | None
    attempt: int
    started_at: str | None


class StatusOut(_Answer):
    """The farm's nodes, queues and running steps; the local farm (the CLI's in-process API)
    says as well where it lives and which of its processes run.  ``/status`` leaves out the
    fields it did not set."""

    nodes: dict[str, NodeOut]
    queues: dict[str, int]
    running_steps: list[RunningStepOut]
    running: bool | None = None  # the local farm's core processes run
    state_dir: str | None = None
    redis_url: str | None = None  # its password shown as ***
    repo_url: str | None = None
    runner: str | None = None
    api_url: str | None = None
    registry_url: str | None = None
    apt_proxy: str | None = None
    processes: dict[str, bool] | None = None
    started: list[str] | None = None
    warnings: list[str] | None = None


# -- sources and builds ----------------------------------------------------------------------


class MissingIn(_Request):
    sha256: Annotated[list[Annotated[str, Field(pattern=SHA256_PATTERN)]], Field(max_length=1000)]


class MissingOut(_Answer):
    missing: list[str]


class SourceOut(_Answer):
    sha256: str
    size: int


UploadedTrees = dict[
    Annotated[str, Field(pattern=r"^[0-9]{1,4}$")], Annotated[str, Field(pattern=SHA256_PATTERN)]
]
"""Index in the manifest's list -> sha256 of a tarball uploaded with PUT /sources/{sha256}."""


class SubmitIn(_Request):
    manifest: dict[str, Any]
    sources: UploadedTrees = Field(default_factory=dict, description="one per `path` package")
    contexts: UploadedTrees = Field(default_factory=dict, description="one per `path` image")
    files: UploadedTrees = Field(
        default_factory=dict,
        description="per package: a flat tarball of its local files (a `path` tree's upstream "
        "tarballs, or a local `dsc` and the files it names)",
    )


class CheckoutSubmitIn(_Request):
    """A submit the local farm's in-process API alone answers (``POST /local/builds``): the farm
    reads the manifest and its trees from this machine's checkout itself (StarlingX packages need
    its git history), on behalf of ``user``."""

    manifest_path: str
    user: str | None = None


class StepView(_Answer):
    id: int
    name: str
    version: str
    state: str
    node: str | None
    attempt: int
    depends_on: list[str]
    input_key: str
    reused_from: int | None
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    log: str | None
    error: str | None
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    revision: str = ""
    """Changes whenever what this view shows of the step may have changed (``BuildChangesIn``)."""
    output_identity: str | None = Field(
        default=None, description="digest of what it built, build dates and .buildinfo aside"
    )
    reuse_reason: str | None = Field(
        default=None,
        description="why it was reused although its input key was new, e.g. "
        "'outputs of libgreet unchanged (identical to build 7)'",
    )
    position: int | None = Field(default=None, description="a ready step's place in its priority class")
    waiting: str | None = Field(
        default=None,
        description="why a pending or ready step does not run yet: 'position 3 in class nightly', "
        "'waiting: no node with arch=arm64', 'waiting: dependencies (libfoo)'",
    )
    requires: str = Field(default="", description="node labels the step needs, comma-separated")
    host_arch: str = ""  # the architecture it builds for ("": the node's own, image steps)
    layer: str | None = Field(
        default=None,
        description="the dependency layer its attempt started from: 'hit:<key>', 'miss:<key>' "
        "(made for it), 'none' or 'none:<key>' (nothing to preinstall; the key: the environment "
        "without its archive lists), 'failed' (could not be made: the bare environment); null: "
        "the runner has no layers",
    )


class BuildView(_Answer):
    id: int
    project: str
    branch: str
    kind: str
    user: str
    state: str
    created_at: str
    finished_at: str | None
    published: str | None
    error: str | None
    steps: list[StepView] = Field(default_factory=list)

    def with_changes(self, changes: BuildView) -> BuildView:
        """This view brought up to date by an answer to ``BuildChangesIn`` (its build fields, and
        the steps it holds in place of the ones with their id)."""
        newer = {step.id: step for step in changes.steps}
        steps = [newer.pop(step.id, step) for step in self.steps] + list(newer.values())
        return changes.model_copy(update={"steps": steps})

    @property
    def counts(self) -> dict[str, int]:
        """How many of its steps are in each state."""
        out: dict[str, int] = {}
        for step in self.steps:
            out[step.state] = out.get(step.state, 0) + 1
        return out


MAX_CHANGES_WAIT_SECONDS = 30.0
"""Longest a follower may ask the farm to hold a changes request open (a long poll): well under
the client's read timeout, and short enough that a follower's own deadline is never far."""


class BuildChangesIn(_Request):
    """What a follower already knows of a build: each step's id and the ``revision`` it saw.
    The answer (a :class:`BuildView`) holds only the steps whose revision differs.

    With ``wait_seconds`` (a long poll) the farm answers when a step changed or the build's state
    is no longer ``state``, or after that many seconds with nothing changed: a follower then
    costs one request a change instead of one every half second.  With ``state_only`` too, only
    the build's state ends the hold, not its steps' changes: a follower that shows only the
    build's end (``--output json``) costs one request a wait, not one a second while steps move
    (the answer still holds every step changed since ``known``)."""

    known: dict[int, str] = Field(default_factory=dict)
    state: str | None = None
    wait_seconds: float = Field(default=0.0, ge=0.0, le=MAX_CHANGES_WAIT_SECONDS)
    state_only: bool = False


class BuildPageOut(_Answer):
    items: list[BuildView]
    page: int
    per_page: int
    total: int


class LogChunk(_Answer):
    """A piece of a step's log (the route answers text/plain; these come from its headers)."""

    data: bytes
    next_offset: int
    live: bool  # the step still runs: more may come
    key: str | None = None  # the attempt's log: a new key (a retry) starts again at offset 0


# -- repositories ----------------------------------------------------------------------------


class SourcesOut(_Answer):
    line: str
    url: str
    suite: str
    components: list[str]
    signed_by: str | None = None  # the key's path in [signed-by=...]; null: an unsigned repository
    source_line: str | None = None  # the deb-src line; null: the repository has no Sources index


class RepoKeyOut(_Answer):
    fingerprint: str
    public_key: str  # armored
    signed_by: str  # where the farm's apt lines expect it: [signed-by=...]


# -- accounts --------------------------------------------------------------------------------


class UserIn(_Request):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    admin: bool = False
    service: bool = False


class UserOut(_Answer):
    name: str
    admin: bool
    service: bool


class TokenIn(_Request):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=PRINTABLE)] = "default"
    expires_days: Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS)] = DEFAULT_TOKEN_DAYS


class TokenOut(_Answer):
    id: int
    user: str
    token: str  # the only time it is shown
    expires_at: str


class ProjectIn(_Request):
    name: Annotated[str, Field(min_length=1, max_length=100)]


class GrantIn(_Request):
    role: RoleName

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, value: object) -> object:
        """A wrong role is named with the ones there are (not pydantic's literal_error)."""
        roles = get_args(RoleName)
        if value not in roles:
            raise ValueError(f"unknown role {value!r}: {', '.join(roles[:-1])} or {roles[-1]}")
        return value


# -- mirrors ---------------------------------------------------------------------------------


class MirrorOut(_Answer):
    name: str
    url: str
    distribution: str
    components: list[str]
    architectures: list[str]
    source: str | None  # the apt line builds use once the mirror is usable, else null


class MirrorSyncOut(_Answer):
    name: str
    source: str
    packages: int
    version: str
    seconds: float


# -- schedules -------------------------------------------------------------------------------


class ScheduleOut(_Answer):
    name: str
    project: str
    branch: str
    kind: str
    user: str
    cron: str
    source: str
    next_run: str | None  # ISO 8601, UTC
    last_slot: str | None
    last_build: int | None
    # the build's state ("expired" once retention removed it), or without build: "starting",
    # "retrying" (attempt last_attempt of max_attempts failed; the next is at retry_at), "failed"
    last_state: str | None
    last_error: str | None
    last_attempt: int | None = None  # the run's attempt under way or done
    max_attempts: int | None = None  # setting schedule_start_attempts
    retry_at: str | None = None  # ISO 8601, UTC: when a "retrying" run is tried again


# -- retention -------------------------------------------------------------------------------


class SweepReportOut(_Answer):
    """What a retention sweep deleted (or, ``dry_run``, would delete)."""

    dry_run: bool
    builds_by_class: dict[str, int] = Field(default_factory=dict)
    build_ids: list[int] = Field(default_factory=list)
    builds_deleted: int = 0  # every row gone
    builds_reduced: int = 0  # rows kept for a log, or for a kept build that reuses a step
    steps_deleted: int = 0
    objects: int = 0
    objects_skipped_recent: int = 0  # put again within the grace period: kept this time
    logs: int = 0
    images: int = 0
    uploads: int = 0  # uploaded objects no build named, older than the upload hours
    repository_versions: int = 0  # repository versions crashed builds left unserved
    bytes_freed: int = 0  # objects + logs (dry run: objects only)
    repository_bytes_freed: int | None = None  # when the repository knows it
    registry_bytes_freed: int | None = None
    skipped_builds: list[int] = Field(default_factory=list)  # the repository refused to expire them
    warnings: list[str] = Field(default_factory=list)  # what was left behind, one line each
    selection_seconds: float = 0.0
    seconds: float = 0.0


class StorageGroupOut(_Answer):
    kind: str
    project: str
    branch: str
    builds: int
    output_bytes: int  # bytes of the files its own steps produced (a shared file counts where made)
    source_bytes: int = 0  # its steps' source tarballs (each distinct one once per group)


class StorageReportOut(_Answer):
    groups: list[StorageGroupOut]
    builds: int
    output_bytes: int  # distinct content objects the rows name as outputs
    next_sweep: SweepReportOut
    uploads: int = 0  # distinct uploaded objects no build names (yet)
    upload_bytes: int = 0
