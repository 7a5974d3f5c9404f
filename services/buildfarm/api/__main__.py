"""``python -m buildfarm.api --host H --port P``: serve the API with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from buildfarm.api.app import create_app
from buildfarm.model.settings import settings_at_start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m buildfarm.api")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    settings = settings_at_start()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host or settings.api.host,
        port=args.port or settings.api.port,
        log_level="warning",
        access_log=False,
    )


main()
