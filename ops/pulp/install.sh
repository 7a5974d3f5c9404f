#!/usr/bin/env bash
# Install the Pulp server (pulpcore + pulp_deb) into its own virtualenv, .venv-pulp.
#
# Pulp pins Django, its own psycopg, pydantic, redis, ... : installed into the farm's .venv it
# would move the farm's dependencies, so the server lives apart and only the client libraries
# (pulp-glue, pulp-glue-deb) are farm dependencies.  The test fixtures (tests/pulpkit.py)
# and `make demo PROFILE=pulp` run this when .venv-pulp is missing.
#
# Idempotent: a stamp inside the venv records the hash of requirements.txt; the same file
# installed before means nothing to do (removing .venv-pulp forgets it).
#
#   PYTHON=python3 ops/pulp/install.sh [VENV_DIR]     (default VENV_DIR: <repo>/.venv-pulp)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.venv-pulp}"
python="${PYTHON:-python3}"
requirements="$here/requirements.txt"
stamp="$venv/.stamp-pulp-requirements"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/pulpcore-manager" ]; then
  exit 0
fi

started=$SECONDS
if [ ! -x "$venv/bin/pip" ]; then
  echo "pulp: creating $venv with $python"
  rm -rf "$venv"
  "$python" -m venv "$venv" || {
    echo "pulp: '$python -m venv' failed; on Debian install python3-venv (make deps does)" >&2
    rm -rf "$venv"; exit 1; }
fi
# Every package pinned (requirements.txt is the full set pip resolved for pulpcore + pulp-deb):
# a new release of one of Pulp's dependencies cannot break a fresh machine's install.
"$venv/bin/pip" install --disable-pip-version-check --progress-bar off -q -r "$requirements"
echo "$want" >"$stamp"
echo "pulp: installed pulpcore + pulp_deb into $venv in $((SECONDS - started))s"
