"""Engines for the ledger, with connection failures turned into one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError

from taisu_etl.errors import LedgerError

_URL_HELP = "use e.g. postgresql://user@127.0.0.1:5432/taisu or sqlite:///var/ledger.db"


def make_engine(url: str) -> Engine:
    """Create an engine for a ledger URL (SQLite or Postgres); raises LedgerError for a bad URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LedgerError(f"TAISU_DB_URL is not a database URL: {_URL_HELP}") from None
    except ValueError:
        # SQLAlchemy int()s the port itself: a port that is not a number surfaces as a bare ValueError.
        raise LedgerError(f"the port in TAISU_DB_URL is not a number ({_port_text(url)!r}): {_URL_HELP}") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise LedgerError(f"the port in TAISU_DB_URL is out of range ({parsed.port}; ports are 1-65535): {_URL_HELP}")
    safe = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(parsed)
        if backend == "postgresql":
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg2")
            return sa.create_engine(
                parsed,
                pool_pre_ping=True,
                # Keepalives: a server that vanishes without closing the socket (a host that died, a
                # dropped route) is noticed within about a minute instead of hanging a stage forever.
                connect_args={"connect_timeout": 5, "application_name": "taisu-etl", "keepalives": 1,
                              "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3},
            )
    except NoSuchModuleError:
        pass
    raise LedgerError(f"unsupported ledger database {safe!r}: {_URL_HELP}")


# SQLAlchemy's own URL pattern, down to the port: the password may hold '/' or ':', never '@'.
_PORT = re.compile(r"[\w+]+://(?:[^:/]*(?::[^@]*)?@)?(?:\[[^/?]+\]|[^/:?]+)?:(?P<port>[^/?]*)")


def _port_text(url: str) -> str:
    """What stands where the port goes in `url`, for a message: never any of the password."""
    match = _PORT.match(url)
    return match.group("port") if match else ""


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    # pysqlite's own transaction handling starts transactions lazily and as DEFERRED, so two
    # processes could both read the same unclaimed rows; BEGIN IMMEDIATE takes the write lock
    # up front, which is what makes claims exclusive on SQLite.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# SQLSTATEs that mean the server ended or refused the session, not that the SQL was wrong: connection
# exceptions (class 08) and the server shutting down, crashing or starting up (57P01-57P03).
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")
# libpq failures without a SQLSTATE that retrying cannot fix.
_PERMANENT_CONNECT_FAILURES = ("does not exist", "authentication failed", "pg_hba.conf", "permission denied")


def is_connection_lost(exc: DBAPIError) -> bool:
    """True when a Postgres error means the connection was lost or could not be made (worth a reconnect),
    False for SQL errors, which a retry would only repeat."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)) or exc.orig is None:
        return False
    code = getattr(exc.orig, "pgcode", None)
    if code is None:  # raised by libpq itself: refused, reset, timed out, closed
        text = str(exc.orig)
        return not any(marker in text for marker in _PERMANENT_CONNECT_FAILURES)
    return code.startswith("08") or code in _LOST_SQLSTATES


def describe_db_error(exc: DBAPIError) -> str:
    """The first line of a driver error, which is the one that says what happened."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _connect_hint(detail: str, url: sa.URL) -> str:
    """What to do about a failed Postgres connection, from libpq's message (it has no SQLSTATE to go by)."""
    if re.search(r'role "[^"]*" does not exist', detail):
        return f"create the role (createuser -h HOST {url.username}) or fix the user name in TAISU_DB_URL"
    if re.search(r'database "[^"]*" does not exist', detail):
        return f"create it (createdb -h HOST {url.database}) or fix the database name in TAISU_DB_URL"
    if "password authentication failed" in detail:
        return "fix the user or password in TAISU_DB_URL"
    return "check TAISU_DB_URL and that the database server is running"


def check_connection(engine: Engine) -> None:
    """Open one connection; raise LedgerError saying what to fix when that fails."""
    safe = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except OperationalError as exc:
        detail = describe_db_error(exc)
        hint = _connect_hint(detail, engine.url) if engine.dialect.name == "postgresql" else "check TAISU_DB_URL and that the database server is running"
        raise LedgerError(f"cannot open the ledger at {safe}: {detail}: {hint}") from None
