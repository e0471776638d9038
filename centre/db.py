"""The store's two databases behind one small interface: SQLite (one process) and PostgreSQL
(several worker processes sharing it).

The store's SQL is written once, in SQLite's spelling with ``?`` placeholders; a
:class:`Conn` runs it on either database. What differs is kept here: how a write
transaction starts, how one kit's writes are serialised across processes
(:meth:`Conn.lock_kit`), row locks (:attr:`Conn.for_update`), and what a lost database
connection becomes (:class:`StoreUnavailable`, a 503 refusal the kit retries).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiosqlite

if TYPE_CHECKING:  # imported when used: the SQLite store needs neither (the "centre" extra)
    import psycopg
    from psycopg_pool import AsyncConnectionPool

from centre.errors import Refused
from centre.schema import Dialect

log = logging.getLogger(__name__)

# Advisory lock namespaces (the first of pg_advisory_xact_lock's two keys).
_LOCK_KIT = 1
_LOCK_SCHEMA = 2
_LOCK_FEED = 3


class StoreUnavailable(Refused):
    """The database cannot be reached (restarting, network cut): nothing was stored; the
    kit keeps its items and sends them again."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            f"数据库暂不可用，请稍后重试：{reason}",
            f"the database is unavailable, try again later: {reason}",
            {"Retry-After": "5"},
        )


def is_postgres_url(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """A database URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Rows(Protocol):
    """A cursor after a statement ran (an aiosqlite or a psycopg cursor)."""

    async def fetchone(self) -> Any: ...
    async def fetchall(self) -> Iterable[Any]: ...
    async def close(self) -> None: ...


class Result:
    """A running statement: ``await`` it for its cursor, or ``async with`` it to close it."""

    def __init__(self, start: Awaitable[Rows]) -> None:
        self._start = start
        self._rows: Rows | None = None

    def __await__(self) -> Generator[Any, None, Rows]:
        return self._start.__await__()

    async def __aenter__(self) -> Rows:
        self._rows = await self._start
        return self._rows

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rows is not None:
            await self._rows.close()


class Conn(ABC):
    """One connection inside :meth:`Database.transaction` or :meth:`Database.reading`."""

    dialect: Dialect
    for_update: str  # appended to a SELECT whose rows the transaction will change
    skip_locked: str  # the same, leaving out rows another transaction holds

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...

    @abstractmethod
    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    async def lock_kit(self, kit_id: int) -> None:
        """Serialise this transaction with every other one that locks ``kit_id`` (in any
        worker) until it ends: one kit's items, acks, media and orders change one
        transaction at a time."""

    @abstractmethod
    async def lock_feed(self) -> None:
        """Serialise the numbering of the export feed (see :meth:`Store.sequence_feed`)."""


class Database(ABC):
    """Where the store's rows live; :meth:`close` when done."""

    dialect: Dialect
    description: str  # for logs: a path or a URL without its password

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        """One write transaction, committed when the block ends without error."""

    @abstractmethod
    def reading(self) -> AbstractAsyncContextManager[Conn]:
        """Reads outside a write transaction (each sees what was committed)."""

    @abstractmethod
    async def close(self) -> None: ...


# -- SQLite -----------------------------------------------------------------------------


class SqliteConn(Conn):
    dialect: Dialect = "sqlite"
    for_update = ""  # BEGIN IMMEDIATE already holds the only write lock
    skip_locked = ""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return Result(self._run(sql, params))

    async def _run(self, sql: str, params: Sequence[Any]) -> Rows:
        return await self.db.execute(sql, params)

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        await self.db.executemany(sql, params)

    async def lock_kit(self, kit_id: int) -> None:
        return None  # one connection, one write transaction at a time

    async def lock_feed(self) -> None:
        return None


class SqliteDatabase(Database):
    """One connection (WAL, synchronous=FULL); a lock keeps requests' statements apart."""

    dialect: Dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection, description: str) -> None:
        self.conn = SqliteConn(db)
        self.description = description
        # One connection: statements of concurrent requests must not interleave in a
        # transaction, and reads must not see another request's uncommitted rows.
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """One write transaction; committed (fsynced) when the block ends without error."""
        db = self.conn.db
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                await db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): the next BEGIN must not find one open.
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Conn]:
        async with self._lock:
            yield self.conn

    async def close(self) -> None:
        await self.conn.db.close()


# -- PostgreSQL -------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str, with_params: bool) -> str:
    """SQLite-spelt SQL for psycopg: ``?`` placeholders become ``%s``."""
    if not with_params:
        return sql
    return sql.replace("%", "%%").replace("?", "%s")


class PgConn(Conn):
    dialect: Dialect = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return Result(self._run(sql, params))

    async def _run(self, sql: str, params: Sequence[Any]) -> Rows:
        cur = self.conn.cursor()
        await cur.execute(_pg_sql(sql, bool(params)), params or None)
        return cur

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        rows = list(params)
        if rows:
            async with self.conn.cursor() as cur:
                await cur.executemany(_pg_sql(sql, True), rows)

    async def lock_kit(self, kit_id: int) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_KIT, kit_id))

    async def lock_feed(self) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_FEED,))


class PgDatabase(Database):
    """A pool of connections per worker process; transactions are READ COMMITTED, and
    each kit's writes are serialised by an advisory lock (see :meth:`Conn.lock_kit`).

    A connection found broken is replaced; while none can be had within ``wait_s`` every
    request is refused with :class:`StoreUnavailable`, and the pool keeps reconnecting.
    """

    dialect: Dialect = "postgresql"

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], url: str) -> None:
        self.pool = pool
        self.description = redact(url)

    @classmethod
    async def connect(cls, url: str, *, pool_size: int, wait_s: float) -> PgDatabase:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            url,
            min_size=min(2, pool_size),
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(wait_s))},
            check=AsyncConnectionPool.check_connection,
            timeout=wait_s,
            reconnect_timeout=3600.0,  # keep trying through a long outage
            name="centre",
        )
        try:
            await pool.open(wait=True, timeout=wait_s)
        except psycopg.OperationalError as err:
            await pool.close()
            raise StoreUnavailable(f"{redact(url)}: {err}") from None
        return cls(pool, url)

    def _unavailable(self, err: psycopg.OperationalError) -> StoreUnavailable:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("数据库不可用 / database unavailable (%s): %s", self.description, reason)
        return StoreUnavailable(reason)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """One write transaction, committed when the block ends without error."""
        import psycopg

        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield PgConn(conn)
        except psycopg.OperationalError as err:  # lost connection, pool timeout, deadlock
            raise self._unavailable(err) from err

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Conn]:
        import psycopg

        try:
            async with self.pool.connection() as conn:
                yield PgConn(conn)
        except psycopg.OperationalError as err:
            raise self._unavailable(err) from err

    async def serialised(self, sql: str) -> None:
        """Run ``sql`` (statements without parameters) while no other worker does the same:
        schema creation and upgrades, which PostgreSQL does not make safe to race."""
        async with self.transaction() as conn:
            assert isinstance(conn, PgConn)
            await conn.conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_SCHEMA,))
            await conn.conn.execute(sql)

    async def close(self) -> None:
        await self.pool.close()
