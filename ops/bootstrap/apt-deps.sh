#!/usr/bin/env bash
# Install the Debian packages that `make demo` and `make test` need, and give root a subuid/subgid
# range (sbuild's unshare mode needs one; /etc/subuid is empty on a fresh machine).
#
# Idempotent and fast when everything is present: one dpkg-query call, no apt-get.
# As non-root it installs nothing: it prints the exact apt-get command and exits 1.
set -euo pipefail

packages=(
  dpkg-dev debhelper fakeroot build-essential apt-utils  # plain package builds
  sbuild mmdebstrap uidmap                               # clean builds in unshare mode
  redis-server postgresql                                # broker and build state (tests start private ones)
  buildah docker-registry skopeo                         # image steps: daemonless builds, the local registry
  podman runc netavark aardvark-dns                      # make e2e: the chart's pods as containers (crun fails here)
  iptables                                               # netavark needs it for every podman network (else "netavark: No such file or directory")
  git ca-certificates curl
  git-buildpackage pristine-tar                          # git: layout: gbp (gbp export-orig, pristine-tar)
  patch                                                  # stx: StarlingX patches/ and deb_patches/ series
  gnupg                                                  # gpg signs the published Release files (the farm key)
  gpgv                                                   # mirror keys: the local profile verifies Release files
  apt-cacher-ng                                          # the local farm's package cache (issue 15): each .deb fetched once
  chromium                                               # the dashboard's browser tests (Playwright drives it)
)

# Debian's own python3 cannot create a virtualenv without python3-venv (no ensurepip wheels).
# A python3 from elsewhere (pyenv, a container image) brings its own.
if [ "$(python3 -c 'import sys; print(sys.base_prefix)' 2>/dev/null || true)" = "/usr" ]; then
  packages+=(python3-venv)
fi

installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null \
  | awk '$NF == "installed" {print $1}' || true)
missing=()
for pkg in "${packages[@]}"; do
  grep -qxF "$pkg" <<<"$installed" || missing+=("$pkg")
done

install_cmd=(apt-get install -y --no-install-recommends "${missing[@]}")

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "apt-deps: missing Debian packages: ${missing[*]}" >&2
    echo "apt-deps: run as root (or with sudo):" >&2
    echo "  sudo apt-get update && sudo ${install_cmd[*]}" >&2
    exit 1
  fi
  echo "apt-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -o Dpkg::Use-Pty=0 -qq "${install_cmd[@]:1}" </dev/null
fi

# A subordinate id range for root, placed after every range already handed out so it never
# overlaps another user's.
ensure_root_range() {
  local file=$1 start
  if [ -f "$file" ] && grep -q '^root:' "$file"; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "apt-deps: note: $file has no 'root:' range; sbuild unshare mode as root needs one" >&2
    return 0
  fi
  start=100000
  if [ -f "$file" ]; then
    start=$(awk -F: -v min=100000 'NF == 3 { end = $2 + $3; if (end > min) min = end } END { print min }' "$file")
  fi
  echo "root:${start}:65536" >>"$file"
  echo "apt-deps: added root:${start}:65536 to $file (sbuild unshare mode needs a subordinate id range)"
}
ensure_root_range /etc/subuid
ensure_root_range /etc/subgid
