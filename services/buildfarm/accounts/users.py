"""Users, API tokens, projects and per-project roles; who may do what.

Tokens are random (256 bits), shown once at creation and stored only as their sha256: a leaked
database does not leak usable tokens, and a random secret needs no slow hash.  A token has an
expiry and can be revoked.  Admins may do everything; otherwise a user's role in a project
decides (viewer < builder < maintainer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildfarm.engine.context import FarmContext
from buildfarm.model import names
from buildfarm.model.errors import AuthError, ConflictError, ForbiddenError, NotFoundError, PermanentError
from buildfarm.state.models import ROLE_RANK, Grant, Project, Role, Token, User, utcnow
from buildfarm_client.limits import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS
from buildfarm_client.models import TokenOut

TOKEN_PREFIX = "bf_"


@dataclass(frozen=True)
class Principal:
    """Who makes a request, with everything needed to decide what they may do."""

    user: str
    admin: bool = False
    service: bool = False
    roles: dict[str, Role] = field(default_factory=dict)

    def role_in(self, project: str) -> Role | None:
        return Role.MAINTAINER if self.admin else self.roles.get(project)

    def has(self, project: str, role: Role) -> bool:
        held = self.role_in(project)
        return held is not None and ROLE_RANK[held] >= ROLE_RANK[role]

    def require(self, project: str, role: Role, action: str) -> None:
        if not self.has(project, role):
            raise ForbiddenError(f"{self.user} may not {action} in project {project!r} (needs {role.value})")

    @property
    def builds_somewhere(self) -> bool:
        return self.admin or any(ROLE_RANK[r] >= ROLE_RANK[Role.BUILDER] for r in self.roles.values())


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(session: Session, name: str) -> User:
    names.check_simple_name(name, "user")
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is None:
        raise NotFoundError(f"user {name!r} does not exist")
    return user


def _project(session: Session, name: str) -> Project:
    names.check_simple_name(name, "project")
    project = session.scalars(select(Project).where(Project.name == name)).one_or_none()
    if project is None:
        raise NotFoundError(f"project {name!r} does not exist")
    return project


def _principal(session: Session, user: User) -> Principal:
    grants = session.scalars(select(Grant).where(Grant.user_id == user.id)).all()
    return Principal(user.name, user.admin, user.service, {g.project.name: Role(g.role) for g in grants})


def add_user(ctx: FarmContext, name: str, *, admin: bool = False, service: bool = False) -> Principal:
    names.check_simple_name(name, "user")
    with ctx.db.session() as session:
        if session.scalars(select(User).where(User.name == name)).one_or_none() is not None:
            raise ConflictError(f"user {name!r} already exists")
        session.add(User(name=name, admin=admin, service=service))
    return Principal(name, admin, service)


def create_token(
    ctx: FarmContext, user: str, name: str = "default", days: int = DEFAULT_TOKEN_DAYS
) -> TokenOut:
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise PermanentError(f"a token lives 1 to {MAX_TOKEN_DAYS} days, not {days}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = utcnow() + dt.timedelta(days=days)
    with ctx.db.session() as session:
        owner = _user(session, user)
        token = Token(user_id=owner.id, name=name[:100], digest=digest(secret), expires_at=expires)
        session.add(token)
        session.flush()
        return TokenOut(
            id=token.id, user=user, token=secret, expires_at=expires.isoformat(timespec="seconds")
        )


def init_admin(ctx: FarmContext, name: str = "admin", days: int = MAX_TOKEN_DAYS) -> TokenOut:
    """The first admin and its token; refuses if an admin exists (run it once, at install)."""
    with ctx.db.session() as session:
        if session.scalars(select(User).where(User.admin.is_(True))).first() is not None:
            raise ConflictError(
                "the farm already has an admin; create more tokens with `buildfarm admin token create`"
            )
    add_user(ctx, name, admin=True)
    return create_token(ctx, name, "init", days)


def revoke_token(ctx: FarmContext, token_id: int) -> None:
    with ctx.db.session() as session:
        token = session.get(Token, token_id)
        if token is None:
            raise NotFoundError(f"token {token_id} does not exist")
        if token.revoked_at is None:
            token.revoked_at = utcnow()


def add_project(ctx: FarmContext, name: str) -> None:
    names.check_simple_name(name, "project")
    with ctx.db.session() as session:
        if session.scalars(select(Project).where(Project.name == name)).one_or_none() is not None:
            raise ConflictError(f"project {name!r} already exists")
        session.add(Project(name=name))


def ensure_projects(ctx: FarmContext, projects: list[str]) -> None:
    """Projects declared in the farm's configuration exist (idempotent)."""
    with ctx.db.session() as session:
        known = set(session.scalars(select(Project.name)))
        for name in projects:
            if name not in known:
                names.check_simple_name(name, "project")
                session.add(Project(name=name))


def grant(ctx: FarmContext, user: str, project: str, role: str) -> None:
    try:
        wanted = Role(role)
    except ValueError as exc:
        raise PermanentError(f"unknown role {role!r}: viewer, builder or maintainer") from exc
    with ctx.db.session() as session:
        owner, target = _user(session, user), _project(session, project)
        existing = session.scalars(
            select(Grant).where(Grant.user_id == owner.id, Grant.project_id == target.id)
        ).one_or_none()
        if existing is None:
            session.add(Grant(user_id=owner.id, project_id=target.id, role=wanted.value))
        else:
            existing.role = wanted.value


def authenticate(ctx: FarmContext, token: str | None) -> Principal:
    """The principal behind a bearer token; AuthError for anything not currently valid."""
    if not token:
        raise AuthError("no token: send 'Authorization: Bearer <token>'")
    with ctx.db.session() as session:
        row = session.scalars(select(Token).where(Token.digest == digest(token))).one_or_none()
        if row is None:
            raise AuthError("unknown token")
        if row.revoked_at is not None:
            raise AuthError("this token was revoked")
        if row.expires_at <= utcnow():
            raise AuthError("this token has expired")
        return _principal(session, row.user)


def project_exists(ctx: FarmContext, name: str) -> bool:
    names.check_simple_name(name, "project")
    with ctx.db.session() as session:
        return session.scalars(select(Project.id).where(Project.name == name)).first() is not None


def principal_for(ctx: FarmContext, user: str) -> Principal:
    with ctx.db.session() as session:
        return _principal(session, _user(session, user))


def list_projects(ctx: FarmContext) -> list[str]:
    with ctx.db.session() as session:
        return sorted(session.scalars(select(Project.name)))
