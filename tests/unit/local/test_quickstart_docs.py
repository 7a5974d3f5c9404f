"""The README's quick start names the Debian packages ``make demo``/``make test`` install: the same
list as ``ops/bootstrap/apt-deps.sh`` (a package added to the script and not to the README, or the
other way round, leaves a fresh machine's reader with the wrong list)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _script_packages() -> set[str]:
    text = (ROOT / "ops" / "bootstrap" / "apt-deps.sh").read_text()
    body = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M)
    assert body is not None, "apt-deps.sh has no packages=( ... ) array"
    words = " ".join(line.split("#", 1)[0] for line in body.group(1).splitlines()).split()
    conditional = re.findall(r"packages\+=\(([^)]*)\)", text)
    return set(words) | {w for group in conditional for w in group.split()}


def _readme_packages() -> set[str]:
    text = (ROOT / "README.md").read_text()
    bullet = re.search(
        r"^- \*\*Debian packages\*\* \(`ops/bootstrap/apt-deps.sh`\):(.*?)(?=^- \*\*)", text, re.S | re.M
    )
    assert bullet is not None, "README.md's quick start has no 'Debian packages' item"
    listing = bullet.group(1).split(" when ", 1)[0]  # the packages, then what the script does
    spans = re.findall(r"`([^`]*)`", listing)
    return {word for span in spans for word in span.split()}


def test_readme_lists_the_packages_apt_deps_installs() -> None:
    script, readme = _script_packages(), _readme_packages()
    assert "sbuild" in script and "python3-venv" in script  # the parser found both kinds of entries
    assert readme == script, (
        f"only in apt-deps.sh: {sorted(script - readme)}; only in README: {sorted(readme - script)}"
    )


def test_readme_names_every_command_make_demo_runs() -> None:
    """``make demo`` (local profile) runs buildfarm commands; "The local farm" names each one."""
    makefile = (ROOT / "Makefile").read_text()
    local = makefile.split("\nelse\n", 1)[1].split("\nendif\n", 1)[0]  # the PROFILE=local branch
    recipe = local.split("\ndemo:", 1)[1]
    commands = [line.strip().split(" | ")[0] for line in recipe.splitlines() if line.startswith("\t$(BF) ")]
    defaults = dict(re.findall(r"^(\w+) \?= ?(\S*)$", makefile, re.MULTILINE))  # DEMO_RUNNER ?=

    def expand(match: re.Match[str]) -> str:
        """$(VAR) as its default; $(VAR:%=--flag %) is the flag only when VAR has a value."""
        if match[1] not in defaults:
            return match[0]
        value = defaults[match[1]]
        return value if match[2] is None else (match[2].replace("%", value) if value else "")

    commands = [re.sub(r"\$\((\w+)(?::%=([^)]*))?\)", expand, c).strip() for c in commands]
    assert len(commands) >= 3, f"the demo recipe's commands: {commands}"  # start, build submit, ...
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The local farm\n", 1)[1].split("\n## ", 1)[0]
    prose = " ".join(section.split())  # a command may wrap across lines
    for command in commands:
        assert f"`{command.replace('$(BF)', 'buildfarm')}" in prose, (
            f"README's 'The local farm' omits {command}"
        )
