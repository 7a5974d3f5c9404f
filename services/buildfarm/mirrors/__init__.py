"""3rd-party mirrors as the CLI and the API see them: what is configured, usable, and sync
(:mod:`.views`); the configuration is :mod:`buildfarm.model.mirrors`, the work the repository
backend's.

What other packages may use is named here; the modules behind it are private to the package.
"""

from buildfarm.mirrors.views import list_mirrors, sync_mirror

__all__ = ["list_mirrors", "sync_mirror"]
