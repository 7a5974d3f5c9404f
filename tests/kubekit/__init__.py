"""A Kubernetes API test double with a fake kubelet: there is no API server on these machines.

``FakeCluster`` is a real HTTP server (stdlib ``ThreadingHTTPServer``) speaking exactly the part
of the Kubernetes API the farm uses — Jobs (create, read, list by label, delete with their pods),
pods (list by label, read, delete, log with ``follow``) and Secrets (create, read, list), plus the
discovery documents helm reads before a ``lookup`` — so the production code path runs unchanged:
the real ``kubernetes`` client, configured from a kubeconfig, over real HTTP.

One module per concern:

============== ==========================================================================
cluster.py     the state (Jobs, pods, Secrets), the Job controller, ``fake_cluster``
kubelet.py     the fake kubelet: containers as local processes, logs, emptyDirs
api.py         the HTTP routes onto the state, errors as the API's Status objects
discovery.py   the API groups and resources the double says it knows
objects.py     API objects as dicts: selectors, owners, container states, timestamps
imagebuilder.py the stand-in for kaniko and the sysbox image (stdlib only: make e2e copies it)
============== ==========================================================================

Tests import from here only: ``from kubekit import FakeCluster, fake_cluster``.
"""

from __future__ import annotations

from .cluster import FakeCluster, fake_cluster
from .kubelet import PodRun
from .objects import Obj

__all__ = ["FakeCluster", "Obj", "PodRun", "fake_cluster"]
