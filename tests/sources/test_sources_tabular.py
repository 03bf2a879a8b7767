"""URL + caption lists: Wukong CSV, TSV, JSON lines, LAION Parquet."""

from __future__ import annotations

import bz2
import gzip
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taisu_etl.errors import InputError
from taisu_etl.sources import BadRow, SourceRow, SourceStats, _io, read_csv, read_jsonl, read_parquet, read_source
from taisu_etl.urls import normalise_url

# Wukong's shape: header url,caption; Chinese captions; pandas-style quoting. Line numbers matter.
WUKONG_LINES = [
    b"url,caption",  # 1 header
    "http://img.example.com/a.jpg,一只猫在沙发上".encode(),  # 2 good
    'https://img.example.com/b.jpg,"北京,天安门广场"'.encode(),  # 3 good: quoted comma
    ",没有链接的图片".encode(),  # 4 missing_url
    "ftp://files.example.com/c.jpg,文件服务器上的图片".encode(),  # 5 bad_scheme
    b"http://img.example.com/d.jpg,\xff\xfe\xe5\x9d\x8f",  # 6 bad_utf8
    b"http://img.example.com/only-url",  # 7 unparsable: 1 field
    '"https://img.example.com/e.jpg","多行'.encode(),  # 8 good: caption spans 8-9
    '标题"'.encode(),  # 9
    'http://img.example.com/f.jpg,"引号""内部""的标题"'.encode(),  # 10 good: escaped quotes
    'http://img.example.com/g.jpg,"未闭合的引号'.encode(),  # 11 unparsable: stray quote
    "HTTP://IMG.Example.com:80/h.jpg#frag,大写的网址".encode(),  # 12 good, normalised
    b"",  # 13 blank: skipped
    "http://[::1,坏的地址".encode(),  # 14 unparsable URL
    "http://img.example.com/i.jpg,最后一行".encode(),  # 15 good
]


def wukong_csv(tmp_path: Path, name: str = "wukong_100m_0.csv", newline: bytes = b"\n") -> Path:
    path = tmp_path / name
    data = newline.join(WUKONG_LINES) + newline
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def split(records):
    good = [r for r in records if isinstance(r, SourceRow)]
    bad = [r for r in records if isinstance(r, BadRow)]
    return good, bad


def check_wukong(records, origin: str, newline: str = "\n") -> None:
    good, bad = split(records)
    assert [r.line for r in good] == [2, 3, 8, 10, 12, 15]
    assert [r.position for r in good][:2] == ["line 2", "line 3"]
    assert all(r.origin == origin for r in records)
    by_line = {r.line: r for r in good}
    assert by_line[2].caption == "一只猫在沙发上"
    assert by_line[3].caption == "北京,天安门广场"
    assert by_line[8].url == "https://img.example.com/e.jpg"
    assert by_line[8].caption == f"多行{newline}标题"  # a quoted newline is kept as written
    assert by_line[10].caption == '引号"内部"的标题'
    assert by_line[12].url == "HTTP://IMG.Example.com:80/h.jpg#frag"
    assert by_line[12].normalised_url == "http://img.example.com/h.jpg"
    assert by_line[2].normalised_url == normalise_url("http://img.example.com/a.jpg")
    assert Counter(r.reason for r in bad) == {"missing_url": 1, "bad_scheme": 1, "bad_utf8": 1, "unparsable": 3}
    assert [(r.line, r.reason) for r in bad] == [
        (4, "missing_url"),
        (5, "bad_scheme"),
        (6, "bad_utf8"),
        (7, "unparsable"),
        (11, "unparsable"),
        (14, "unparsable"),
    ]
    assert "ftp" in bad[1].detail
    assert "1 fields where the header has 2" in bad[3].detail
    assert "not closed" in bad[4].detail
    assert bad[0].where == f"{origin}:4"


def test_wukong_csv(tmp_path: Path) -> None:
    path = wukong_csv(tmp_path)
    check_wukong(list(read_csv(path)), str(path))


def test_wukong_csv_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "wukong_100m_3.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(WUKONG_LINES) + b"\r\n")
    records = list(read_csv(path))
    check_wukong(records, str(path), "\r\n")
    assert split(records)[0][0].caption == "一只猫在沙发上"  # no stray \r


def test_wukong_csv_gzip_and_misnamed_compression(tmp_path: Path) -> None:
    gz = wukong_csv(tmp_path, "wukong_100m_1.csv.gz")
    check_wukong(list(read_source(gz)), str(gz))
    # Compression is recognised by its bytes, not by its name.
    hidden = tmp_path / "wukong_100m_2.csv"
    hidden.write_bytes(bz2.compress(b"\n".join(WUKONG_LINES) + b"\n"))
    check_wukong(list(read_csv(hidden)), str(hidden))


