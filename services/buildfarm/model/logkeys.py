"""Where a step's log lives in the artifact store: one key per attempt, from its build, its name
made safe (:func:`buildfarm.model.names.to_safe`) and its attempt number.

The one definition of that key: the engine writes it (a claim on PostgreSQL computes it in its
statement from :data:`STEP_LOG_KEY` and the step's stored safe name, ``engine/steps.py``), a
runner reads it back, retention deletes every attempt's.
"""

from __future__ import annotations

from buildfarm.model import names

STEP_LOG_KEY = "logs/{build_id}/{safe_name}/{attempt}.log"
"""The key of an attempt's log; ``safe_name`` is :func:`names.to_safe` of the step's name."""


def step_log_key(build_id: int, step_name: str, attempt: int) -> str:
    """The key of the log of ``attempt`` of the step ``step_name`` of build ``build_id``."""
    return STEP_LOG_KEY.format(build_id=build_id, safe_name=names.to_safe(step_name), attempt=attempt)
