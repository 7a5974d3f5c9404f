"""The client every command calls, whichever farm it reaches.

A farm URL configured (``--farm``, ``BUILDFARM_URL`` or the client file): that farm's REST API.
None: this machine's farm, the same API served by its API process on the owner socket, or
called in-process.  Either way one class,
:class:`HttpClient` over :class:`buildfarm_client.Client`, answers with the API's wire models
(:mod:`buildfarm_client.models`) and raises the farm's errors, so every command prints one way
and exits with one code.  The local farm's stack (the API, the engine, the database) is imported
only when it is called in-process.
"""

from __future__ import annotations

from buildfarm_cli.config import ClientConfig
from buildfarm_cli.httpclient import HttpClient

__all__ = ["FarmClient", "HttpClient", "make_client"]

FarmClient = HttpClient
"""What the commands call (one class: the local farm is an API too)."""


def make_client(config: ClientConfig, *, in_process: bool = False) -> FarmClient:
    """The REST API's client at the configured URL, else the local farm's: over its API process's
    owner socket, or in-process (when that does not answer, or ``in_process``)."""
    if config.url is not None:
        return HttpClient(config.url, config.token)
    return HttpClient.local_farm(in_process=in_process)