def test_truncated_gzip_is_one_error_naming_the_line(tmp_path: Path) -> None:
    rows = b"url,caption\n" + b"".join(f"http://img.example.com/{i}.jpg,标题{i}\n".encode() for i in range(20000))
    data = gzip.compress(rows)
    path = tmp_path / "wukong_100m_9.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(InputError) as err:
        for record in read_csv(path):
            got.append(record)
    assert str(path) in str(err.value) and "truncated" in str(err.value)
    assert f"after line {len(got) + 1} " in str(err.value)  # the header plus every row yielded


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "list.tsv"
    path.write_text(
        "url\tcaption\twidth\n"
        "http://img.example.com/1.jpg\t逗号,不需要引号\t640\n"
        "mailto:someone@example.com\t不是网址\t1\n"
        "http://img.example.com/2.jpg\t第二张\t800\n",
        encoding="utf-8",
    )
    records = list(read_source(path, extra_columns=["width"]))
    good, bad = split(records)
    assert [(r.line, r.caption, r.extra) for r in good] == [
        (2, "逗号,不需要引号", {"width": "640"}),
        (4, "第二张", {"width": "800"}),
    ]
    assert [(r.line, r.reason) for r in bad] == [(3, "bad_scheme")]


def test_laion_csv_names_and_custom_names(tmp_path: Path) -> None:
    laion = tmp_path / "laion.csv"
    laion.write_text("URL,TEXT\nhttps://x.example.com/1.png,一张图\n", encoding="utf-8")
    (row,) = read_csv(laion)
    assert (row.url, row.caption) == ("https://x.example.com/1.png", "一张图")

    custom = tmp_path / "custom.csv"
    custom.write_text("id,link,title\n7,http://x.example.com/7.jpg,标题七\n", encoding="utf-8")
    (row,) = read_csv(custom, url_column="link", caption_column="title", extra_columns=["id"])
    assert (row.url, row.caption, row.extra) == ("http://x.example.com/7.jpg", "标题七", {"id": "7"})
    (row,) = read_csv(custom, url_column="link", caption_column=None)
    assert row.caption is None


