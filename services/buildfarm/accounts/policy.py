"""Who may do what: the farm's one authorization policy, for the API and the scheduler alike.

A :class:`~buildfarm.accounts.Principal` knows its roles; this module says which role
each action needs, so a rule is written once whoever asks: the REST API checks a token's
principal with it, the scheduler checks a schedule's user with the same function before it
starts a build.  Admins may do everything; otherwise a user's role in a project decides
(viewer < builder < maintainer):

* viewers see a project's builds, logs, apt lines and schedules, but not another user's
  personal builds (a maintainer sees those too);
* builders upload sources, submit builds other than releases, and cancel or retry their own;
* maintainers submit release builds and cancel or retry anyone's;
* only admins manage accounts and projects, sync mirrors and run the retention sweep.
"""

from __future__ import annotations

from typing import Protocol

from buildfarm.accounts import users
from buildfarm.accounts.users import Principal
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import ForbiddenError, NotFoundError
from buildfarm.model.manifest import Manifest
from buildfarm.model.types import BuildKind
from buildfarm.state.models import Role


class OwnedBuild(Protocol):
    """What the policy reads of a build: its project, owner and kind."""

    @property
    def id(self) -> int: ...

    @property
    def project(self) -> str: ...

    @property
    def user(self) -> str: ...

    @property
    def kind(self) -> str: ...


def is_admin(principal: Principal) -> bool:
    """Admins may do everything, in every project."""
    return principal.admin


def require_admin(principal: Principal, action: str | None = None) -> None:
    """Refuse anyone but an admin; ``action`` ("sync mirrors") completes "only admins ..."."""
    if not is_admin(principal):
        reason = f": only admins {action}" if action else ""
        raise ForbiddenError(f"{principal.user} is not an admin{reason}")


def require_builder(principal: Principal) -> None:
    """Uploading sources needs the builder role in some project (the build names which later)."""
    if not principal.builds_somewhere:
        raise ForbiddenError(f"{principal.user} is not a builder in any project")


def submit_role(kind: BuildKind) -> Role:
    """The role submitting a build of ``kind`` needs: releases are the maintainers'."""
    return Role.MAINTAINER if kind == BuildKind.RELEASE else Role.BUILDER


def require_submit(
    ctx: FarmContext, principal: Principal, manifest: Manifest, action: str = "submit"
) -> None:
    """Refuse a build of an unknown project, or one the principal may not start.

    ``action`` names who starts it in the message: ``submit`` (a user) or ``run scheduled`` (a
    schedule, checked with its user's roles when it fires).
    """
    if not users.project_exists(ctx, manifest.project):
        raise NotFoundError(f"project {manifest.project!r} does not exist (an admin adds it)")
    principal.require(manifest.project, submit_role(manifest.kind), f"{action} {manifest.kind.value} builds")


def require_view(principal: Principal, build: OwnedBuild) -> None:
    """Let the principal see ``build``; another user's personal build does not exist for a
    non-maintainer (404, so its id tells nothing), any other is the project's viewers'."""
    if (
        build.kind == BuildKind.PERSONAL
        and build.user != principal.user
        and not principal.has(build.project, Role.MAINTAINER)
    ):
        raise NotFoundError(f"build {build.id} does not exist")
    principal.require(build.project, Role.VIEWER, "see builds")


def require_change(principal: Principal, build: OwnedBuild, action: str) -> None:
    """Cancel or retry: a builder changes their own builds, a maintainer anyone's."""
    if build.user == principal.user:
        principal.require(build.project, Role.BUILDER, action)
    else:
        principal.require(build.project, Role.MAINTAINER, f"{action} another user's build")


def require_viewer(principal: Principal, project: str, action: str) -> None:
    principal.require(project, Role.VIEWER, action)


def may_view(principal: Principal, project: str) -> bool:
    return principal.has(project, Role.VIEWER)


def project_scope(principal: Principal) -> list[str] | None:
    """The projects whose builds a listing may show; None: every project (an admin)."""
    return None if is_admin(principal) else sorted(principal.roles)


def maintained(principal: Principal) -> list[str]:
    """The projects where the principal also sees other users' personal builds."""
    return [p for p in principal.roles if principal.has(p, Role.MAINTAINER)]


def roles(principal: Principal, all_projects: list[str]) -> dict[str, Role]:
    """The principal's role per project: an admin is a maintainer of every one."""
    if is_admin(principal):
        return dict.fromkeys(all_projects, Role.MAINTAINER)
    return dict(sorted(principal.roles.items()))
