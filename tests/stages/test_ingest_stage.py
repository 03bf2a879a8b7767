"""Ingest into the ledger: Wukong CSV, LAION Parquet, JSON lines and TaiSu's archives."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.errors import InputError
from taisu_etl.stages.ingest import ingest_file, ingest_taisu
from taisu_etl.storage import LocalObjectStore
from tests.sources.builders import jpeg, write_tar

WUKONG = (
    "url,caption\n"
    "http://img.example.com/a.jpg,清晨的西湖，薄雾笼罩着断桥\n"
    ",没有网址的一行\n"
    "ftp://files.example.com/b.jpg,不是网页链接\n"
    "HTTP://IMG.example.com:80/a.jpg#x,清晨的西湖，薄雾笼罩着断桥\n"
    "http://img.example.com/c.jpg?w=500&h=300,\"一碗红烧牛肉面,加了香菜\"\n"
)


def test_wukong_csv_rows_become_samples_and_bad_rows_issues(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "wukong_100m_0.csv"
    path.write_text(WUKONG, encoding="utf-8")
    report = ingest_file(ledger, path)
    assert (report.added.inserted, report.added.duplicates, report.stats.bad_total) == (2, 1, 2)
    assert {(Path(s).name, r) for s, r, _ in ledger.issue_counts()} == {("wukong_100m_0.csv", "missing_url"), ("wukong_100m_0.csv", "bad_scheme")}
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT url, caption, source_pos, taisu_id FROM sample ORDER BY id")).all()
        positions = sorted(conn.execute(sa.text("SELECT position FROM ingest_issue")).scalars())
    assert rows[0].url == "http://img.example.com/a.jpg" and rows[0].source_pos == "line 2"
    assert rows[1].caption == "一碗红烧牛肉面,加了香菜" and rows[1].url.endswith("?w=500&h=300")
    # TaiSu's slice is characters 8-48 of the raw URL: written for https://, it drops the first
    # letter of an http:// host, and the compatibility id must do the same to match their release.
    assert rows[0].taisu_id == "mgexamplecomajpg"
    assert positions == ["line 3", "line 4"]
    # Re-ingesting the same file adds nothing, and records no issue twice.
    again = ingest_file(ledger, path)
    assert again.added.inserted == 0 and sum(n for *_, n in ledger.issue_counts()) == 2


def test_laion_parquet_and_jsonl_work_as_is(ledger: Ledger, tmp_path: Path) -> None:
    table = pa.table({"URL": ["https://laion.example.org/1.png", "https://laion.example.org/2.png"], "TEXT": ["一只柴犬在雪地里奔跑", "夜晚的上海外滩"],
                      "WIDTH": [640, 800]})
    pq.write_table(table, tmp_path / "part-00000.parquet")
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"url": "http://j.example.com/1.jpg", "caption": "桂林山水甲天下"}, ensure_ascii=False) + "\n{broken\n", encoding="utf-8"
    )
    assert ingest_file(ledger, tmp_path / "part-00000.parquet").added.inserted == 2
    report = ingest_file(ledger, tmp_path / "list.jsonl")
    assert report.added.inserted == 1 and dict(report.stats.bad) == {"unparsable": 1}
    assert ledger.funnel() == {"ingested": 3}


def test_a_file_that_is_not_what_it_claims_is_one_error(ledger: Ledger, tmp_path: Path) -> None:
    fake = tmp_path / "wukong_100m_1.csv"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(InputError, match="wukong_100m_1.csv"):
        ingest_file(ledger, fake)
    assert ledger.funnel() == {}


def test_taisu_archives_go_to_the_store_and_captions_to_the_ledger(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    write_tar(tmp_path / "baidu_image0.tgz", [("img1baiducomitu1.jpg", jpeg(1, 32)), ("x2.jpg", jpeg(2, 32)), ("bad.jpg", b"not an image")])
    write_tar(tmp_path / "baidu_image1.tar", [("x3.jpg", jpeg(3, 32))], mode="w")
    (tmp_path / "captions.txt").write_text(
        "img1baiducomitu1*****北京故宫的红墙与金色屋顶*****None\n"
        "x3*****None*****一座古老的石桥\n"
        "lost*****一张找不到图片的说明*****None\n",
        encoding="utf-8",
    )
    report = ingest_taisu(ledger, store, [tmp_path / "baidu_image0.tgz", tmp_path / "baidu_image1.tar"], [tmp_path / "captions.txt"])
    assert report.added.inserted == 2
    issues = {(Path(s).name, r): n for s, r, n in ledger.issue_counts()}
    assert issues == {("baidu_image0.tgz", "no_caption"): 1, ("baidu_image0.tgz", "damaged_member"): 1, ("captions.txt", "no_image"): 1}
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT taisu_id, caption, gen_caption, object_key, sha256 FROM sample ORDER BY taisu_id")).all()
    assert [(r.taisu_id, r.caption, r.gen_caption) for r in rows] == [
        ("img1baiducomitu1", "北京故宫的红墙与金色屋顶", None), ("x3", "", "一座古老的石桥")
    ]
    for r in rows:
        assert store.get(r.object_key) and r.object_key.endswith(f"{r.sha256}.jpg")
    # Re-ingesting the release adds nothing and stores nothing new.
    assert ingest_taisu(ledger, store, [tmp_path / "baidu_image0.tgz", tmp_path / "baidu_image1.tar"], [tmp_path / "captions.txt"]).added.inserted == 0
