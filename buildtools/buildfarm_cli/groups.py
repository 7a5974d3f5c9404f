"""The top level of ``buildfarm``: its groups of commands (``build``, ``admin``...) made when named.

typer makes the click command of every command of an application for every run, reading each
command function's signature and evaluating its annotations (strings, ``from __future__ import
annotations``): every run paid for all 33 commands to start one.  The top-level
group made by :func:`with_groups` holds the application's own commands and the groups' typer
applications, and makes a group the first time something asks for it by name: the command line
(``buildfarm build show 7`` makes ``build`` alone), ``--help`` (which lists them all) or shell
completion.  What they print and how they parse stay typer's own: each group is made as
``Typer.add_typer`` would have it made, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup
from typer.main import get_group_from_info
from typer.models import TyperInfo

if TYPE_CHECKING:
    from typer._click import Command  # the click that typer carries: what a group holds


class _Commands(MutableMapping[str, "Command"]):
    """A group's commands by name, in their order: each either made, or a typer application to
    make into its group when first looked up."""

    def __init__(self, entries: Mapping[str, Command | typer.Typer], parent: TyperGroup) -> None:
        self._entries = dict(entries)
        self._parent = parent

    def __getitem__(self, name: str) -> Command:
        entry = self._entries[name]
        if isinstance(entry, typer.Typer):
            entry = self._entries[name] = get_group_from_info(
                TyperInfo(entry, name=name),
                pretty_exceptions_short=entry.pretty_exceptions_short,
                rich_markup_mode=self._parent.rich_markup_mode,
                suggest_commands=self._parent.suggest_commands,
            )
        return entry

    def __setitem__(self, name: str, command: Command) -> None:
        self._entries[name] = command

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def with_groups(groups: Mapping[str, typer.Typer]) -> type[TyperGroup]:
    """The click group class of a typer application (``typer.Typer(cls=...)``) whose groups of
    commands are ``groups`` by name (read when the application is run: it may still be filled),
    listed after the application's own commands, in the order of ``groups``."""

    class TopLevel(TyperGroup):
        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            self.commands = _Commands({**self.commands, **groups}, self)

    return TopLevel
