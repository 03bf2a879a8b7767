"""Connection failures become one line saying what to fix: a bad port, an unknown role, a missing database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from taisu_etl.db.engine import check_connection, make_engine
from taisu_etl.db.ledger import Ledger
from taisu_etl.errors import LedgerError


def _status(url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")}
    env.update(TAISU_HOME=str(home), TAISU_DB_URL=url)
    script = Path(sys.executable).parent / "taisu-etl"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "taisu_etl.cli"]
    return subprocess.run([*command, "status"], env=env, capture_output=True, text=True, timeout=60)


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.mark.parametrize("url, port", [
    ("postgresql://taisu:pa/ss:w0rd@127.0.0.1:abc/taisu", "abc"),
    ("postgresql://taisu@[::1]:54x2/taisu", "54x2"),
])
def test_a_port_that_is_not_a_number_is_one_line_without_the_password(tmp_path: Path, url: str, port: str) -> None:
    with pytest.raises(LedgerError) as err:
        make_engine(url)
    assert f"port in TAISU_DB_URL is not a number ({port!r})" in str(err.value) and "w0rd" not in str(err.value)
    with pytest.raises(LedgerError):
        Ledger.open(url)
    line = _one_error_line(_status(url, tmp_path))
    assert "not a number" in line and "w0rd" not in line


def test_a_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"out of range \(99999; ports are 1-65535\)"):
        make_engine("postgresql://taisu@127.0.0.1:99999/taisu")


@pytest.mark.postgres
def test_unknown_role_says_to_create_the_role_not_the_database(tmp_path: Path, pg_url: str) -> None:
    url = sa.engine.make_url(pg_url).set(username="taisu_no_such_role").render_as_string(hide_password=False)
    with pytest.raises(LedgerError) as err:
        check_connection(make_engine(url))
    message = str(err.value)
    assert 'role "taisu_no_such_role" does not exist' in message
    assert "createuser -h HOST taisu_no_such_role" in message and "user name in TAISU_DB_URL" in message and "createdb" not in message
    line = _one_error_line(_status(url, tmp_path))
    assert "createuser" in line and "createdb" not in line


@pytest.mark.postgres
def test_missing_database_says_to_create_the_database(tmp_path: Path, pg_url: str) -> None:
    url = sa.engine.make_url(pg_url).set(database="taisu_no_such_db").render_as_string(hide_password=False)
    with pytest.raises(LedgerError) as err:
        check_connection(make_engine(url))
    message = str(err.value)
    assert 'database "taisu_no_such_db" does not exist' in message
    assert "createdb -h HOST taisu_no_such_db" in message and "createuser" not in message
    line = _one_error_line(_status(url, tmp_path))
    assert "createdb" in line and "createuser" not in line
