"""The dependency graph from Build-Depends, cycles, critical-path priorities and input keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildfarm.model.errors import PlanError
from buildfarm.model.planner import (
    ImageInfo,
    Plan,
    SourceInfo,
    compute_input_keys,
    make_plan,
    read_source_info,
)

EXAMPLES = Path(__file__).parents[3] / "examples"


def _info(name: str, binaries: tuple[str, ...], deps: tuple[str, ...] = ()) -> SourceInfo:
    return SourceInfo(name=name, version="1.0", binaries=binaries, build_depends=deps)


def _plan(*infos: SourceInfo) -> Plan:
    return make_plan([(i.name, i, f"tree-{i.name}") for i in infos])


def test_examples_graph() -> None:
    packages = []
    for directory in sorted(p for p in EXAMPLES.iterdir() if (p / "debian").is_dir()):
        packages.append((directory.name, read_source_info(directory, directory.name), directory.name))
    plan = make_plan(packages)
    assert plan.steps["greet-cli"].depends_on == ("libgreet",)
    assert plan.steps["greet-count"].depends_on == ("libgreet",)
    assert plan.steps["greet-docs"].depends_on == ("greet-cli",)
    assert plan.steps["hello-standalone"].depends_on == ()
    order = plan.order()
    assert order.index("libgreet") < order.index("greet-cli") < order.index("greet-docs")
    assert order[0] == "libgreet"  # longest chain first: libgreet -> greet-cli -> greet-docs
    assert plan.steps["libgreet"].priority == 2


CHANGELOG = (
    "{name} (1.0) unstable; urgency=medium\n\n  * x\n\n -- A <a@b.c>  Mon, 01 Jan 2024 00:00:00 +0000\n"
)


def _source_dir(root: Path, name: str, control: str) -> Path:
    (root / name / "debian").mkdir(parents=True)
    (root / name / "debian" / "control").write_text(control)
    (root / name / "debian" / "changelog").write_text(CHANGELOG.format(name=name))
    return root / name


def test_alternatives_and_other_fields_count(tmp_path: Path) -> None:
    a = _source_dir(tmp_path, "aa", "Source: aa\n\nPackage: liba-dev\n\nPackage: a-tools\n")
    b = _source_dir(
        tmp_path,
        "bb",
        "Source: bb\nBuild-Depends: debhelper-compat (= 13), other | liba-dev:any (>= 1) [amd64] <!nocheck>\n"
        "\nPackage: bb\n",
    )
    c = _source_dir(tmp_path, "cc", "Source: cc\nBuild-Depends-Indep: a-tools\n\nPackage: cc\n")
    plan = make_plan([(d.name, read_source_info(d, d.name), d.name) for d in (a, b, c)])
    assert plan.steps["bb"].depends_on == ("aa",)
    assert plan.steps["cc"].depends_on == ("aa",)
    assert plan.steps["aa"].version == "1.0"


def test_cycle_is_named() -> None:
    with pytest.raises(PlanError, match="cycle: ") as info:
        _plan(_info("a", ("a",), ("c",)), _info("b", ("b",), ("a",)), _info("c", ("c",), ("b",)))
    message = str(info.value)
    for name in ("a", "b", "c"):
        assert name in message
    assert " -> " in message


def test_duplicate_source_and_binary() -> None:
    with pytest.raises(PlanError, match="appears twice"):
        _plan(_info("a", ("a1",)), _info("a", ("a2",)))
    with pytest.raises(PlanError, match="binary package 'x' is built by both a and b"):
        _plan(_info("a", ("x",)), _info("b", ("x",)))


def test_input_keys_ripple_to_dependents_only() -> None:
    def keys(tree_lib: str) -> dict[str, str]:
        infos = [_info("lib", ("lib-dev",)), _info("tool", ("tool",), ("lib-dev",)), _info("solo", ("solo",))]
        plan = make_plan([(i.name, i, tree_lib if i.name == "lib" else f"t-{i.name}") for i in infos])
        compute_input_keys(plan, "env-1", {"runner": "host"})
        return {n: s.input_key for n, s in plan.steps.items()}

    first, second = keys("lib-v1"), keys("lib-v2")
    assert first == keys("lib-v1")  # deterministic
    assert first["lib"] != second["lib"]
    assert first["tool"] != second["tool"]  # depends on lib
    assert first["solo"] == second["solo"]  # independent


def test_environment_and_options_change_keys() -> None:
    plan = _plan(_info("a", ("a",)))
    compute_input_keys(plan, "env-1", {})
    base = plan.steps["a"].input_key
    compute_input_keys(plan, "env-2", {})
    assert plan.steps["a"].input_key != base
    compute_input_keys(plan, "env-1", {"runner": "sbuild"})
    assert plan.steps["a"].input_key != base


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        ("Package: x\n", "no 'Source' paragraph"),
        ("Source: x\n", "every paragraph after the first needs 'Package'"),
        ("Source: xy\nBuild-Depends: a (>>\n\nPackage: xy\n", "cannot parse Build-Depends"),
        # issue 11: dpkg-source refused these on a builder, minutes after the submit
        ("Source: Hello\n\nPackage: hello\n", "Source 'Hello' is not a Debian package name"),
        ("Source: -rf\n\nPackage: hello\n", "Source '-rf' is not a Debian package name"),
        ("Source: a_b\n\nPackage: hello\n", "Source 'a_b' is not a Debian package name"),
        ("Source: x\n\nPackage: hello\n", "Source 'x' is not a Debian package name"),
        ("Source: ok\n\nPackage: ../x\n", "Package '../x' is not a Debian package name"),
    ],
)
def test_bad_control(tmp_path: Path, control: str, expected: str) -> None:
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian" / "control").write_text(control)
    (tmp_path / "debian" / "changelog").write_text(
        "x (1.0) unstable; urgency=medium\n\n  * x\n\n -- A <a@b.c>  Mon, 01 Jan 2024 00:00:00 +0000\n"
    )
    with pytest.raises(PlanError, match=expected):
        read_source_info(tmp_path, "pkgdir")


def test_bad_changelog(tmp_path: Path) -> None:
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian" / "control").write_text("Source: xy\n\nPackage: xy\n")
    (tmp_path / "debian" / "changelog").write_text("garbage\n")
    with pytest.raises(PlanError, match="pkgdir: cannot read debian/changelog"):
        read_source_info(tmp_path, "pkgdir")


def _image(name: str, depends: tuple[str, ...] = (), **kw: object) -> ImageInfo:
    return ImageInfo(name=name, depends=depends, **kw)  # type: ignore[arg-type]


def test_image_steps_join_the_graph() -> None:
    plan = make_plan(
        [
            ("lib", _info("lib", ("lib-dev",)), "t-lib"),
            ("cli", _info("cli", ("cli",), ("lib-dev",)), "t-cli"),
        ],
        [("ctx", _image("app", ("cli",)), "t-app"), ("ctx2", _image("base"), "t-base")],
        {"lib": ("base",)},  # a package may wait for an image
    )
    assert plan.steps["app"].kind == "image" and plan.steps["app"].depends_on == ("cli",)
    assert plan.steps["lib"].depends_on == ("base",)
    assert plan.order() == ["base", "lib", "cli", "app"]
    assert plan.steps["base"].priority == 3


def test_unknown_depends_and_name_clash() -> None:
    with pytest.raises(PlanError, match=r"image app \(ctx\) depends on 'nope', which is neither"):
        make_plan([("lib", _info("lib", ("lib",)), "t")], [("ctx", _image("app", ("nope",)), "t")])
    with pytest.raises(PlanError, match=r"lib \(lib\) depends on 'nope'"):
        make_plan([("lib", _info("lib", ("lib",)), "t")], [], {"lib": ("nope",)})
    with pytest.raises(PlanError, match=r"image 'lib' .* has the name of a source package"):
        make_plan([("lib", _info("lib", ("lib",)), "t")], [("ctx", _image("lib"), "t")])
    with pytest.raises(PlanError, match="depends on itself"):
        make_plan([], [("ctx", _image("a", ("a",)), "t")])


def test_cycle_through_images_is_named() -> None:
    with pytest.raises(PlanError) as info:
        make_plan(
            [("lib", _info("lib", ("lib",)), "t")],
            [("c1", _image("img", ("lib",)), "t")],
            {"lib": ("img",)},
        )
    message = str(info.value)
    assert message.startswith("Build-Depends and depends form a cycle: ")
    assert "image img" in message and "lib" in message


def test_image_input_keys() -> None:
    def keys(
        tree: str = "ctx-1", lib: str = "lib-1", env: str = "buildah-1", **image: object
    ) -> dict[str, str]:
        plan = make_plan(
            [("lib", _info("lib", ("lib",)), lib), ("solo", _info("solo", ("solo",)), "t-solo")],
            [("ctx", _image("app", ("lib",), **image), tree)],
        )
        compute_input_keys(plan, "pkg-env", {"runner": "host"}, env, {"runner": "buildah"})
        return {n: s.input_key for n, s in plan.steps.items()}

    base = keys()
    assert base == keys()
    assert keys(tree="ctx-2")["app"] != base["app"]  # the Dockerfile is in the context tree
    assert keys(lib="lib-2")["app"] != base["app"]  # a rebuilt package it installs
    assert keys(env="buildah-2")["app"] != base["app"]  # another image builder
    assert keys(env="buildah-2")["lib"] == base["lib"]  # ... leaves packages alone
    assert keys(dockerfile="Dockerfile.prod")["app"] != base["app"]
    assert keys(builder="sysbox")["app"] != base["app"]
    assert keys(build_args=(("A", "1"),))["app"] != base["app"]
    assert keys(tree="ctx-2")["solo"] == base["solo"] and keys(tree="ctx-2")["lib"] == base["lib"]


def test_registry_components_are_valid_and_distinct() -> None:
    from buildfarm.model.images import image_prefix, registry_component
    from buildfarm.model.manifest import IMAGE_NAME

    names = ["main", "r/stx.9.0", "r_stx.9.0", "Main", "-x", "x-", "a.-b", "_5f", "x__5f", "ü"]
    escaped = [registry_component(n) for n in names]
    assert len(set(escaped)) == len(names)
    assert all(IMAGE_NAME.fullmatch(e) for e in escaped), escaped
    assert image_prefix("http://127.0.0.1:5000", "Proj", "r/one", 7) == "127.0.0.1:5000/x__50roj/r_2fone/7"


def test_build_depends_with_a_trailing_comma_as_debian_writes_them(tmp_path: Path) -> None:
    """minizip's debian/control ends Build-Depends with a comma; dpkg ignores empty entries."""
    debian = tmp_path / "debian"
    debian.mkdir()
    (debian / "control").write_text(
        "Source: minizip\nBuild-Depends:\n debhelper (>= 9),\n dh-autoreconf,\n zlib1g-dev,\n\n"
        "Package: minizip\nArchitecture: any\nDescription: x\n x\n"
    )
    (debian / "changelog").write_text(
        "minizip (1.1-8) unstable; urgency=medium\n\n  * x\n\n"
        " -- a <a@b.invalid>  Mon, 01 Jan 2024 00:00:00 +0000\n"
    )
    info = read_source_info(tmp_path, "minizip")
    assert info.build_depends == ("debhelper", "dh-autoreconf", "zlib1g-dev")


def test_the_architecture_of_the_binaries_is_read(tmp_path: Path) -> None:
    one = _source_dir(tmp_path, "aa", "Source: aa\n\nPackage: aa\nArchitecture: arm64\n")
    mixed = _source_dir(
        tmp_path, "bb", "Source: bb\n\nPackage: bb\nArchitecture: any\n\nPackage: bb-doc\nArchitecture: all\n"
    )
    assert read_source_info(one, "aa").architectures == ("arm64",)
    assert read_source_info(mixed, "bb").architectures == ("all", "any")
