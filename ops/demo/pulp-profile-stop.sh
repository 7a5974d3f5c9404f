#!/usr/bin/env bash
# Stops what `make demo PROFILE=pulp` started: the farm, Pulp and the S3 server.
set -uo pipefail
cd "$(dirname "$0")/../.."
STATE=${BUILDFARM_PULP_DEMO_DIR:-$PWD/.farm-pulp}
BUILDFARM_STATE_DIR=$STATE .venv/bin/buildfarm stop
python3 ops/pulp/pulpstack.py stop --dir "$STATE/pulp"
if [ -s "$STATE/moto.pid" ]; then kill "$(cat "$STATE/moto.pid")" 2>/dev/null; rm -f "$STATE/moto.pid" "$STATE/moto.port"; fi
echo "stopped the farm, Pulp and the S3 server of $STATE"
