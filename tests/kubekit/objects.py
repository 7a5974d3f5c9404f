"""Kubernetes API objects as the double keeps them: plain JSON dicts, as the API server sends them.

Label selectors (equality terms only, what the farm sends), owner references, timestamps and the
container states a kubelet reports.
"""

from __future__ import annotations

import json
import time
from typing import Any

Obj = dict[str, Any]


def now() -> str:
    """The current time as the API writes timestamps (RFC 3339, UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def copy(obj: Any) -> Any:
    """A deep copy through JSON: what a client gets is never the double's own object."""
    return json.loads(json.dumps(obj))


def matches(obj: Obj, selector: str) -> bool:
    """Whether ``obj``'s labels match a label selector of ``key=value`` terms (others refused)."""
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, sep, value = term.partition("=")
        if not sep or "!" in key:
            raise ValueError(f"unsupported label selector term {term!r}")
        if labels.get(key) != value:
            return False
    return True


def owner(pod: Obj) -> str | None:
    """The name of the object owning ``pod`` (its Job), if any."""
    refs = pod["metadata"].get("ownerReferences") or []
    return refs[0]["name"] if refs else None


def container_status(container: Obj, state: Obj) -> Obj:
    """A pod's status entry for ``container`` in ``state`` (``waiting``, ``running``, ``terminated``)."""
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": "running" in state,
        "restartCount": 0,
        "state": state,
    }


def terminated(code: int, message: str) -> Obj:
    """A container's ``terminated`` state: its exit code and termination message."""
    return {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "message": message,
        "startedAt": now(),
        "finishedAt": now(),
    }
