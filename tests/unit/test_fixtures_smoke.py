"""Proves the private-server fixtures in tests/conftest.py start real servers that answer."""

from __future__ import annotations

import redis
import sqlalchemy


def test_redis_url_answers_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.connection_pool.connection_kwargs["port"] != 6379
    finally:
        client.close()


def test_redis_url_keeps_data_between_calls(redis_url: str) -> None:
    # Leaves its key behind on purpose: the next test proves redis_flush removes it.
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("smoke:key", b"value")
        assert client.get("smoke:key") == b"value"
    finally:
        client.close()


def test_redis_flush_leaves_nothing_behind(redis_flush: str) -> None:
    client = redis.Redis.from_url(redis_flush)
    try:
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
