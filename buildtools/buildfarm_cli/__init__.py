"""The ``buildfarm`` command: parses, calls the farm, prints. The work happens in ``buildfarm``."""
