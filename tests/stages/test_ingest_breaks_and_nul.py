"""Ingest of rows holding NUL characters, and of inputs that break off, on SQLite and Postgres.

A NUL in a stored field used to fail the whole batch on Postgres (text cannot hold NUL) with a
traceback; it is one `nul_char` issue now. A truncated input keeps the rows before the break,
records the break (`truncated_input`, shown by `taisu-etl status`) and fails the ingest; ingesting
the repaired file then adds exactly the missing rows.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from taisu_etl.db.engine import make_engine
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.migrate import upgrade
from taisu_etl.stages.ingest import IngestBrokeOff, ingest_file, ingest_taisu
from taisu_etl.storage import LocalObjectStore
from tests.sources.builders import jpeg, write_tar

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"gz": gzip.compress, "xz": lzma.compress}


def _wukong(n: int = 3000) -> bytes:
    lines = ["url,caption"]
    for i in range(n):
        if i % 500 == 7:
            lines.append(f",没有网址的第{i}行")  # missing_url: issues must come out the same too
        elif i % 700 == 299:
            lines.append(f"http://img.example.com/{i}.jpg,标题有\x00空字符")  # nul_char (past the 8 KB sniffed for binary data)
        else:
            lines.append(f"http://img.example.com/{i}.jpg,第{i}张图片的标题{'很长' * (i % 29)}")
    return ("\n".join(lines) + "\n").encode()


def _fresh_sqlite(tmp_path: Path, name: str) -> Ledger:
    url = f"sqlite:///{tmp_path / name}"
    upgrade(make_engine(url))
    return Ledger.open(url, shards=4, recipe_version="test")


def _snapshot(ledger: Ledger) -> dict[str, Any]:
    """What an ingest leaves in the ledger, without the ids and times that differ between runs."""
    with ledger.engine.connect() as conn:
        samples = conn.execute(sa.text(
            "SELECT s.pair_hash, s.url, s.caption, s.source, s.source_pos, s.taisu_id, s.gen_caption, s.object_key, st.state, "
            "(SELECT COUNT(*) FROM sample_event e WHERE e.sample_id = s.id) FROM sample s JOIN sample_state st ON st.sample_id = s.id"
        )).all()
        issues = conn.execute(sa.text("SELECT source, position, reason, detail FROM ingest_issue")).all()
    return {"samples": sorted(tuple(r) for r in samples), "issues": sorted(tuple(r) for r in issues)}


def _lines_of(ledger: Ledger) -> list[int]:
    with ledger.engine.connect() as conn:
        return sorted(int(p.split()[1]) for p in conn.execute(sa.text("SELECT source_pos FROM sample")).scalars())


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_truncated_then_repaired_equals_a_direct_ingest(ledger: Ledger, tmp_path: Path, kind: str) -> None:
    full = COMPRESSORS[kind](_wukong())
    path = tmp_path / f"wukong_100m_3.csv.{kind}"
    path.write_bytes(full[: len(full) * 6 // 10])

    with pytest.raises(IngestBrokeOff) as err:
        ingest_file(ledger, path, batch_size=400)
    report = err.value.report
    ((source, position, detail),) = [
        tuple(r) for r in ledger.read(lambda c: c.execute(sa.text("SELECT source, position, detail FROM ingest_issue WHERE reason = 'truncated_input'")).all())
    ]
    last = int(position.removeprefix("after line "))
    assert source == str(path) and "truncated" in detail and f"after line {last}" in str(err.value)
    # Every good row up to the break is in, the last partial batch included; nothing after it.
    lines = _lines_of(ledger)
    good_before = [i + 2 for i in range(last - 1) if i % 500 != 7 and i % 700 != 299]
    assert lines == good_before and report.added.inserted == len(lines) > 400
    assert {r for _, r, _ in ledger.issue_counts()} == {"missing_url", "nul_char", "truncated_input"}

    path.write_bytes(full)  # repaired
    again = ingest_file(ledger, path, batch_size=400)
    assert again.added.duplicates == len(good_before) and again.added.inserted > 0

    direct = _fresh_sqlite(tmp_path, "direct.db")
    try:
        once = ingest_file(direct, path, batch_size=400)
        assert again.added.inserted + len(good_before) == once.added.inserted
        assert _snapshot(ledger) == _snapshot(direct)  # the break is cleared, nothing is there twice
    finally:
        direct.dispose()


def test_nul_in_every_url_list_format_is_one_bad_row_and_the_rest_is_ingested(ledger: Ledger, tmp_path: Path) -> None:
    csv_path = tmp_path / "wukong_100m_4.csv"
    pad = "".join(f"http://c.example.com/{i}.jpg,第{i}行的标题\n" for i in range(400))
    csv_path.write_bytes(f"url,caption\n{pad}http://c.example.com/x.jpg,有\x00的标题\nhttp://c\x00.example.com/y.jpg,网址\n".encode())
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"url": "http://j.example.com/1.jpg", "caption": "好的"}) + "\n"
                     + json.dumps({"url": "http://j.example.com/2.jpg", "caption": "坏\u0000的"}) + "\n", encoding="utf-8")
    parquet = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"URL": ["https://l.example.org/1.png", "https://l.example.org/2\x00.png"], "TEXT": ["一", "二"]}), parquet)

    reports = [ingest_file(ledger, p) for p in (csv_path, jsonl, parquet)]
    assert [(r.added.inserted, dict(r.stats.bad)) for r in reports] == [(400, {"nul_char": 2}), (1, {"nul_char": 1}), (1, {"nul_char": 1})]
    with ledger.engine.connect() as conn:
        issues = sorted((Path(s).name, p) for s, p in conn.execute(sa.text("SELECT source, position FROM ingest_issue WHERE reason = 'nul_char'")))
    assert issues == [("list.jsonl", "line 2"), ("part-0.parquet", "row 2"), ("wukong_100m_4.csv", "line 402"), ("wukong_100m_4.csv", "line 403")]
    assert ledger.funnel() == {"ingested": 402}


def test_nul_in_taisu_captions_costs_that_caption(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    archive = write_tar(tmp_path / "baidu_image0.tgz", [(f"{i}.jpg", jpeg(i)) for i in range(4)])
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        "".join(json.dumps(r) + "\n" for r in [
            {"id": "0", "w": "好的标题", "g": None},
            {"id": "1", "w": "坏\u0000", "g": None},
            {"id": "2", "w": "好", "g": "生成\u0000"},
            {"id": "3", "w": "好", "url": "http://t.example.com/\u00003.jpg"},
        ]),
        encoding="utf-8",
    )
    report = ingest_taisu(ledger, store, [archive], [captions])
    assert report.added.inserted == 1
    issues = {(Path(s).name, r): n for s, r, n in ledger.issue_counts()}
    assert issues == {("captions.jsonl", "nul_char"): 3, ("baidu_image0.tgz", "no_caption"): 3}


def test_truncated_taisu_archive_keeps_the_images_before_the_break_then_the_repair_adds_the_rest(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    whole = write_tar(tmp_path / "whole.tgz", [(f"{i}.jpg", jpeg(i, size=48, noise=True)) for i in range(10)]).read_bytes()
    cut = tmp_path / "baidu_image7.tgz"
    cut.write_bytes(whole[: len(whole) * 6 // 10])
    other = write_tar(tmp_path / "baidu_image8.tgz", [("10.jpg", jpeg(10))])
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"{i}*****第{i}张*****None\n" for i in range(11)) + "99*****没有图片*****None\n", encoding="utf-8")

    with pytest.raises(IngestBrokeOff) as err:
        ingest_taisu(ledger, store, [cut, other], [captions], batch_size=2)
    kept = err.value.report.added.inserted
    assert 2 <= kept < 11 and "baidu_image7.tgz" in str(err.value)
    issues = {(Path(s).name, r) for s, r, _ in ledger.issue_counts()}
    assert issues == {("baidu_image7.tgz", "truncated_input")}  # no caption is called image-less yet

    cut.write_bytes(whole)
    again = ingest_taisu(ledger, store, [cut, other], [captions], batch_size=2)
    assert (again.added.inserted, again.added.duplicates) == (11 - kept, kept)

    direct = _fresh_sqlite(tmp_path, "direct.db")
    try:
        ingest_taisu(direct, LocalObjectStore(tmp_path / "objects2"), [cut, other], [captions], batch_size=2)
        assert _snapshot(ledger) == _snapshot(direct)
        assert {(Path(s).name, r) for s, r, _ in ledger.issue_counts()} == {("captions.txt", "no_image")}
    finally:
        direct.dispose()


def test_truncated_caption_file_stops_before_any_image(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    archive = write_tar(tmp_path / "baidu_image0.tgz", [(f"{i}.jpg", jpeg(i)) for i in range(3)])
    data = gzip.compress("".join(f"{i}*****第{i}张图片的网页标题*****None\n" for i in range(3000)).encode())
    captions = tmp_path / "captions.txt.gz"
    captions.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestBrokeOff, match="no archive was read"):
        ingest_taisu(ledger, store, [archive], [captions])
    assert ledger.funnel() == {} and not list((tmp_path / "objects").rglob("*.jpg"))
    assert [(Path(s).name, r) for s, r, _ in ledger.issue_counts()] == [("captions.txt.gz", "truncated_input")]


# --------------------------------------------------------------------------- as users run it


def _cli(*args: str, url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")}
    env.update(TAISU_HOME=str(home), TAISU_DB_URL=url)
    script = Path(sys.executable).parent / "taisu-etl"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "taisu_etl.cli"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_truncated_gzip_fails_after_keeping_its_rows_status_shows_it_and_the_repair_clears_it(
    ledger_url: str, tmp_path: Path
) -> None:
    full = gzip.compress(_wukong(2000))
    path = tmp_path / "wukong_100m_5.csv.gz"
    path.write_bytes(full[: len(full) // 2])

    res = _cli("ingest", str(path), url=ledger_url, home=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: compressed data is truncated"), res.stderr
    assert "Traceback" not in res.stderr and "after line" in lines[0] and "taisu-etl status" in lines[0]

    status = _cli("status", url=ledger_url, home=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"{path}: truncated_input 1" in status.stdout and f"{path}: nul_char " in status.stdout
    assert "incomplete inputs" in status.stdout and f"{path} (after line " in status.stdout
    shown = json.loads(_cli("status", "--json", url=ledger_url, home=tmp_path).stdout)
    ((entry),) = shown["incomplete_inputs"]
    assert entry["source"] == str(path) and entry["after"].startswith("after line ")

    path.write_bytes(full)
    res = _cli("ingest", str(path), url=ledger_url, home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "new samples" in res.stdout and "nul_char" in res.stdout
    status = _cli("status", url=ledger_url, home=tmp_path)
    assert "incomplete inputs" not in status.stdout and "truncated_input" not in status.stdout
    assert f"{path}: nul_char 3" in status.stdout  # rows 299, 999 and 1699
