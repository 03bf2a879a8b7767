"""The command line: one clear `error:` line for each kind of bad input, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from taisu_etl.config import load_settings
from taisu_etl.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict[str, str] | None = None, home: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")}
    full.update({"TAISU_HOME": str(home)}, **(env or {}))
    return subprocess.run([sys.executable, "-m", "taisu_etl.cli", *args], env=full, capture_output=True, text=True, timeout=60)


def assert_one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_db_upgrade_then_status_on_embedded_defaults(tmp_path: Path) -> None:
    res = run_cli("db", "upgrade", home=tmp_path)
    assert res.returncode == 0 and "schema revision 0004 (was empty)" in res.stdout
    res = run_cli("db", "upgrade", home=tmp_path)
    assert "already current" in res.stdout
    res = run_cli("status", home=tmp_path)
    assert res.returncode == 0 and "no samples yet" in res.stdout


def test_a_stage_command_prints_its_summary_without_library_chatter(tmp_path: Path) -> None:
    # Progress is our loggers' INFO; alembic's plugin set-up (logged at INFO while the ledger's
    # schema is checked) must not reach the user's terminal.
    assert run_cli("db", "upgrade", home=tmp_path).returncode == 0
    res = run_cli("fetch", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "fetch, all shards: 0 samples" in res.stdout
    assert "alembic" not in res.stderr and "setup plugin" not in res.stderr, res.stderr


def test_status_before_upgrade_says_to_run_upgrade(tmp_path: Path) -> None:
    assert_one_error_line(run_cli("status", home=tmp_path), "has no schema", "taisu-etl db upgrade")


def test_wrong_db_url_is_one_line(tmp_path: Path) -> None:
    assert_one_error_line(run_cli("status", env={"TAISU_DB_URL": "not a url"}, home=tmp_path), "TAISU_DB_URL")
    assert_one_error_line(run_cli("status", env={"TAISU_DB_URL": "mysql://x@h/db"}, home=tmp_path), "unsupported ledger database")


def test_unreachable_postgres_names_the_server_but_not_the_password(tmp_path: Path) -> None:
    url = f"postgresql://taisu:hunter2@127.0.0.1:{_free_port()}/taisu"
    res = run_cli("status", env={"TAISU_DB_URL": url}, home=tmp_path)
    assert_one_error_line(res, "cannot open the ledger", "127.0.0.1", "check TAISU_DB_URL")
    assert "hunter2" not in res.stderr


@pytest.mark.postgres
def test_missing_postgres_database_says_how_to_create_it(tmp_path: Path, pg_url: str) -> None:
    import sqlalchemy as sa

    url = sa.engine.make_url(pg_url).set(database="taisu_no_such_db").render_as_string(hide_password=False)
    assert_one_error_line(run_cli("status", env={"TAISU_DB_URL": url}, home=tmp_path), "does not exist", "createdb")


def test_unreachable_minio_is_one_line_without_the_secret(tmp_path: Path) -> None:
    env = {"TAISU_STORE": "s3", "TAISU_S3_ENDPOINT": f"http://127.0.0.1:{_free_port()}", "TAISU_S3_ACCESS_KEY": "k",
           "TAISU_S3_SECRET_KEY": "s3cr3t-value"}
    res = run_cli("storage", "check", env=env, home=tmp_path)
    assert_one_error_line(res, "127.0.0.1")
    assert "s3cr3t-value" not in res.stderr


def test_bad_recipe_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[pipeline\nshards = 4\n")
    assert_one_error_line(run_cli("status", "--recipe", str(broken), home=tmp_path), str(broken), "not valid TOML")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[pipeline]\nshards = "many"\n')
    assert_one_error_line(run_cli("config", "show", "--recipe", str(wrong), home=tmp_path), "pipeline.shards", str(wrong))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("shardz = 4\n")
    assert_one_error_line(run_cli("config", "show", "--recipe", str(unknown), home=tmp_path), "shardz")
    assert_one_error_line(run_cli("status", "--recipe", str(tmp_path / "missing.toml"), home=tmp_path), "does not exist")


def test_settings_precedence_env_over_recipe_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("TAISU_")]:
        monkeypatch.delenv(key)
    recipe = tmp_path / "r.toml"
    recipe.write_text('recipe_version = "wukong-v1"\n[pipeline]\nshards = 64\nlease_seconds = 60\n')
    assert load_settings().pipeline.shards == 16
    assert load_settings(recipe).pipeline.shards == 64
    monkeypatch.setenv("TAISU_PIPELINE__SHARDS", "128")
    s = load_settings(recipe)
    assert (s.pipeline.shards, s.pipeline.lease_seconds, s.recipe_version) == (128, 60, "wukong-v1")
    with pytest.raises(ConfigError, match="s3_endpoint"):
        load_settings(store="s3")


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = {"TAISU_DB_URL": "postgresql://taisu:pg-pass-123@db:5432/taisu", "TAISU_S3_SECRET_KEY": "minio-secret-456"}
    res = run_cli("config", "show", env=env, home=tmp_path)
    assert res.returncode == 0
    assert "pg-pass-123" not in res.stdout and "minio-secret-456" not in res.stdout
    assert "postgresql://taisu:***@db:5432/taisu" in res.stdout


def test_the_example_recipe_is_valid_and_matches_the_defaults(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "recipe.toml"
    settings = load_settings(example)
    defaults = load_settings()
    assert settings.text == defaults.text and settings.pipeline == defaults.pipeline
    assert settings.fetch == defaults.fetch and settings.image == defaults.image
    assert settings.score == defaults.score and settings.caption == defaults.caption
    assert settings.recipe_version == "example-v1"


def _leased_ledger(home: Path) -> tuple[str, str]:
    """A ledger under `home` with samples leased to a dead process and to this (live) one: (dead, live) tokens."""
    from taisu_etl.db.engine import make_engine
    from taisu_etl.db.leases import LeaseOwner
    from taisu_etl.db.ledger import Ledger, NewSample
    from taisu_etl.db.migrate import upgrade
    from taisu_etl.vocab import State

    url = f"sqlite:///{(home / 'ledger.db').resolve()}"
    upgrade(make_engine(url))
    ledger = Ledger.open(url, shards=1)
    ledger.add_samples(NewSample(caption=f"湖边的一棵老树 第{i}张", source="s.csv", url=f"http://a.example.com/{i}.jpg") for i in range(12))
    proc = subprocess.Popen(["sleep", "30"])
    dead = LeaseOwner.current("fetch.0.crashed0", pid=proc.pid).token
    proc.kill()
    proc.wait()
    live = LeaseOwner.current("score.0.running0").token
    assert len(ledger.claim(state=State.INGESTED, owner=dead, shard=0, limit=5, lease_seconds=600)) == 5
    assert len(ledger.claim(state=State.INGESTED, owner=live, shard=0, limit=3, lease_seconds=600)) == 3
    ledger.dispose()
    return dead, live


def test_status_and_leases_show_who_holds_what_and_release_frees_only_dead_owners(tmp_path: Path) -> None:
    import json

    dead, live = _leased_ledger(tmp_path)
    res = run_cli("status", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "leases held" in res.stdout and dead in res.stdout and live in res.stdout
    res = run_cli("status", "--json", home=tmp_path)
    leases = {h["owner"]: h for h in json.loads(res.stdout)["leases"]}
    assert leases[dead]["samples"] == 5 and leases[dead]["dead"] is True and leases[dead]["state"] == "ingested"
    assert leases[live]["samples"] == 3 and leases[live]["dead"] is False and leases[live]["liveness"] == "alive"
    assert leases[live]["until"].endswith("Z") and leases[dead]["shard"] == 0

    res = run_cli("leases", "list", home=tmp_path)
    assert res.returncode == 0 and "dead" in res.stdout and "alive" in res.stdout
    res = run_cli("leases", "release", "--dead", "--dry-run", home=tmp_path)
    assert res.returncode == 0 and "would free 5 samples in ingested (shard 0) leased by fetch@" in res.stdout, res.stdout
    assert "would free 5 samples in all" in res.stdout
    res = run_cli("leases", "release", "--dead", home=tmp_path)
    assert res.returncode == 0 and "freed 5 samples in ingested (shard 0)" in res.stdout and "(owner is dead)" in res.stdout
    res = run_cli("leases", "list", "--json", home=tmp_path)
    assert [(h["owner"], h["samples"]) for h in json.loads(res.stdout)] == [(live, 3)]
    assert "nothing to free" in run_cli("leases", "release", "--dead", home=tmp_path).stdout
    assert_one_error_line(run_cli("leases", "release", home=tmp_path), "--dead", "--owner")
    res = run_cli("leases", "release", "--owner", live, home=tmp_path)
    assert res.returncode == 0 and "freed 3 samples" in res.stdout and "released by request" in res.stdout
    assert "no samples are leased" in run_cli("leases", "list", home=tmp_path).stdout
