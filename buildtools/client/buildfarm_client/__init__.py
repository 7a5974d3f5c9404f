"""The typed Python client of a buildfarm's REST API: :class:`Client`, its wire models, its errors.

Installable on its own (``buildtools/client/pyproject.toml``: httpx and pydantic only): it
imports nothing of the farm, which an import-linter contract in the farm's pyproject checks.
The farm's API declares its routes with the same :mod:`buildfarm_client.models`.

:class:`Client` and :mod:`.models` are imported on first use (``buildfarm_client.Client``, ``from
buildfarm_client import models``): a program that needs only the errors or :mod:`.limits` (the
farm's command line, for ``--help``) does not import httpx and pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from buildfarm_client import models
    from buildfarm_client.client import Client

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

_LAZY = {"Client": "buildfarm_client.client", "models": "buildfarm_client.models"}


def __getattr__(name: str) -> Any:
    """``Client`` and ``models``, imported the first time they are asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name == "models" else getattr(module, name)
    globals()[name] = value
    return value
