#!/usr/bin/env bash
# `make demo PROFILE=pulp`: the same example build as `make demo`, published through a real Pulp
# (pulpcore + pulp_deb, ops/pulp/pulpstack.py) with artifacts and logs on an S3 server (moto's:
# MinIO's server cannot be installed on these machines). Starts what it needs, leaves it running,
# and prints how to stop it (`make demo-stop PROFILE=pulp`).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STATE=${BUILDFARM_PULP_DEMO_DIR:-$ROOT/.farm-pulp}
BF=$ROOT/.venv/bin/buildfarm
PY=$ROOT/.venv/bin/python
mkdir -p "$STATE"

# PostgreSQL for Pulp's database: the machine's server on 127.0.0.1:5432 (started if installed but down).
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if [ "$(id -u)" = 0 ] && ls /etc/postgresql >/dev/null 2>&1; then
    echo "demo: starting the machine's PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "demo: no PostgreSQL on 127.0.0.1:5432 (apt-get install postgresql)" >&2; exit 1; }
fi
createdb -h 127.0.0.1 -U postgres pulp_demo 2>/dev/null || true

# The farm's signing key (made once, kept in $STATE/signing): Pulp's signing service signs every
# build publication with it, and apt checks the Release files against its public half.
KEY=$("$PY" - "$STATE/signing" <<'PYEOF'
import sys
from pathlib import Path
from buildfarm.backends.signing import HOME_NAME, generate_key, stop_agent
key = generate_key(Path(sys.argv[1]))
stop_agent(Path(sys.argv[1]) / HOME_NAME)
print(key)
PYEOF
)

echo "demo: starting Pulp (API, content app, worker; first time installs it into .venv-pulp, ~35 s) ..."
PULP_JSON=$(python3 ops/pulp/pulpstack.py start --dir "$STATE/pulp" --db-port 5432 --db-name pulp_demo \
  --signing-key-file "$KEY")
pulp() { printf '%s' "$PULP_JSON" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

if ! [ -s "$STATE/moto.port" ] || ! kill -0 "$(cat "$STATE/moto.pid" 2>/dev/null)" 2>/dev/null; then
  PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  nohup "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"; echo "$PORT" >"$STATE/moto.port"
  for _ in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null && break; sleep 0.2; done
fi
S3=127.0.0.1:$(cat "$STATE/moto.port")
"$PY" - "$S3" <<'PYEOF'
import sys
from minio import Minio
client = Minio(sys.argv[1], access_key="demo", secret_key="demo-secret", secure=False, region="us-east-1")
if not client.bucket_exists("buildfarm"):
    client.make_bucket("buildfarm")
PYEOF

export BUILDFARM_STATE_DIR=$STATE BUILDFARM_REPO_PORT=0 BUILDFARM_API_PORT=0
export BUILDFARM_REPOSITORY=pulp BUILDFARM_PULP_URL=$(pulp base_url) BUILDFARM_PULP_USERNAME=$(pulp username)
export BUILDFARM_PULP_PASSWORD_FILE=$(pulp password_file) BUILDFARM_PULP_CONTENT_ORIGIN=$(pulp content_origin)
export BUILDFARM_PULP_SIGNING_SERVICE=$(pulp signing_service)
# The demo's builds fetch Debian's packages through the local apt-cacher-ng: Pulp's package cache
# (production's) would first read the whole Debian index of the mirror into the demo's Pulp (minutes).
export BUILDFARM_PACKAGE_CACHE=proxy
export BUILDFARM_ARTIFACTS=s3 BUILDFARM_S3_ENDPOINT=$S3 BUILDFARM_S3_SECURE=false BUILDFARM_S3_REGION=us-east-1
export BUILDFARM_S3_BUCKET=buildfarm BUILDFARM_S3_ACCESS_KEY=demo BUILDFARM_S3_SECRET_KEY=demo-secret

"$BF" start --nodes 2
"$BF" build submit examples/buildfarm.yaml --wait
echo
echo "apt-get update + apt-get download of every package from Pulp, with a private apt configuration:"
"$BF" repo verify examples main
echo
echo "The APT sources line of examples/main (latest, served by Pulp's content app):"
"$BF" repo sources examples main
echo
"$BF" repo key >"$STATE/buildfarm.asc"
echo "The line names the farm's public key (\`buildfarm repo key\`, saved in $STATE/buildfarm.asc); apt users store it with:"
echo "  sudo install -m 644 $STATE/buildfarm.asc /etc/apt/keyrings/buildfarm.asc"
echo
echo "Farm, Pulp and S3 keep running (state in $STATE). Stop them with:  make demo-stop PROFILE=pulp"
