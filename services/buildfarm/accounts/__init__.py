"""Accounts: users, API tokens, projects and per-project roles (:mod:`.users`); who may do what
(:mod:`.policy`, the one authorization policy of the API and the scheduler).

What other packages may use is named here; the modules behind it are private to the package.
"""

from buildfarm.accounts import policy
from buildfarm.accounts.users import (
    TOKEN_PREFIX,
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
from buildfarm.model.errors import AuthError, ForbiddenError  # the API answers 401 and 403 for them

__all__ = [
    "TOKEN_PREFIX",
    "AuthError",
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
    "policy",
    "principal_for",
    "project_exists",
    "revoke_token",
]
