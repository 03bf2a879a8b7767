"""`taisu-etl storage check/init` against the S3 test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import assert_one_error_line, run_cli


@pytest.mark.s3
def test_missing_bucket_is_one_line_naming_it(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    env = {"TAISU_STORE": "s3", "TAISU_S3_ENDPOINT": s3_server.endpoint, "TAISU_S3_ACCESS_KEY": s3_server.access_key,
           "TAISU_S3_SECRET_KEY": s3_server.secret_key, "TAISU_S3_BUCKET": "no-such-bucket"}
    assert_one_error_line(run_cli("storage", "check", env=env, home=tmp_path), "no-such-bucket")
    res = run_cli("storage", "init", env=env, home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert run_cli("storage", "check", env=env, home=tmp_path).returncode == 0
