"""The fake kubelet: each pod's containers run as local processes, their output its log.

Init containers run first and in order (the pod ``Pending`` meanwhile); one that fails fails the
pod (phase ``Failed``, its status terminated with its exit code and termination message) and the
build container never starts. A container's output becomes its log, its exit code its terminated
state, then the phase ``Succeeded``/``Failed`` (and, through the cluster, its Job's condition).
emptyDir volumes are per-pod host directories shared by the pod's containers: arguments naming a
mount path (or the termination message path) are rewritten to the host path.

``buildfarm-step package`` runs in a throw-away overlay of the root filesystem (``unshare -m`` +
overlayfs + chroot) without the host's apt sources, the way a pod starts from an image: apt
installs build dependencies into the overlay, never into the machine. ``buildfarm-step
fetch-context`` (the kaniko pod's init container, which writes only into its emptyDir) runs on the
host as it is. Images that cannot run here (kaniko, the sysbox dind image) run the stand-in
(imagebuilder.py).

``Kubelet`` is a mixin of ``FakeCluster`` (cluster.py), which holds the state it works on; make
e2e's ``PodmanCluster`` (ops/e2e/kubelet.py) overrides ``_volumes`` and ``_run_container`` to run
the containers with podman instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .objects import Obj, container_status, copy, now, terminated

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "buildtools" / "builder" / "buildfarm-step"
IMAGE_BUILDER = Path(__file__).resolve().with_name("imagebuilder.py")
LOG_WAIT_SECONDS = 1.0
"""How long a following log reader sleeps between checks for a deleted pod."""


@dataclass
class PodRun:
    """One pod's life in the fake kubelet: each started container's log, in start order."""

    logs: dict[str, list[str]] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)  # containers that exited
    done: bool = False  # the pod ended or was deleted
    process: subprocess.Popen[bytes] | None = None


class Kubelet:
    """Runs the pods of the cluster it is mixed into."""

    workdir: Path
    pods: dict[tuple[str, str], Obj]
    runs: dict[tuple[str, str], PodRun]
    gate: threading.Event  # while clear, pods run but their command does not start
    unpullable: set[str]  # images whose pull fails: the container waits, ErrImagePull
    lock: threading.Condition

    _status = staticmethod(container_status)

    def _pod_ended(self, key: tuple[str, str], code: int) -> None:
        """Told when a pod's last container exited with ``code`` (the Job controller's cue)."""
        raise NotImplementedError

    def _kubelet(self, key: tuple[str, str]) -> None:
        name = key[1]
        with self.lock:
            pod = self.pods.get(key)
            if pod is None:
                return
        spec = pod["spec"]
        main = spec["containers"][0]
        inits: list[Obj] = spec.get("initContainers") or []
        volumes = self._volumes(name, spec)
        init_statuses = [self._status(c, {"waiting": {"reason": "PodInitializing"}}) for c in inits]
        initializing = {"waiting": {"reason": "PodInitializing"}}
        for index, init in enumerate(inits):
            init_statuses[index] = self._status(init, {"running": {"startedAt": now()}})
            if not self._set_status(key, "Pending", init_statuses, self._status(main, initializing)):
                return
            if index == 0:
                self.gate.wait()  # a running container that has printed nothing yet
            outcome = self._run_container(key, init, volumes)
            if outcome is None:
                return
            code, message = outcome
            init_statuses[index] = self._status(init, {"terminated": terminated(code, message)})
            if code != 0:  # restartPolicy Never: the pod fails, its build container never starts
                self._finish(key, init_statuses, self._status(main, initializing), code)
                return
        if main["image"] in self.unpullable:  # the pod stays Pending, as a kubelet's would
            pulling = {"waiting": {"reason": "ErrImagePull", "message": f"pull of {main['image']} failed"}}
            self._set_status(key, "Pending", init_statuses, self._status(main, pulling))
            return
        running = self._status(main, {"running": {"startedAt": now()}})
        if not self._set_status(key, "Running", init_statuses, running):
            return
        if not inits:
            self.gate.wait()
        outcome = self._run_container(key, main, volumes)
        if outcome is None:
            return
        code, message = outcome
        self._finish(key, init_statuses, self._status(main, {"terminated": terminated(code, message)}), code)

    def _set_status(self, key: tuple[str, str], phase: str, inits: list[Obj], main: Obj) -> bool:
        with self.lock:
            pod = self.pods.get(key)
            if pod is None:
                return False
            pod["status"] = {"phase": phase, "startTime": now(), "containerStatuses": [main]}
            if inits:
                pod["status"]["initContainerStatuses"] = copy(inits)
            return True

    def _finish(self, key: tuple[str, str], inits: list[Obj], main: Obj, code: int) -> None:
        phase = "Succeeded" if code == 0 else "Failed"
        with self.lock:
            self.runs[key].done = True
            self.lock.notify_all()
        if not self._set_status(key, phase, inits, main):
            return
        self._pod_ended(key, code)

    def _volumes(self, pod_name: str, spec: Obj) -> dict[str, Path]:
        """The pod's emptyDirs as host directories (other volumes are not materialised)."""
        root = self.workdir / f"volumes-{pod_name}"
        found = {}
        for volume in spec.get("volumes") or []:
            if "emptyDir" in volume:
                found[volume["name"]] = root / volume["name"]
                found[volume["name"]].mkdir(parents=True, exist_ok=True)
        return found

    def _run_container(
        self, key: tuple[str, str], container: Obj, volumes: dict[str, Path]
    ) -> tuple[int, str] | None:
        """Run one container to its end: (exit code, termination message), None if deleted."""
        with self.lock:
            if key not in self.pods:
                return None
            run = self.runs[key]
            lines = run.logs.setdefault(container["name"], [])
        termination = self.workdir / f"termination-{key[1]}-{container['name']}"
        paths = {
            mount["mountPath"]: str(volumes[mount["name"]])
            for mount in container.get("volumeMounts") or []
            if mount["name"] in volumes
        }
        paths[container.get("terminationMessagePath", "/dev/termination-log")] = str(termination)
        command = self._command(container, termination, paths)
        env = {**os.environ, **{e["name"]: e.get("value", "") for e in container.get("env", [])}}
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        run.process = proc
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                with self.lock:
                    lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self.lock.notify_all()
        code = proc.wait()
        with self.lock:
            run.ended.add(container["name"])
            self.lock.notify_all()
            if key not in self.pods:
                return None
        return code, termination.read_text() if termination.exists() else ""

    def _command(self, container: Obj, termination: Path, paths: dict[str, str]) -> list[str]:
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv[:2] == ["buildfarm-step", "package"]:
            return self._sandboxed(argv[1:])
        argv = _rewrite_paths(argv, paths)
        if argv and argv[0] == "buildfarm-step":  # fetch-context: only its emptyDir is written
            return ["python3", str(ENTRYPOINT), *argv[1:]]
        # kaniko or the sysbox dind image: the stand-in, with the venv's Python
        return [sys.executable, str(IMAGE_BUILDER), str(termination), *argv]

    def _sandboxed(self, args: list[str]) -> list[str]:
        """buildfarm-step in a throw-away overlay of / without the host's apt sources."""
        root = Path(tempfile.mkdtemp(prefix="pod-", dir=self.workdir))
        for sub in ("upper", "work", "merged"):
            (root / sub).mkdir()
        script = (
            "set -e\n"
            f"mount -t overlay overlay -o lowerdir=/,upperdir={root}/upper,workdir={root}/work "
            f"{root}/merged\n"
            f"for d in proc dev sys tmp; do mount --rbind /$d {root}/merged/$d; done\n"
            f"exec chroot {root}/merged sh -c 'rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/*; "
            'exec "$@"\' pod /usr/bin/python3 "$@"\n'
        )
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "kubelet",
            str(ENTRYPOINT),
            *args,
        ]

    def started(self, namespace: str, pod: str, container: str) -> bool:
        with self.lock:
            run = self.runs.get((namespace, pod))
            return run is not None and container in run.logs

    def stream_log(self, namespace: str, pod: str, container: str, follow: bool) -> Iterator[str]:
        position = 0
        while True:
            with self.lock:
                run = self.runs.get((namespace, pod))
                if run is None or container not in run.logs:
                    return
                log = run.logs[container]
                while follow and position >= len(log) and container not in run.ended and not run.done:
                    self.lock.wait(LOG_WAIT_SECONDS)
                lines = log[position:]
                position += len(lines)
                finished = container in run.ended or run.done or not follow
            yield from lines
            if finished and position >= len(log):
                return


def _rewrite_paths(argv: list[str], paths: dict[str, str]) -> list[str]:
    """Each argument naming one of ``paths`` (whole, after ``=`` or a ``scheme://``) with its host
    path; one pass, longest path first, so a rewritten path is not rewritten again."""
    if not paths:
        return argv
    alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    pattern = re.compile(rf"(^|=|://)({alternatives})(?=/|$)")
    return [pattern.sub(lambda m: m.group(1) + paths[m.group(2)], arg) for arg in argv]
