"""Post-install check: sysbox is enabled, so its RuntimeClass must exist and a node must offer it.

Run by the sysbox-check hook Job with the runtime class name as argument. Talks to the
Kubernetes API with the pod's own ServiceAccount (read-only ClusterRole) using only the
standard library, so it runs in the farm image as it is.
"""

import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
API = "https://kubernetes.default.svc"


def get(path):
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    req = urllib.request.Request(API + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
        return json.load(resp)


def main(name):
    hint = (
        f"install sysbox on the build nodes (sysbox-deploy-k8s creates RuntimeClass {name!r} "
        "and labels the nodes it installed on), or set builders.sysbox.enabled=false"
    )
    try:
        rc = get(f"/apis/node.k8s.io/v1/runtimeclasses/{urllib.parse.quote(name)}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            print(
                f"sysbox check FAILED: builders.sysbox.enabled is true but RuntimeClass {name!r} "
                f"does not exist: {hint}",
                file=sys.stderr,
            )
            return 1
        raise
    selector = (rc.get("scheduling") or {}).get("nodeSelector") or {}
    query = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    nodes = get("/api/v1/nodes" + (f"?labelSelector={urllib.parse.quote(query)}" if query else ""))
    names = [n["metadata"]["name"] for n in nodes.get("items", [])]
    if not names:
        print(
            f"sysbox check FAILED: RuntimeClass {name!r} exists but no node matches its node "
            f"selector {query or '(none)'}: {hint}",
            file=sys.stderr,
        )
        return 1
    print(f"sysbox check: RuntimeClass {name!r} offered by {len(names)} node(s): {', '.join(names)}")
    return 0


sys.exit(main(sys.argv[1]))
