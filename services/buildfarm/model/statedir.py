"""Where this machine's farm keeps everything, known before any setting is read.

``BUILDFARM_STATE_DIR``, else ``.farm``: the default of the ``state_dir`` setting
(:mod:`buildfarm.model.settings`), and all the CLI needs to find a running farm's owner socket
when the environment sets nothing else (:meth:`buildfarm_cli.httpclient.HttpClient.local_farm`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

STATE_DIR_VARIABLE = "BUILDFARM_STATE_DIR"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_VARIABLE, ".farm")).resolve()


def sets_nothing_else(environ: Mapping[str, str]) -> bool:
    """No ``BUILDFARM_*`` variable in ``environ`` (any case, as the settings read them) but
    ``BUILDFARM_STATE_DIR``: no setting for a process to check, and none it could get wrong."""
    return not any(name.upper().startswith("BUILDFARM_") and name != STATE_DIR_VARIABLE for name in environ)


def state_dir_alone(environ: Mapping[str, str]) -> Path:
    """The ``state_dir`` setting of an environment that :func:`sets_nothing_else`: the variable
    as written (the settings take it so), else :func:`default_state_dir`."""
    value = environ.get(STATE_DIR_VARIABLE)
    return default_state_dir() if value is None else Path(value)
