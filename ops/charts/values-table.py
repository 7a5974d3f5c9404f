"""Generate the parameter table of charts/buildfarm/README.md from the comments in values.yaml.

Every key of values.yaml carries a `# -- description` comment on the line(s) above it; the
table is made from those comments and the values themselves, so nothing is typed twice. A
key whose children are not commented (e.g. `resources`, `nodeSelector`) is one parameter whose
default is its whole value. An uncommented key anywhere else is an error.

    values-table.py          rewrite the table in the README
    values-table.py --check  fail if the README's table is not the generated one
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "charts" / "buildfarm" / "values.yaml"
README = ROOT / "charts" / "buildfarm" / "README.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+):(?:\s|$)")


class UndocumentedKey(Exception):
    pass


def parse_comments(text: str) -> list[tuple[tuple[str, ...], str | None]]:
    """(path, description or None) for every block-style key, in file order."""
    found: list[tuple[tuple[str, ...], str | None]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match:
            pending = [] if not stripped else pending
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        found.append((tuple(k for _, k in stack), " ".join(pending) if pending else None))
        pending = []
    return found


def rows() -> list[tuple[str, str, str]]:
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    keys = parse_comments(text)
    documented = {path: desc for path, desc in keys if desc is not None}
    leaves: set[tuple[str, ...]] = set()
    for path, desc in keys:
        if desc is not None:
            continue
        parent = path[:-1]
        if parent not in documented:
            raise UndocumentedKey(f"{VALUES.name}: key {'.'.join(path)} has no '# --' comment")
        leaves.add(parent)
    table = []
    for path, desc in keys:
        if desc is None or any(path[:i] in leaves for i in range(1, len(path))):
            continue
        value = values
        for part in path:
            value = value[part]
        is_section = isinstance(value, dict) and value and path not in leaves
        default = "" if is_section else f"`{json.dumps(value)}`"
        table.append((".".join(path), desc, default))
    return table


def render() -> str:
    lines = [START, "", "| parameter | description | default |", "|---|---|---|"]
    for key, desc, default in rows():
        cells = [f"`{key}`", desc, default]
        lines.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the README is current")
    args = parser.parse_args()
    try:
        table = render()
    except UndocumentedKey as exc:
        print(f"values-table: {exc}", file=sys.stderr)
        return 1
    readme = README.read_text()
    if START not in readme or END not in readme:
        print(f"values-table: {README} lacks the {START} / {END} markers", file=sys.stderr)
        return 1
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = head + table + tail
    if args.check:
        if updated != readme:
            print(
                f"values-table: {README.relative_to(ROOT)} is out of date; run "
                "`.venv-charts/bin/python ops/charts/values-table.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
