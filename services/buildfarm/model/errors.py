"""One error family for the whole farm, split by whether trying again can help.

``PermanentError`` is a mistake in what was asked (a bad manifest, a cycle, a name with ``../``):
retrying the same request gives the same answer, so the CLI prints one line and exits 1.
``TemporaryError`` is the world misbehaving (an unreachable service, a lost lease): the same
request may succeed later, and the error carries how long to wait before trying again.
Third-party errors are wrapped at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class BuildfarmError(Exception):
    """Base of every error the farm raises on purpose; its message is one line meant for a person."""


class PermanentError(BuildfarmError):
    """Retrying cannot help: the request itself is wrong."""


class TemporaryError(BuildfarmError):
    """Retrying may help after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(PermanentError):
    """No, unknown, revoked or expired token (401)."""


class ForbiddenError(PermanentError):
    """The user lacks the role for this (403)."""


class ManifestError(PermanentError):
    """A build manifest is malformed; the message names the file, the field and what is wrong."""


class PlanError(PermanentError):
    """The packages of a manifest cannot be planned (cycle, unreadable debian/control, ...)."""


class NameError_(PermanentError):
    """A project, branch or user name breaks the naming rules."""


class NotFoundError(PermanentError):
    """A build, step or project that was asked for does not exist."""


class ConflictError(PermanentError):
    """The request does not fit the current state (e.g. retrying a build that succeeded)."""


class ServiceUnavailableError(TemporaryError):
    """A service the farm needs (Redis, the database, the repository) cannot be reached."""
