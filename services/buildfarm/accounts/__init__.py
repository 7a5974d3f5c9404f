"""Accounts: users, API tokens, projects and per-project roles (:mod:`.users`).

What other packages may use is named here; the modules behind it are private to the package.
"""

from buildfarm.accounts.users import (
    DEFAULT_TOKEN_DAYS,
    MAX_TOKEN_DAYS,
    TOKEN_PREFIX,
    AuthError,
    CreatedToken,
    ForbiddenError,
    Principal,
    add_project,
    add_user,
    authenticate,
    create_token,
    digest,
    ensure_projects,
    grant,
    init_admin,
    list_projects,
    principal_for,
    project_exists,
    revoke_token,
)

__all__ = [
    "DEFAULT_TOKEN_DAYS",
    "MAX_TOKEN_DAYS",
    "TOKEN_PREFIX",
    "AuthError",
    "CreatedToken",
    "ForbiddenError",
    "Principal",
    "add_project",
    "add_user",
    "authenticate",
    "create_token",
    "digest",
    "ensure_projects",
    "grant",
    "init_admin",
    "list_projects",
    "principal_for",
    "project_exists",
    "revoke_token",
]
