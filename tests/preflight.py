"""Say plainly which service the test suite needs and is missing, before pytest starts."""

from __future__ import annotations

import os
import sys

import sqlalchemy as sa

url = sa.engine.make_url(os.environ.get("TAISU_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
if url.drivername == "postgresql":
    url = url.set(drivername="postgresql+psycopg2")
try:
    with sa.create_engine(url, connect_args={"connect_timeout": 5}).connect() as conn:
        conn.exec_driver_sql("SELECT 1")
except sa.exc.OperationalError as exc:
    first = str(exc.orig).strip().splitlines()[0]
    print(
        f"The tests need PostgreSQL at {url.render_as_string(hide_password=True)} and cannot reach it ({first}).\n"
        "Start it (Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or point\n"
        "TAISU_TEST_PG_ADMIN_URL at a server where this user may create databases.",
        file=sys.stderr,
    )
    sys.exit(1)
# The production-mode Airflow tests use Redis as Celery's broker (a database number of their own).
redis_url = "redis://127.0.0.1:6379"
try:
    from taisu_etl.deploy.broker import check_redis

    check_redis(f"{redis_url.rstrip('/')}/0")
except Exception as exc:  # noqa: BLE001 - one plain line, whatever went wrong
    print(f"The Airflow tests need Redis at {redis_url}: {exc}", file=sys.stderr)
    sys.exit(1)
print(f"preflight: PostgreSQL reachable at {url.render_as_string(hide_password=True)}, Redis at {redis_url}; "
      "the S3 tests start their own S3 servers on 127.0.0.1")
