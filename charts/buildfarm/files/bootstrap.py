"""Bootstrap hook: migrations and the first admin (`buildfarm admin init`), its token kept in a Secret,
then the configured projects. Idempotent: every step may run again on each upgrade.

`buildfarm admin init` runs the Alembic migrations first, then creates the admin once; on a farm
that already has one it says so and changes nothing. The token is printed only once, so it is
stored at once in the Secret named in argv[1] (in this pod's namespace), through the Kubernetes
API with this Job's own ServiceAccount, which may create that Secret and nothing else.
"""

import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
API = "https://kubernetes.default.svc"


def kube(method, path, body=None):
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        API + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
        return json.load(resp)


def main(secret_name, admin_user, projects):
    with open(f"{SA}/namespace") as f:
        namespace = f.read().strip()
    init = subprocess.run(
        ["buildfarm", "--output", "json", "admin", "init", "--name", admin_user],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode == 0:
        created = json.loads(init.stdout)
        kube(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret_name, "labels": {"app.kubernetes.io/part-of": "buildfarm"}},
                "type": "Opaque",
                "data": {
                    "token": base64.b64encode(created["token"].encode()).decode(),
                    "user": base64.b64encode(created["user"].encode()).decode(),
                },
            },
        )
        print(f"bootstrap: admin {created['user']!r} created; token stored in Secret {secret_name}")
    elif "already has an admin" in init.stderr:
        print("bootstrap: migrations applied; the farm already has an admin")
    else:
        sys.stderr.write(init.stderr)
        print(f"bootstrap FAILED: buildfarm admin init exited {init.returncode}", file=sys.stderr)
        return 1
    for project in projects:
        add = subprocess.run(
            ["buildfarm", "admin", "project", "add", project], capture_output=True, text=True, check=False
        )
        if add.returncode != 0 and "already exists" not in add.stderr:
            sys.stderr.write(add.stderr)
            print(f"bootstrap FAILED: project {project!r} could not be created", file=sys.stderr)
            return 1
        print(f"bootstrap: project {project!r} present")
    return 0


sys.exit(
    main(
        sys.argv[1],
        os.environ.get("BUILDFARM_ADMIN_USER", "admin"),
        json.loads(os.environ.get("BUILDFARM_PROJECTS", "[]")),
    )
)
