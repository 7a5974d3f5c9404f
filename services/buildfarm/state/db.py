"""Engines, sessions and schema migrations (Alembic) for the build state."""

from __future__ import annotations

import select
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from buildfarm.model.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long an SQLite writer waits for another (nodes share one file): 30 s, far above any commit."""


def make_engine(url: str, *, autocommit: bool = False) -> Engine:
    """The engine of ``url``; ``autocommit`` (PostgreSQL): its connections run each statement
    as a transaction of its own, always (:meth:`Database.statements`)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            # No fsync at each commit (only at checkpoints): with WAL this cannot corrupt the file,
            # and a commit lost to a power cut (not to a process crash) is one the lease fencing
            # already survives (a lost claim is claimed again, a lost finish is built again).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()
            # The driver begins no transaction of its own: the dialect's BEGIN IMMEDIATE does.
            dbapi_connection.isolation_level = None

        # Take the write lock at BEGIN: a transaction that reads and then writes would otherwise
        # fail at once with "database is locked" when another node wrote between.  Issued by the
        # dialect's begin, not by a "begin" event listener: any connection event makes every
        # statement of the engine run the event hooks (a third of a short claim's cost).
        engine.dialect.do_begin = _begin_immediate  # type: ignore[method-assign]
        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    dialect = engine.dialect
    if dialect.driver == "psycopg":  # psycopg 3 shows its socket (pgconn); another driver pings as it did
        dialect.do_ping = _ping_when_suspect(dialect.do_ping, dialect.loaded_dbapi.Error)  # type: ignore[method-assign,assignment]
    return engine


def _ping_when_suspect(ping: Callable[[Any], bool], lost: type[Exception]) -> Callable[[Any], bool]:
    """The pool's check of a connection it hands out, without a round trip while nothing is wrong.

    An idle connection has nothing to read: a server that ended the session (a restart, a
    failover, ``pg_terminate_backend``, an idle timeout) or a peer that reset it leaves its
    last message or the end of the stream on the socket.  Only then is the real ping sent (which
    fails, and the pool connects again).  Dispatch checks out a connection three times a step;
    the ping of each was a round trip of its own (3 of its 17).  A connection cut silently (no
    FIN, no RST) shows nothing here; the ping would have waited on it as the statement now does."""

    def ping_when_suspect(dbapi_connection: Any) -> bool:
        try:
            socket = dbapi_connection.pgconn.socket
        except lost:  # psycopg knows the connection closed: the real ping says so in its way
            return ping(dbapi_connection)
        poller = select.poll()
        poller.register(socket, select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            return ping(dbapi_connection)
        return True

    return ping_when_suspect


def _begin_immediate(dbapi_connection: Any) -> None:
    dbapi_connection.execute("BEGIN IMMEDIATE")


def alembic_config(url: str) -> Config:
    from alembic.config import Config  # imported when migrating only: every CLI start paid for it

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command

    try:
        command.upgrade(alembic_config(url), "head")
    except OperationalError as exc:
        raise ServiceUnavailableError(f"database {_redact(url)} unreachable: {exc.orig}") from exc


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class CommitProbe:
    """SQLite's ``PRAGMA data_version`` and small reads on a read-only connection of their own
    (:meth:`Database.commit_probe`): microseconds each, no lock, no pool, no session."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def version(self) -> int:
        """Moves whenever any connection (of any process) committed to the database."""
        return int(self._connection.execute("PRAGMA data_version").fetchone()[0])

    def value(self, sql: str, parameters: tuple[object, ...]) -> object:
        """The first column of the first row of ``sql`` (SQLite's ``?`` parameters), or None."""
        row = self._connection.execute(sql, parameters).fetchone()
        return None if row is None else row[0]


class Database:
    """One engine and session factory per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # PostgreSQL: a pool of its own for :meth:`statements`, its connections in autocommit for
        # good.  An AUTOCOMMIT execution option on the one engine set the connection's isolation
        # level at each checkout and set it back at each return (~50 us of CPU each time, twice
        # a dispatched step); the price is a second connection held by a process that uses both.
        self._autocommit = None if url.startswith("sqlite") else make_engine(url, autocommit=True)

    @contextmanager
    def commit_probe(self) -> Iterator[CommitProbe | None]:
        """A read-only connection of its own that tells cheaply whether any connection committed
        (:meth:`CommitProbe.version`) and reads a value without the engine's pool or a session
        (:meth:`CommitProbe.value`): what a waiter reads every few milliseconds.  None where the
        database has no such counter (PostgreSQL: a waiter asks again at an interval instead)."""
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            yield None
            return
        connection = sqlite3.connect(
            f"{Path(database).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        try:
            yield CommitProbe(connection)
        finally:
            connection.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except OperationalError as exc:
                session.rollback()
                raise ServiceUnavailableError(f"database {_redact(self.url)}: {exc.orig}") from exc
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction on a plain connection, for the hot paths of dispatch (claim, finish,
        advance): committed on success, rolled back on error, as :meth:`session`; SQL statements
        only, without the ORM's unit of work (a fraction of its cost per statement).  A path
        that needs ORM objects after all opens :meth:`session_on` the same connection."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except OperationalError as exc:
            raise ServiceUnavailableError(f"database {_redact(self.url)}: {exc.orig}") from exc

    @contextmanager
    def statements(self) -> Iterator[Connection]:
        """A connection for work that needs no transaction around its statements: reads that need
        no common snapshot (on PostgreSQL, READ COMMITTED gives each statement of a transaction
        its own anyway) and writes of one statement each (atomic alone).  On PostgreSQL each
        statement commits on its own: no BEGIN and no COMMIT, each a round trip of its own with
        psycopg.  On SQLite a :meth:`transaction` (its BEGIN and COMMIT cost no round trip)."""
        if self._autocommit is None:
            with self.transaction() as connection:
                yield connection
            return
        try:
            with self._autocommit.connect() as connection:
                yield connection
        except OperationalError as exc:
            raise ServiceUnavailableError(f"database {_redact(self.url)}: {exc.orig}") from exc

    @property
    def statements_engine(self) -> Engine:
        """The engine whose connections :meth:`statements` hands out (on SQLite, :attr:`engine`)."""
        return self.engine if self._autocommit is None else self._autocommit

    @contextmanager
    def session_on(self, connection: Connection) -> Iterator[Session]:
        """An ORM session inside a :meth:`transaction`: its changes are flushed into that
        transaction, which commits or rolls back them with the rest."""
        with self._sessions(bind=connection, join_transaction_mode="rollback_only") as session:
            yield session
            session.flush()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()
