"""The API's numeric limits that a caller needs before it has a model: plain constants.

A command line states them in its options (``--days``) without importing pydantic or the wire
models (:mod:`.models`, which declare the same limits with these).
"""

from __future__ import annotations

DEFAULT_TOKEN_DAYS = 90
"""A new token's lifetime unless the request names one."""
MAX_TOKEN_DAYS = 3650
"""The longest lifetime a token may be given (ten years)."""
