#!/bin/sh
# pulp_deb's AptReleaseSigningService script: the farm's only one.  ops/pulp/pulpstack.py copies
# it next to a local stack's GNUPGHOME; the Pulp image ships it as /usr/local/bin/buildfarm-sign-release
# for the chart.  Pulp runs it with the Release file's path and PULP_SIGNING_KEY_FINGERPRINT; it
# writes InRelease and Release.gpg beside that file (the task's working directory) and prints
# where they are, as JSON.
#
# GNUPGHOME: BUILDFARM_SIGNING_GNUPGHOME, else gnupg/ beside this script.  With
# BUILDFARM_SIGNING_KEY_FILE (the chart's Secret, mounted read-only) a home that lacks the key
# imports it first: every Pulp pod starts with an empty home in its own /tmp.
set -eu
GNUPGHOME=${BUILDFARM_SIGNING_GNUPGHOME:-$(dirname "$(readlink -f "$0")")/gnupg}
export GNUPGHOME
gpg="gpg --batch --no-tty --pinentry-mode error"
if [ -n "${BUILDFARM_SIGNING_KEY_FILE:-}" ] \
    && ! $gpg --list-secret-keys "$PULP_SIGNING_KEY_FINGERPRINT" >/dev/null 2>&1; then
    mkdir -p -m 0700 "$GNUPGHOME"
    $gpg --quiet --import "$BUILDFARM_SIGNING_KEY_FILE"
fi
release=$(readlink -f "$1")
dir=$(dirname "$release")
gpg="$gpg --yes --digest-algo SHA512 --local-user $PULP_SIGNING_KEY_FINGERPRINT"
$gpg --clearsign --output "$dir/InRelease" "$release"
$gpg --detach-sign --armor --output "$dir/Release.gpg" "$release"
printf '{"signatures": {"inline": "%s", "detached": "%s"}}\n' "$dir/InRelease" "$dir/Release.gpg"
