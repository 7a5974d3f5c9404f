"""``python -m buildfarm.api --host H --port P``: serve the API with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from buildfarm.api.app import create_app
from buildfarm.engine import srcpkg
from buildfarm.model.settings import Settings, settings_at_start

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


def main(argv: list[str] | None = None) -> None:
    args = address_arguments("python -m buildfarm.api", argv)
    settings = settings_at_start()
    app = create_app(settings)
    srcpkg.warm_up()  # the packing Perls load while the server starts: returns at once
    uvicorn.Server(network_config(app, args, settings)).run()


if __name__ == "__main__":
    main()
