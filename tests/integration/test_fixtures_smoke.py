"""Proves the private-server fixtures in tests/conftest.py start real servers that answer.

An integration test: it starts the session's redis-server and PostgreSQL (unit tests need no
server). Each test sets up what it checks itself, so any one of them passes alone or in any order.
"""

from __future__ import annotations

import pytest
import redis
import sqlalchemy

pytestmark = pytest.mark.integration


def test_redis_url_answers_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.connection_pool.connection_kwargs["port"] != 6379
    finally:
        client.close()


def test_redis_url_keeps_data_between_connections(redis_url: str) -> None:
    writer = redis.Redis.from_url(redis_url)
    reader = redis.Redis.from_url(redis_url)
    try:
        writer.set("smoke:kept", b"value")
        writer.close()
        assert reader.get("smoke:kept") == b"value"
    finally:
        reader.delete("smoke:kept")
        reader.close()


def test_redis_flush_empties_what_earlier_tests_left(redis_url: str, request: pytest.FixtureRequest) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("smoke:left-behind", b"value")  # as an earlier test on this worker may have
        flushed = request.getfixturevalue("redis_flush")  # set up now, after the key was written
        assert flushed == redis_url
        assert client.dbsize() == 0
    finally:
        client.close()


def test_postgres_url_runs_queries(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("SELECT version()")).scalar_one()
            database = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert str(version).startswith("PostgreSQL ")
    assert database == "buildfarm_test"
    assert engine.url.port != 5432
