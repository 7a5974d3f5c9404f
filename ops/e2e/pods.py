"""One Kubernetes pod spec as `podman run` arguments: what a kubelet would give the container.

Modelled as Kubernetes does it: env (``envFrom`` first, then ``env`` in order, ``$(VAR)``
expanded from what came before, ``valueFrom`` Secret/ConfigMap keys and the downward API), the
command and args (``$(VAR)`` expanded from the container's env), volumes (emptyDir as a host
directory — a tmpfs of its ``sizeLimit`` when it has one, so an undersized one fills up as on a
node; Secret and ConfigMap volumes as read-only files with ``items`` and ``subPath``; PVCs as
host directories that outlive the pod), the securityContext (user and group, ``fsGroup`` as an
extra group owning the volumes, read-only root filesystem, dropped and added capabilities,
``allowPrivilegeEscalation``, ``runAsNonRoot`` checked against the image's user), resources
(memory and CPU limits) and the service-account token when the pod mounts one.
Not modelled: scheduling, admission, runtime classes, seccomp profiles other than podman's default.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")
_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 1000**2, "G": 1000**3}


class PodError(Exception):
    """The pod cannot start (Kubernetes would show CreateContainerConfigError or similar)."""


def quantity_bytes(value: str | int) -> int:
    text = str(value)
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def cpu_cores(value: str | int | float) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: unknown references stay as they are, ``$$`` escapes."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(one, text)


@dataclass
class Objects:
    """The namespaced objects a kubelet reads: Secrets and ConfigMaps by (namespace, name)."""

    secrets: dict[tuple[str, str], Obj] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], Obj] = field(default_factory=dict)

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        secret = self.secrets.get((namespace, name))
        if secret is None:
            raise PodError(f'secret "{name}" not found')
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
        return data

    def config_map_data(self, namespace: str, name: str) -> dict[str, bytes]:
        config_map = self.config_maps.get((namespace, name))
        if config_map is None:
            raise PodError(f'configmap "{name}" not found')
        data = {k: v.encode() for k, v in (config_map.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (config_map.get("binaryData") or {}).items()})
        return data


@dataclass
class PodContext:
    """Where one pod lives: its namespace, name, node and the host directories of its volumes."""

    namespace: str
    name: str
    node: str
    root: Path  # the pod's own directory (emptyDirs, Secret/ConfigMap files)
    claims: Path  # where PVCs live (they outlive pods)
    objects: Objects
    service_account: Path | None = None  # a directory with token, ca.crt, namespace
    api_env: dict[str, str] = field(default_factory=dict)  # KUBERNETES_SERVICE_HOST/PORT


def container_env(container: Obj, ctx: PodContext, pod_ip: str = "") -> dict[str, str]:
    env: dict[str, str] = dict(ctx.api_env)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            try:
                data = ctx.objects.config_map_data(ctx.namespace, ref["name"])
            except PodError:
                if ref.get("optional"):
                    continue
                raise
        else:
            ref = source["secretRef"]
            try:
                data = ctx.objects.secret_data(ctx.namespace, ref["name"])
            except PodError:
                if ref.get("optional"):
                    continue
                raise
        env.update({prefix + k: v.decode() for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source or "configMapKeyRef" in source:
            ref = source.get("secretKeyRef") or source["configMapKeyRef"]
            try:
                data = (
                    ctx.objects.secret_data(ctx.namespace, ref["name"])
                    if "secretKeyRef" in source
                    else ctx.objects.config_map_data(ctx.namespace, ref["name"])
                )
                if ref["key"] not in data:
                    raise PodError(f"couldn't find key {ref['key']} in {ref['name']}")
                env[name] = data[ref["key"]].decode()
            except PodError:
                if ref.get("optional"):
                    continue
                raise
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            values = {
                "metadata.name": ctx.name,
                "metadata.namespace": ctx.namespace,
                "spec.nodeName": ctx.node,
                "status.podIP": pod_ip,
                "status.hostIP": pod_ip,
            }
            if path not in values:
                raise PodError(f"fieldRef {path} is not modelled")
            env[name] = values[path]
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            limits = (container.get("resources") or {}).get("limits") or {}
            _, _, what = resource.partition(".")
            env[name] = str(limits.get(what, "0"))
        else:
            raise PodError(f"env {name}: valueFrom {sorted(source)} is not modelled")
    return env


def _write_files(target: Path, data: dict[str, bytes], volume: Obj, mode_key: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    items = volume.get("items")
    default_mode = volume.get("defaultMode", 0o644)
    chosen = (
        [(i["key"], i["path"], i.get("mode", default_mode)) for i in items]
        if items
        else [(k, k, default_mode) for k in data]
    )
    for key, rel, mode in chosen:
        if key not in data:
            if volume.get("optional"):
                continue
            raise PodError(f"{mode_key} volume: no key {key}")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(mode)


def prepare_volumes(spec: Obj, ctx: PodContext, fs_group: int | None) -> dict[str, Path]:
    """Each pod volume as a host directory (made once per pod; PVC directories are kept)."""
    found: dict[str, Path] = {}
    for volume in spec.get("volumes") or []:
        name = volume["name"]
        if "emptyDir" in volume:
            path = ctx.root / "volumes" / name
            if not path.exists():
                path.mkdir(parents=True)
                limit = (volume["emptyDir"] or {}).get("sizeLimit")
                medium = (volume["emptyDir"] or {}).get("medium")
                if limit or medium == "Memory":
                    size = f",size={quantity_bytes(limit)}" if limit else ""
                    subprocess.run(
                        ["mount", "-t", "tmpfs", "-o", f"mode=0777{size}", "tmpfs", str(path)], check=True
                    )
                path.chmod(0o777)
            found[name] = path
        elif "persistentVolumeClaim" in volume:
            path = ctx.claims / volume["persistentVolumeClaim"]["claimName"]
            if not path.exists():
                path.mkdir(parents=True)
                path.chmod(0o777 if fs_group is None else 0o2775)
            if fs_group is not None:
                _chgrp_tree(path, fs_group)
            found[name] = path
        elif "secret" in volume:
            path = ctx.root / "volumes" / name
            data = ctx.objects.secret_data(ctx.namespace, volume["secret"]["secretName"])
            _write_files(path, data, volume["secret"], "secret")
            found[name] = path
        elif "configMap" in volume:
            path = ctx.root / "volumes" / name
            data = ctx.objects.config_map_data(ctx.namespace, volume["configMap"]["name"])
            _write_files(path, data, volume["configMap"], "configMap")
            found[name] = path
        else:
            raise PodError(f"volume {name}: {sorted(k for k in volume if k != 'name')} is not modelled")
        if fs_group is not None and ("emptyDir" in volume or "secret" in volume or "configMap" in volume):
            _chgrp_tree(found[name], fs_group)
    return found


def _chgrp_tree(path: Path, gid: int) -> None:
    """What fsGroup does to a volume: group-owned by the gid, setgid directories."""
    subprocess.run(["chgrp", "-R", str(gid), str(path)], check=True)
    for directory in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        directory.chmod(directory.stat().st_mode | 0o2070)


def image_user(podman: list[str], image: str) -> str:
    done = subprocess.run(
        [*podman, "image", "inspect", "--format", "{{.Config.User}}", image],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise PodError(f"image {image}: not found locally (ErrImageNeverPull): {done.stderr.strip()}")
    return done.stdout.strip()


def run_args(
    podman: list[str], spec: Obj, container: Obj, ctx: PodContext, volumes: dict[str, Path]
) -> tuple[list[str], dict[str, str]]:
    """The `podman run` options (without the image and argv) and the container's env."""
    pod_sc: Obj = spec.get("securityContext") or {}
    sc: Obj = {**pod_sc, **(container.get("securityContext") or {})}
    env = container_env(container, ctx)
    args: list[str] = ["--hostname", ctx.name, "--pull", "never"]
    uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
    if uid is not None:
        args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
    if sc.get("runAsNonRoot"):
        effective = str(uid) if uid is not None else image_user(podman, container["image"]).split(":")[0]
        if not effective.isdigit():
            raise PodError(
                f"container {container['name']}: runAsNonRoot and image has non-numeric user ({effective!r})"
            )
        if int(effective) == 0:
            raise PodError(f"container {container['name']}: runAsNonRoot and image will run as root")
    groups = [
        *([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else []),
        *(pod_sc.get("supplementalGroups") or []),
    ]
    for group in groups:
        args += ["--group-add", str(group)]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = sc.get("capabilities") or {}
    for cap in capabilities.get("drop") or []:
        args += ["--cap-drop", cap.lower() if cap != "ALL" else "all"]
    for cap in capabilities.get("add") or []:
        args += ["--cap-add", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("privileged"):
        args += ["--privileged"]
    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        args += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", f"{cpu_cores(limits['cpu']):g}"]
    for mount in container.get("volumeMounts") or []:
        source = volumes.get(mount["name"])
        if source is None:
            raise PodError(f"container {container['name']}: volume {mount['name']} not found")
        if mount.get("subPath"):
            source = source / mount["subPath"]
        options = "ro" if mount.get("readOnly") or _read_only_volume(spec, mount["name"]) else "rw"
        args += ["--volume", f"{source}:{mount['mountPath']}:{options}"]
    if ctx.service_account is not None:
        args += ["--volume", f"{ctx.service_account}:/var/run/secrets/kubernetes.io/serviceaccount:ro"]
    termination = container.get("terminationMessagePath", "/dev/termination-log")
    term_file = ctx.root / f"termination-{container['name']}"
    term_file.touch()
    term_file.chmod(0o666)
    args += ["--volume", f"{term_file}:{termination}:rw"]
    if container.get("workingDir"):
        args += ["--workdir", container["workingDir"]]
    args += env_args(env, ctx.root / f"env-{container['name']}")
    return args, env


def env_args(env: dict[str, str], path: Path) -> list[str]:
    """The container's environment as podman options: in an env file only its user can read
    (0600), not on podman's command line, where every user of the host sees it (``ps``) and
    where it would show database and S3 passwords.  An env file holds one line a variable."""
    multiline = sorted(key for key, value in env.items() if "\n" in value)
    if multiline:
        raise PodError(
            f"env {', '.join(multiline)}: a value of more than one line (podman's env file holds one)"
        )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write("".join(f"{key}={value}\n" for key, value in env.items()))
    return ["--env-file", str(path)]


def _read_only_volume(spec: Obj, name: str) -> bool:
    """Secret and ConfigMap volumes are always mounted read-only by the kubelet."""
    for volume in spec.get("volumes") or []:
        if volume["name"] == name:
            return "secret" in volume or "configMap" in volume
    return False


def command_line(container: Obj, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(--entrypoint override or [], argv after the image): command replaces the entrypoint."""
    command = [expand(c, env) for c in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    if command:
        return ["--entrypoint", json.dumps(command)], args
    return [], args
