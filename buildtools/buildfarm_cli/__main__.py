"""``python -m buildfarm_cli``: the same as the ``buildfarm`` command."""

from buildfarm_cli.main import run

run()
