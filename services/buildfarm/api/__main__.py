"""``python -m buildfarm.api --host H --port P``: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import uvicorn

from buildfarm.api.app import create_app
from buildfarm.dispatch.context import make_context
from buildfarm.engine import srcpkg
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.settings import Settings, settings_at_start

log = logging.getLogger(__name__)

QUIET: dict[str, Any] = {"log_level": "warning", "access_log": False}
"""uvicorn's options of every farm server: warnings only, no access log (the API logs its own)."""


def address_arguments(prog: str, argv: list[str] | None) -> argparse.Namespace:
    """An API process's command line: ``--host`` and ``--port`` (else the settings')."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    return parser.parse_args(argv)


def network_config(app: Any, args: argparse.Namespace, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration of the API on the network, at the command line's address."""
    host, port = args.host or settings.api.host, args.port or settings.api.port
    return uvicorn.Config(app, host=host, port=port, **QUIET)


def warm_up(ctx: FarmContext) -> None:
    """What an API process pays once, paid as it starts, not by its first submit: the packing
    Perls start loading (:func:`buildfarm.engine.srcpkg.warm_up`), and the broker is reached
    with what sending needs made (the first release of a fresh farm's first build waited
    0.1-0.15 s more for it).  A broker down now only leaves that to the first submit, which
    says so."""
    srcpkg.warm_up()
    try:
        ctx.dispatcher.check()
    except BuildfarmError as exc:
        log.warning("the broker is not reached yet: %s", exc)


def main(argv: list[str] | None = None) -> None:
    args = address_arguments("python -m buildfarm.api", argv)
    settings = settings_at_start()
    ctx = make_context(settings)
    app = create_app(settings, ctx)
    warm_up(ctx)
    uvicorn.Server(network_config(app, args, settings)).run()


if __name__ == "__main__":
    main()
