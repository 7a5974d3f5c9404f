#!/bin/sh
# Registers the farm's AptReleaseSigningService in the chart's Pulp (the pulp-signing hook Job):
#   buildfarm-add-signing-service NAME KEY_FILE
# KEY_FILE is the armored secret key (no passphrase) of the mounted Secret.  The service runs
# buildfarm-sign-release (sign-release.sh), which imports that same file in each Pulp pod.
# Idempotent: a service of that name with the same key is kept.  Pulp's publications hold on to
# their signing service, so a service with another key is not replaced: one clear line, exit 1.
set -eu
name=$1
key_file=$2
export GNUPGHOME=${BUILDFARM_SIGNING_GNUPGHOME:-/tmp/gnupg}
gpg="gpg --batch --no-tty --pinentry-mode error"
if [ ! -r "$key_file" ]; then
    echo "buildfarm-add-signing-service: cannot read the signing key $key_file" >&2
    exit 1
fi
fingerprint=$($gpg --with-colons --import-options show-only --import "$key_file" 2>/dev/null \
    | awk -F: '$1 == "fpr" { print $10; exit }')
if [ -z "$fingerprint" ]; then
    echo "buildfarm-add-signing-service: $key_file holds no OpenPGP key" >&2
    exit 1
fi
registered=$(BUILDFARM_SIGNING_SERVICE=$name pulpcore-manager shell -c "
import os
from pulp_deb.app.models import AptReleaseSigningService
found = AptReleaseSigningService.objects.filter(name=os.environ['BUILDFARM_SIGNING_SERVICE']).first()
print(found.pubkey_fingerprint if found else '-')
" | tail -n 1)
if [ "$registered" = "$fingerprint" ]; then
    echo "signing service $name: key $fingerprint is registered already"
    exit 0
fi
if [ "$registered" != "-" ]; then
    echo "buildfarm-add-signing-service: signing service $name signs with key $registered, not" \
        "$fingerprint from $key_file; Pulp keeps a service its publications used: restore that key" >&2
    exit 1
fi
mkdir -p -m 0700 "$GNUPGHOME"
$gpg --quiet --import "$key_file"
# Pulp signs a test file with the script and checks the signature with the key from GNUPGHOME.
BUILDFARM_SIGNING_GNUPGHOME=$GNUPGHOME BUILDFARM_SIGNING_KEY_FILE=$key_file \
    pulpcore-manager add-signing-service "$name" "$(command -v buildfarm-sign-release)" "$fingerprint" \
    --class deb:AptReleaseSigningService --home "$GNUPGHOME"
echo "signing service $name: registered with key $fingerprint"
