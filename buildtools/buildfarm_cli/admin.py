"""``buildfarm admin``: the first admin, users, tokens, projects and roles.

``admin init`` works on the farm's database directly (it makes the first token, so there is no
token to call the API with yet; :mod:`buildfarm_cli.operator.accounts`); the Helm chart runs it
at install.  Every other command goes
through the farm client: the REST API with ``--farm``, the local database otherwise.  A new
token is printed once, alone on stdout (so ``TOKEN=$(buildfarm admin token create bob)`` works);
what it is goes to stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from buildfarm_cli.common import OutputOpt, state
from buildfarm_cli.output import OutputFormat, console, emit_json, err_console
from buildfarm_client.limits import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS

if TYPE_CHECKING:
    from buildfarm_client.models import TokenOut

admin_app = typer.Typer(no_args_is_help=True, help="Users, API tokens, projects and roles.")
user_app = typer.Typer(no_args_is_help=True, help="Users of the farm.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (shown once, at creation).")
project_app = typer.Typer(no_args_is_help=True, help="Projects.")
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(token_app, name="token")
admin_app.add_typer(project_app, name="project")


def print_token(created: TokenOut, fmt: OutputFormat) -> None:
    if fmt == OutputFormat.JSON:
        emit_json(
            {"user": created.user, "token": created.token, "id": created.id, "expires_at": created.expires_at}
        )
        return
    err_console().print(
        f"token {created.id} for {created.user}, valid until {created.expires_at}; "
        "it is shown only now, keep it secret:",
        markup=False,
        soft_wrap=True,
    )
    typer.echo(created.token)


@user_app.command("add")
def user_add(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="may do everything")] = False,
    service: Annotated[bool, typer.Option("--service", help="a machine account (CI), not a person")] = False,
    output: OutputOpt = None,
) -> None:
    """Add a user (give them a token with `admin token create` and roles with `admin grant`)."""
    user = state.client().add_user(name, admin=admin, service=service)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(user)
        return
    kind = " (admin)" if user.admin else " (service)" if user.service else ""
    console().print(f"user {user.name} added{kind}", markup=False)


@token_app.command("create")
def token_create(
    user: str,
    name: Annotated[str, typer.Option(help="what the token is for")] = "default",
    days: Annotated[
        int, typer.Option(min=1, max=MAX_TOKEN_DAYS, help="days until it expires")
    ] = DEFAULT_TOKEN_DAYS,
    output: OutputOpt = None,
) -> None:
    """Create an API token for USER and print it (the only time it is shown)."""
    print_token(state.client().create_token(user, name, days), state.fmt(output))


@token_app.command("revoke")
def token_revoke(token_id: int, output: OutputOpt = None) -> None:
    """Revoke a token by its id: it stops working at once."""
    state.client().revoke_token(token_id)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json({"revoked": token_id})
    else:
        console().print(f"token {token_id} revoked")


@project_app.command("add")
def project_add(name: str, output: OutputOpt = None) -> None:
    """Add a project (builds name it in their manifest)."""
    state.client().add_project(name)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json({"project": name})
    else:
        console().print(f"project {name} added", markup=False)


@admin_app.command("grant")
def grant(user: str, project: str, role: str, output: OutputOpt = None) -> None:
    """Give USER the ROLE (viewer, builder or maintainer) in PROJECT, replacing any other."""
    state.client().grant(user, project, role)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json({"user": user, "project": project, "role": role})
    else:
        console().print(f"{user} is {role} in {project}", markup=False)