def test_missing_columns_is_one_error_listing_what_was_found(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("link,title\nhttp://x.example.com/1.jpg,标题\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        list(read_csv(path))
    message = str(err.value)
    assert message.startswith(f"{path}:1: ")
    assert "'link'" in message and "'title'" in message and "url_column" in message
    with pytest.raises(InputError, match="caption_column"):
        list(read_csv(path, url_column="link"))


def test_empty_and_non_utf8_header(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="header"):
        list(read_csv(empty))
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("网址,标题\nhttp://x.example.com/1.jpg,中文标题\n".encode("gb18030"))
    with pytest.raises(InputError, match="gb18030"):
        list(read_csv(gbk))
    (row,) = read_csv(gbk, url_column="网址", caption_column="标题", encoding="gb18030")
    assert row.caption == "中文标题"


def test_stray_quote_costs_one_row_not_the_rest(tmp_path: Path) -> None:
    lines = ["url,caption", 'http://x.example.com/0.jpg,"从这里开始没有闭合']
    lines += [f"http://x.example.com/{i}.jpg,第{i}张" for i in range(1, 151)]
    path = tmp_path / "stray.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    good, bad = split(list(read_csv(path)))
    assert [(r.line, r.reason) for r in bad] == [(2, "unparsable")]
    assert "100 lines" in bad[0].detail
    assert [r.line for r in good] == list(range(3, 153))


def test_over_long_line_is_skipped_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_io, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.csv"
    path.write_text(
        "url,caption\nhttp://x.example.com/1.jpg," + "长" * 5000 + "\nhttp://x.example.com/2.jpg,短\n", encoding="utf-8"
    )
    good, bad = split(list(read_csv(path)))
    assert [(r.line, r.reason) for r in bad] == [(2, "unparsable")]
    assert "longer than 1000 bytes" in bad[0].detail
    assert [r.line for r in good] == [3]


JSONL = [
    b'{"url": "http://img.example.com/1.jpg", "caption": "\xe7\x8c\xab"}',  # 1 good
    b'{"url": "http://img.example.com/2.jpg", "caption": ',  # 2 unparsable (broken)
    b"[1, 2]",  # 3 unparsable (not an object)
    '{"caption": "无网址"}'.encode(),  # 4 missing_url
    '{"URL": "https://img.example.com/3.jpg", "TEXT": "LAION 键名"}'.encode(),  # 5 good via alias
    b'{"url": "http://img.example.com/4.jpg", "caption": "\xff"}',  # 6 bad_utf8
    b'{"url": "javascript:alert(1)", "caption": "x"}',  # 7 bad_scheme
    b'{"url": 12345, "caption": "x"}',  # 8 unparsable
    b"",  # 9 blank
    b'{"url": "http://img.example.com/5.jpg", "caption": null, "w": 3}',  # 10 good, no caption
]


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "urls.jsonl"
    path.write_bytes(b"\n".join(JSONL) + b"\n")
    good, bad = split(list(read_jsonl(path, extra_keys=["w"])))
    assert [(r.line, r.url, r.caption) for r in good] == [
        (1, "http://img.example.com/1.jpg", "猫"),
        (5, "https://img.example.com/3.jpg", "LAION 键名"),
        (10, "http://img.example.com/5.jpg", None),
    ]
    assert good[2].extra == {"w": 3} and good[0].extra == {}
    assert [(r.line, r.reason) for r in bad] == [
        (2, "unparsable"),
        (3, "unparsable"),
        (4, "missing_url"),
        (6, "bad_utf8"),
        (7, "bad_scheme"),
        (8, "unparsable"),
    ]
    assert all(r.position == f"line {r.line}" and r.origin == str(path) for r in bad)
    # read_source maps the table option names onto the JSON keys.
    named = tmp_path / "named.jsonl"
    named.write_text('{"link": "http://x.example.com/1.jpg", "title": "标题"}\n', encoding="utf-8")
    (row,) = read_source(named, url_column="link", caption_column="title")
    assert (row.url, row.caption) == ("http://x.example.com/1.jpg", "标题")


def laion_parquet(tmp_path: Path) -> Path:
    table = pa.table(
        {
            "SAMPLE_ID": pa.array(range(6), pa.int64()),
            "URL": [
                "https://img.example.com/0.jpg",
                None,
                "data:image/png;base64,AAAA",
                "http://img.example.com/3.jpg",
                "http://",
                "https://IMG.example.com/5.jpg",
            ],
            "TEXT": ["第零张", "没有网址", "内嵌数据", None, "坏网址", "第五张"],
            "WIDTH": [640, 480, 1, 800, 2, 1024],
            "HEIGHT": [480, 360, 1, 600, 2, 768],
            "similarity": [0.31, 0.29, 0.1, 0.33, 0.2, 0.35],
        }
    )
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=4)
    return path


def test_laion_parquet(tmp_path: Path) -> None:
    path = laion_parquet(tmp_path)
    records = list(read_parquet(path, batch_size=2, extra_columns=["WIDTH"]))
    good, bad = split(records)
    assert [(r.position, r.url, r.caption, r.extra) for r in good] == [
        ("row 1", "https://img.example.com/0.jpg", "第零张", {"WIDTH": 640}),
        ("row 4", "http://img.example.com/3.jpg", None, {"WIDTH": 800}),
        ("row 6", "https://IMG.example.com/5.jpg", "第五张", {"WIDTH": 1024}),
    ]
    assert good[2].normalised_url == "https://img.example.com/5.jpg"
    assert [(r.position, r.reason) for r in bad] == [
        ("row 2", "missing_url"),
        ("row 3", "bad_scheme"),
        ("row 5", "unparsable"),
    ]
    assert all(r.line is None for r in records)
    assert [r.url for r in read_source(path) if isinstance(r, SourceRow)] == [r.url for r in good]


def test_parquet_bad_utf8_and_wrong_columns(tmp_path: Path) -> None:
    offsets = pa.array([0, 6, 8], pa.int32()).buffers()[1]
    text = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer("好的".encode() + b"\xff\xfe")])
    path = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"url": ["http://x.example.com/1.jpg", "http://x.example.com/2.jpg"], "caption": text}), path
    )
    good, bad = split(list(read_parquet(path)))
    assert [(r.position, r.caption) for r in good] == [("row 1", "好的")]
    assert [(r.position, r.reason) for r in bad] == [("row 2", "bad_utf8")]

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"link": ["http://x.example.com/1.jpg"], "n": [1]}), other)
    with pytest.raises(InputError, match=r"found columns: 'link', 'n'.*url_column"):
        list(read_parquet(other))
    with pytest.raises(InputError, match="not text"):
        list(read_parquet(other, url_column="n", caption_column=None))


def test_stats_summary(tmp_path: Path) -> None:
    path = wukong_csv(tmp_path)
    stats = SourceStats()
    assert len(list(stats.track(read_csv(path)))) == 12
    assert (stats.read, stats.good, stats.bad_total) == (12, 6, 6)
    assert stats.bad == {"missing_url": 1, "bad_scheme": 1, "bad_utf8": 1, "unparsable": 3}
    assert stats.bad_by_origin[str(path)]["unparsable"] == 3
    summary = stats.summary()
    assert summary.splitlines()[0] == (
        "12 rows read: 6 good, 6 bad (bad_scheme 1, bad_utf8 1, missing_url 1, unparsable 3)"
    )
    assert f"{path}:5: scheme 'ftp'" in summary
    assert f"{path}:14:" in summary


def test_bad_row_refuses_unknown_reason() -> None:
    with pytest.raises(ValueError, match="ingest reason"):
        BadRow("f.csv", "line 1", "http_404", "not an ingest code")
    row = SourceRow("http://x/1.jpg", "c", "f.csv", "line 2", image=b"\xff" * 10_000, line=2)
    assert "xff" not in repr(row) and row.where == "f.csv:2"
