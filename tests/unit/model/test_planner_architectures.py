"""Manifest ``architectures``: a step per architecture of each ``Architecture: any`` package,
``Architecture: all`` once, each architecture's steps wired to the same architecture's
dependencies, and input keys that tell architectures (and cross environments) apart while a
build that lists none keeps today's names and keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildfarm.model.planner import (
    Plan,
    SourceInfo,
    builds_for,
    compute_input_keys,
    make_plan,
    read_source_info,
)

EXAMPLES = Path(__file__).parents[3] / "examples"
CROSS = {"arm64": "sbuild:bookworm:cross-arm64-digest"}


def _examples() -> list[tuple[str, SourceInfo, str]]:
    return [
        (d.name, read_source_info(d, d.name), f"tree-{d.name}")
        for d in sorted(EXAMPLES.iterdir())
        if (d / "debian").is_dir()
    ]


def _keyed(plan: Plan, native: str = "amd64", cross: dict[str, str] | None = None) -> dict[str, str]:
    compute_input_keys(
        plan, "sbuild:bookworm:native-digest", {"v": "2"}, native=native, cross_environments=cross
    )
    return {name: step.input_key for name, step in plan.steps.items()}


def test_any_packages_get_a_step_per_architecture_all_packages_one() -> None:
    plan = make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64")
    steps = plan.steps
    arch_any = {"libgreet", "greet-cli", "greet-count", "hello-standalone", "greet-quilt"}
    assert {n for n in steps if ":" in n} == {f"{n}:arm64" for n in arch_any}
    assert "greet-docs:arm64" not in steps  # Architecture: all: built once
    assert (steps["libgreet"].host_arch, steps["libgreet"].arch_all) == ("amd64", True)
    assert (steps["libgreet:arm64"].host_arch, steps["libgreet:arm64"].arch_all) == ("arm64", False)
    assert steps["libgreet:arm64"].source == "libgreet"
    # each architecture's tool links against the same architecture's library
    assert steps["greet-cli"].depends_on == ("libgreet",)
    assert steps["greet-cli:arm64"].depends_on == ("libgreet:arm64",)
    assert steps["greet-docs"].depends_on == ("greet-cli",)


def test_a_build_listing_no_architectures_keeps_its_names_and_keys() -> None:
    before = _keyed(make_plan(_examples()), native="")  # as every build was planned before
    assert _keyed(make_plan(_examples(), native="amd64")) == before
    assert _keyed(make_plan(_examples(), architectures=["amd64"], native="amd64")) == before
    listed = _keyed(make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64"), cross=CROSS)
    assert {n: k for n, k in listed.items() if ":" not in n} == before  # the native half is reused


def test_keys_tell_architectures_and_cross_environments_apart() -> None:
    keys = _keyed(make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64"), cross=CROSS)
    assert keys["libgreet:arm64"] != keys["libgreet"]
    other = _keyed(
        make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64"),
        cross={"arm64": "sbuild:bookworm:refreshed-cross-digest"},
    )
    assert {n for n in keys if keys[n] != other[n]} == {n for n in keys if n.endswith(":arm64")}


def test_primary_step_is_the_first_listed_when_the_node_is_not_listed() -> None:
    plan = make_plan(_examples(), architectures=["arm64"], native="amd64")
    assert all(":" not in name for name in plan.steps)
    assert {s.host_arch for s in plan.steps.values()} == {"arm64"}
    assert all(s.arch_all for s in plan.steps.values())  # greet-docs' arch:all binary is still built
    keys = _keyed(plan, cross=CROSS)
    assert keys["libgreet"] != _keyed(make_plan(_examples(), native="amd64"))["libgreet"]


def test_a_package_for_one_architecture_only() -> None:
    only = SourceInfo("firmware", "1.0", ("fw-arm64",), (), architectures=("arm64",))
    lib = SourceInfo("lib", "1.0", ("lib-dev",), (), architectures=("linux-any",))
    tool = SourceInfo("tool", "1.0", ("tool",), ("lib-dev",), architectures=("any", "all"))
    plan = make_plan(
        [(i.name, i, i.name) for i in (only, lib, tool)], architectures=["amd64", "arm64"], native="amd64"
    )
    assert sorted(plan.steps) == ["firmware", "lib", "lib:arm64", "tool", "tool:arm64"]
    assert plan.steps["firmware"].host_arch == "arm64"  # its one architecture, under its own name
    assert plan.steps["tool:arm64"].depends_on == ("lib:arm64",)


def test_explicit_depends_follow_the_architecture() -> None:
    lib = SourceInfo("lib", "1.0", ("lib1",), ())
    tool = SourceInfo("tool", "1.0", ("tool",), ())
    plan = make_plan(
        [(i.name, i, i.name) for i in (lib, tool)],
        explicit_depends={"tool": ("lib",)},
        architectures=["amd64", "arm64"],
        native="amd64",
    )
    assert plan.steps["tool"].depends_on == ("lib",)
    assert plan.steps["tool:arm64"].depends_on == ("lib:arm64",)


@pytest.mark.parametrize(
    ("tokens", "arch", "expected"),
    [
        (("any",), "arm64", True),
        (("all",), "arm64", False),
        (("amd64", "arm64"), "arm64", True),
        (("amd64",), "arm64", False),
        (("linux-any",), "arm64", True),
        (("any-arm64",), "arm64", True),
        (("any-amd64",), "arm64", False),
        (("kfreebsd-any",), "arm64", False),
        (("musl-linux-any",), "musl-linux-arm64", True),
    ],
)
def test_builds_for(tokens: tuple[str, ...], arch: str, expected: bool) -> None:
    assert builds_for(tokens, arch) is expected


def test_a_native_build_of_a_foreign_architecture_keys_apart_from_its_cross_build() -> None:
    def natively(environment: str) -> dict[str, str]:
        plan = make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64")
        compute_input_keys(plan, environment, {"v": "2"}, native="amd64", built_natively={"arm64"})
        return {name: step.input_key for name, step in plan.steps.items()}

    crossed = _keyed(make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64"), cross=CROSS)
    native = natively("sbuild:bookworm:native-digest")
    assert {n: k for n, k in native.items() if ":" not in n} == {
        n: k for n, k in crossed.items() if ":" not in n
    }
    arm = [n for n in native if n.endswith(":arm64")]
    assert arm and all(native[n] != crossed[n] for n in arm)  # no cross outputs for a native step
    # no cross environment is needed, and the farm's environment (its mirror state) is in the key
    assert all(natively("sbuild:bookworm:refreshed")[n] != native[n] for n in arm)


def test_placed_steps_key_as_their_own_placement_says() -> None:
    """Per-step placement (the reaper's cross fallback): a step named in ``placed`` keys as
    cross-built in the environment given (None: natively), whatever its architecture's default."""

    def keyed(**placement: object) -> dict[str, str]:
        plan = make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64")
        compute_input_keys(plan, "sbuild:bookworm:native-digest", {"v": "2"}, native="amd64", **placement)  # type: ignore[arg-type]
        return {name: step.input_key for name, step in plan.steps.items()}

    crossed = keyed(cross_environments=CROSS)
    native = keyed(built_natively={"arm64"})
    arm = sorted(n for n in native if n.endswith(":arm64"))
    assert len(arm) >= 2
    # every step placed one by one as its architecture's default: the same keys
    assert keyed(placed={n: CROSS["arm64"] for n in arm}) == crossed
    assert keyed(placed=dict.fromkeys(arm)) == native
    # one step without dependencies moved to the cross placement: its key is the cross one; the
    # steps depending on it change too, the others keep their native keys
    plan = make_plan(_examples(), architectures=["amd64", "arm64"], native="amd64")
    leaf = next(  # libgreet:arm64
        n for n in arm if not plan.steps[n].depends_on and any(n in plan.steps[m].depends_on for m in arm)
    )
    users = {n for n in arm if leaf in plan.steps[n].depends_on}
    mixed = keyed(built_natively={"arm64"}, placed={leaf: CROSS["arm64"]})
    assert mixed[leaf] == crossed[leaf]
    assert users and all(mixed[n] not in (native[n], crossed[n]) for n in users)
    assert all(mixed[n] == native[n] for n in native if n != leaf and n not in users)
