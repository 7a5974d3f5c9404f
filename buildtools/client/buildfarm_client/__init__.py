"""The typed Python client of a buildfarm's REST API: :class:`Client`, its wire models, its errors.

Installable on its own (``buildtools/client/pyproject.toml``: httpx and pydantic only): it
imports nothing of the farm, which an import-linter contract in the farm's pyproject checks.
The farm's API declares its routes with the same :mod:`buildfarm_client.models`.
"""

from buildfarm_client import models
from buildfarm_client.client import Client
from buildfarm_client.errors import (
    ApiError,
    BadManifestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
    ServerError,
    TemporaryApiError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "ApiError",
    "BadManifestError",
    "Client",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "PermanentApiError",
    "RateLimitedError",
    "ServerError",
    "TemporaryApiError",
    "UnauthenticatedError",
    "UnavailableError",
    "models",
]
