"""A mirror's host is the admin's choice; where it redirects is not (issue 11).

A loopback HTTP server in a thread plays the upstream; ~0.2 s.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from buildfarm.backends.upstream import check_upstream
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import MirrorConfig
from buildfarm.model.urlpolicy import UrlPolicy

from httpkit import Redirecting, redirecting


@pytest.fixture
def upstream() -> Iterator[Redirecting]:
    with redirecting() as server:
        yield server


@pytest.mark.parametrize("target", ["http://169.254.169.254", "http://10.0.0.1", "http://127.0.0.2:1"])
def test_a_mirror_redirecting_to_a_forbidden_host_is_refused(upstream: Redirecting, target: str) -> None:
    upstream.target = target
    mirror = MirrorConfig(name="m", url=f"http://127.0.0.1:{upstream.port}/debian", distribution="bookworm")
    with pytest.raises(PermanentError, match="redirects to a host the farm does not fetch from"):
        check_upstream(mirror, timeout=5)
    allowed = UrlPolicy.parse(["https"], ["127.0.0.2"])  # an admin allows it: followed (and fails there)
    if target.startswith("http://127.0.0.2"):
        with pytest.raises(Exception, match="cannot be reached"):
            check_upstream(mirror, timeout=5, policy=allowed)
