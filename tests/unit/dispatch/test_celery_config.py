"""The Celery settings that keep long builds safe (see ../shared/REAL_COMPONENTS.md's traps)."""

from __future__ import annotations

from pathlib import Path

from buildfarm.dispatch.celery_app import BUILD_QUEUE, CONTROL_QUEUE, _redacted, make_celery
from buildfarm.model.settings import load_settings


def _app(tmp_path: Path, url: str = "redis://127.0.0.1:1/0", **kw: object):  # type: ignore[no-untyped-def]
    return make_celery(load_settings(state_dir=tmp_path, redis_url=url, **kw))


def test_long_build_safety(tmp_path: Path) -> None:
    conf = _app(tmp_path, step_timeout_seconds=7200).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # Redis must never redeliver a running build: visibility beyond the longest step
    assert conf.broker_transport_options["visibility_timeout"] > 7200
    assert conf.task_routes["buildfarm.run_step"]["queue"] == BUILD_QUEUE
    assert conf.task_routes["buildfarm.advance_build"]["queue"] == CONTROL_QUEUE
    assert conf.beat_schedule["reap"]["task"] == "buildfarm.reap"


def test_broker_url_redaction(tmp_path: Path) -> None:
    assert _redacted(_app(tmp_path, "redis://:s3cret@host:6379/0")) == "redis://:***@host:6379/0"
    assert _redacted(_app(tmp_path, "redis://user:pw@host/1")) == "redis://user:***@host/1"
    assert _redacted(_app(tmp_path, "redis://host:6379/0")) == "redis://host:6379/0"


def test_environment_refresh_is_scheduled_only_when_set_and_runs_on_a_node(tmp_path: Path) -> None:
    assert "env_refresh" not in _app(tmp_path).conf.beat_schedule  # empty: off
    conf = _app(tmp_path, env_refresh_schedule="15 2 * * *").conf
    entry = conf.beat_schedule["env_refresh"]
    assert entry["task"] == "buildfarm.env_refresh"
    assert (entry["schedule"].hour, entry["schedule"].minute) == ({2}, {15})
    # minutes of mmdebstrap: never in the control queue's way
    assert conf.task_routes["buildfarm.env_refresh"]["queue"] == BUILD_QUEUE
    assert conf.task_routes["buildfarm.prepare_environment"]["queue"] == BUILD_QUEUE
