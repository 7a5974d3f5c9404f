"""``python -m buildfarm.api --host H --port P``: serve the API with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from buildfarm.api.app import create_app
from buildfarm.model.settings import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m buildfarm.api")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level="warning",
        access_log=False,
    )


main()
