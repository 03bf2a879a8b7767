"""Airflow's own metadata database: created when missing (Postgres), migrated, tuned (SQLite).

SQLAlchemy is imported where used: `taisu-etl --help` imports this module and should stay fast.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from taisu_etl.deploy.processes import log_tail
from taisu_etl.errors import TaisuError

_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def ensure_postgres_database(url: str) -> bool:
    """Create the database that `url` names, through the same server's `postgres` database, if missing.

    Returns True when it was created. Airflow gets a database of its own: its tables never mix
    with the ledger's, and dropping one never touches the other.
    """
    import sqlalchemy as sa

    target = sa.engine.make_url(url)
    name = target.database or ""
    if not _DATABASE_NAME.match(name):
        raise TaisuError(f"Airflow metadata database name {name!r} in {target.render_as_string(hide_password=True)} "
                         "must be letters, digits and underscores")
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                return False
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            return True
    except sa.exc.OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise TaisuError(
            f"cannot reach Postgres for Airflow's metadata at {target.render_as_string(hide_password=True)} ({first}); "
            "start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set TAISU_AIRFLOW_DB_URL"
        ) from None
    finally:
        admin.dispose()


def drop_postgres_database(url: str) -> None:
    """Drop the database that `url` names (for tests that made one of their own)."""
    import sqlalchemy as sa

    target = sa.engine.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    finally:
        admin.dispose()


def migrate(airflow: Path, env: Mapping[str, str], log: Path, *, timeout: float = 900.0) -> None:
    """`airflow db migrate` (safe to run again: it does nothing on a current schema); output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        try:
            code = subprocess.run([str(airflow), "db", "migrate"], env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise TaisuError(f"`airflow db migrate` took more than {timeout:.0f} s; its log is {log}") from None
    if code != 0:
        raise TaisuError(f"`airflow db migrate` failed (exit {code}); the end of {log}:\n{log_tail(log, 12)}")


def upgrade_ledger(env: Mapping[str, str], *, timeout: float = 300.0) -> str:
    """`taisu-etl db upgrade` with the deployment's environment (the ledger its tasks will use); its report line."""
    res = subprocess.run([sys.executable, "-m", "taisu_etl.cli", "db", "upgrade"], env=dict(env), capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TaisuError(f"the ledger the DAGs would use is not usable: {last.removeprefix('error: ')}")
    return res.stdout.strip()


def use_write_ahead_log(path: Path) -> None:
    """Switch the SQLite file to WAL (kept in the file): readers no longer wait for a writer."""
    conn = sqlite3.connect(path, timeout=60)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
