"""Resolved keys: a step's own inputs with what its dependencies built (``engine/outputs.py``)."""

from __future__ import annotations

from buildfarm.engine.outputs import resolved_key
from buildfarm.model.planner import SourceInfo, compute_input_keys, make_plan
from buildfarm.state.models import Step


def _steps(identities: dict[str, str | None], own: str | None = "own") -> dict[str, Step]:
    """lib <- cli <- docs, with the given output identities; docs has the own key."""
    steps = {
        "lib": Step(name="lib", depends_on=[], output_identity=identities.get("lib")),
        "cli": Step(name="cli", depends_on=["lib"], output_identity=identities.get("cli")),
        "docs": Step(name="docs", depends_on=["cli"], own_key=own),
    }
    return steps


def test_the_key_follows_every_identity_below_not_the_input_keys() -> None:
    base = _steps({"lib": "L1", "cli": "C1"})
    key = resolved_key(base["docs"], base)
    assert key is not None
    base["lib"].input_key = "another input key"  # a rebuilt library...
    assert resolved_key(base["docs"], base) == key  # ...into the same packages: the same key
    changed_below = _steps({"lib": "L2", "cli": "C1"})  # docs installs lib too, through cli
    assert resolved_key(changed_below["docs"], changed_below) != key
    assert resolved_key(_steps({"lib": "L1", "cli": "C1"}, own="other")["docs"], base) != key


def test_no_key_without_an_own_key_or_an_identity_below() -> None:
    before = _steps({"lib": "L1", "cli": "C1"}, own=None)  # submitted before output identities
    assert resolved_key(before["docs"], before) is None
    unknown = _steps({"lib": None, "cli": "C1"})  # lib built before them
    assert resolved_key(unknown["docs"], unknown) is None


def test_own_keys_leave_dependencies_out_and_keep_the_environment() -> None:
    def plan(lib_tree: str, environment: str) -> dict[str, tuple[str, str]]:
        lib = SourceInfo(name="lib", version="1.0", binaries=("lib1",), build_depends=())
        cli = SourceInfo(name="cli", version="1.0", binaries=("cli",), build_depends=("lib1",))
        made = make_plan([("lib", lib, lib_tree), ("cli", cli, "tree-cli")])
        compute_input_keys(made, environment, {})
        return {n: (s.input_key, s.own_key) for n, s in made.steps.items()}

    first, comment, other_env = plan("tree-1", "env"), plan("tree-2", "env"), plan("tree-1", "env2")
    assert first["cli"][0] != comment["cli"][0]  # the input key follows the library's source
    assert first["cli"][1] == comment["cli"][1]  # the own key does not
    assert first["cli"][1] != other_env["cli"][1]  # but it follows the environment
    assert first["lib"][1] != comment["lib"][1]
