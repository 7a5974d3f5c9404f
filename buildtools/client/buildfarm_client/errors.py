"""What can go wrong talking to a farm, and whether trying again can help.

Every error the client raises is an :class:`ApiError`; a :class:`TemporaryApiError` (the farm
is unreachable, overloaded or rate-limits the caller) carries how long to wait before trying
again, every other kind will fail the same way again.  The error body ``{"error": {"code",
"message"}}`` of the API (docs/api.md, "Errors") picks the kind; the message is the farm's.
"""

from __future__ import annotations


class ApiError(Exception):
    """The farm refused or failed a request; ``code`` is the API's error code (or ``http_<status>``)."""

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class TemporaryApiError(ApiError):
    """Trying again after ``retry_after`` seconds may help."""

    def __init__(self, message: str, retry_after: float, *, code: str = "", status: int = 0) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class UnavailableError(TemporaryApiError):
    """The farm (or a service behind it) cannot be reached or did not answer in time."""


class RateLimitedError(TemporaryApiError):
    """Too many requests, or too many running builds, for this caller just now (429)."""


class PermanentApiError(ApiError):
    """The request is wrong as it stands (4xx): sending it again fails again."""


class UnauthenticatedError(PermanentApiError):
    """No token, or an unknown, revoked or expired one (401)."""


class ForbiddenError(PermanentApiError):
    """The caller lacks the role for this (403)."""


class NotFoundError(PermanentApiError):
    """No such build, step, project, user, token or mirror (404)."""


class ConflictError(PermanentApiError):
    """The thing exists already, or is in a state that forbids this (409)."""


class BadManifestError(PermanentApiError):
    """The build manifest is invalid (400 ``bad_manifest``)."""


class ServerError(ApiError):
    """The farm failed (5xx), or answered something that is not the API's wire format."""
