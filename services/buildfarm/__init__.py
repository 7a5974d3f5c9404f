"""buildfarm: a multi-node build farm for Debian packages and container images.

Layers import only downward: ``model`` (pure data and rules) <- ``state``, ``backends``,
``runners`` (one concern each, behind small interfaces) <- ``engine`` (the build logic, which
never knows which backend it got) <- ``dispatch`` (Celery) <- ``local`` (the local profile's
processes) <- the CLI.  ``tests/unit/test_layers.py`` enforces it with import-linter.
"""
