"""The authorization policy on its own: which role each action needs, admins everywhere, and
another user's personal build hidden (404) from whoever may not see it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from buildfarm.accounts import ForbiddenError, Principal, policy
from buildfarm.model.errors import NotFoundError
from buildfarm.model.types import BuildKind
from buildfarm.state.models import Role

ADMIN = Principal("root", admin=True)
ANN = Principal("ann", roles={"web": Role.BUILDER, "shop": Role.VIEWER})
MAY = Principal("may", roles={"web": Role.MAINTAINER})


@dataclass(frozen=True)
class _Build:
    id: int
    project: str
    user: str
    kind: str


def test_only_admins_pass_require_admin_and_the_refusal_names_the_action() -> None:
    policy.require_admin(ADMIN, "sync mirrors")
    with pytest.raises(ForbiddenError, match=r"^ann is not an admin: only admins sync mirrors$"):
        policy.require_admin(ANN, "sync mirrors")
    with pytest.raises(ForbiddenError, match=r"^may is not an admin$"):
        policy.require_admin(MAY)


def test_releases_need_a_maintainer_other_builds_a_builder() -> None:
    assert policy.submit_role(BuildKind.RELEASE) == Role.MAINTAINER
    assert {policy.submit_role(k) for k in BuildKind if k != BuildKind.RELEASE} == {Role.BUILDER}


def test_personal_builds_of_others_do_not_exist_for_non_maintainers() -> None:
    theirs = _Build(7, "web", "bob", BuildKind.PERSONAL.value)
    with pytest.raises(NotFoundError, match="build 7 does not exist"):
        policy.require_view(ANN, theirs)
    policy.require_view(MAY, theirs)
    policy.require_view(ADMIN, theirs)
    policy.require_view(ANN, _Build(8, "web", "bob", BuildKind.NIGHTLY.value))
    with pytest.raises(ForbiddenError, match="may not see builds in project 'lab'"):
        policy.require_view(ANN, _Build(9, "lab", "bob", BuildKind.NIGHTLY.value))


def test_builders_change_their_own_builds_maintainers_anyones() -> None:
    own, other = _Build(1, "web", "ann", "nightly"), _Build(2, "web", "bob", "nightly")
    policy.require_change(ANN, own, "cancel")
    with pytest.raises(ForbiddenError, match="may not cancel another user's build"):
        policy.require_change(ANN, other, "cancel")
    policy.require_change(MAY, other, "retry")
    with pytest.raises(ForbiddenError, match="may not retry in project 'shop'"):
        policy.require_change(ANN, _Build(3, "shop", "ann", "nightly"), "retry")


def test_scopes_admins_see_every_project() -> None:
    assert policy.project_scope(ADMIN) is None
    assert policy.project_scope(ANN) == ["shop", "web"]
    assert policy.maintained(ANN) == [] and policy.maintained(MAY) == ["web"]
    assert policy.roles(ADMIN, ["a", "b"]) == {"a": Role.MAINTAINER, "b": Role.MAINTAINER}
    assert policy.roles(ANN, ["a"]) == {"shop": Role.VIEWER, "web": Role.BUILDER}
    policy.require_builder(ANN)
    with pytest.raises(ForbiddenError, match="not a builder in any project"):
        policy.require_builder(Principal("vic", roles={"web": Role.VIEWER}))
