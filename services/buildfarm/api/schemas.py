"""The REST API's request and response bodies (the OpenAPI schema is made from these)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from buildfarm import accounts
from buildfarm.backends.base import SHA256_HEX_LENGTH
from buildfarm.engine import control
from buildfarm.state.models import Role

SHA256_PATTERN = f"^[0-9a-f]{{{SHA256_HEX_LENGTH}}}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthOut(BaseModel):
    status: str


class WhoAmI(BaseModel):
    user: str
    admin: bool
    roles: dict[str, str]


class MissingIn(_Strict):
    sha256: Annotated[list[Annotated[str, Field(pattern=SHA256_PATTERN)]], Field(max_length=1000)]


class MissingOut(BaseModel):
    missing: list[str]


class SourceOut(BaseModel):
    sha256: str
    size: int


UploadedTrees = dict[
    Annotated[str, Field(pattern=r"^[0-9]{1,4}$")], Annotated[str, Field(pattern=SHA256_PATTERN)]
]
"""Index in the manifest's list -> sha256 of a tarball uploaded with PUT /sources/{sha256}."""


class SubmitIn(_Strict):
    manifest: dict[str, Any]
    sources: UploadedTrees = Field(default_factory=dict, description="one per `path` package")
    contexts: UploadedTrees = Field(default_factory=dict, description="one per `path` image")
    files: UploadedTrees = Field(
        default_factory=dict,
        description="per package: a flat tarball of its local files (a `path` tree's upstream "
        "tarballs, or a local `dsc` and the files it names)",
    )


class BuildPageOut(BaseModel):
    items: list[control.BuildView]
    page: int
    per_page: int
    total: int


class SourcesOut(BaseModel):
    line: str
    url: str
    suite: str
    components: list[str]
    signed_by: str | None = None  # the key's path in [signed-by=...]; null: an unsigned repository
    source_line: str | None = None  # the deb-src line; null: the repository has no Sources index


class ProjectOut(BaseModel):
    name: str
    role: str


class UserIn(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    admin: bool = False
    service: bool = False


class UserOut(BaseModel):
    name: str
    admin: bool
    service: bool


PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
"""Free-text names (token labels) may hold anything but control characters (PostgreSQL refuses NUL)."""


class TokenIn(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=PRINTABLE)] = "default"
    expires_days: Annotated[int, Field(ge=1, le=accounts.MAX_TOKEN_DAYS)] = accounts.DEFAULT_TOKEN_DAYS


class TokenOut(BaseModel):
    id: int
    user: str
    token: str
    expires_at: str


class ProjectIn(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]


class GrantIn(_Strict):
    role: Role


class NodeOut(BaseModel):
    online: bool
    active_tasks: int


class StatusOut(BaseModel):
    nodes: dict[str, NodeOut]
    queues: dict[str, int]
    running_steps: list[dict[str, Any]]
