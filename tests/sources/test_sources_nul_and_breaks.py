"""NUL characters and inputs that break off, in every reader.

Postgres text cannot hold NUL, so every reader refuses a row whose stored fields carry one
(`nul_char`, with file and line), whatever the format. A compressed file cut mid-stream yields
whole rows up to the break, never part of the row it broke in, then one TruncatedInput naming
the last good line.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taisu_etl.errors import InputError
from taisu_etl.sources import BadRow, SourceRow, TruncatedInput, iter_caption_file, read_csv, read_jsonl, read_parquet, read_source, read_taisu

from .builders import jpeg

PAD = 9000  # rows after this many bytes are past the 8 KB the format checks sniff


def _padding_rows(n: int = 160) -> str:
    return "".join(f"http://img.example.com/pad{i}.jpg,填充行{i}的标题文字\n" for i in range(n))


def _no_nul_stored(records: list) -> None:
    for r in records:
        if isinstance(r, BadRow):
            assert "\x00" not in r.position and "\x00" not in r.detail, r


@pytest.mark.parametrize("sep", [",", "\t"])
def test_csv_and_tsv_nul_after_the_sniffed_head_is_one_bad_row(tmp_path: Path, sep: str) -> None:
    pad = _padding_rows().replace(",", sep)
    assert len(pad.encode()) > PAD
    body = (
        f"url{sep}caption\n{pad}"
        f"http://img.example.com/a.jpg{sep}标题里有\x00字符\n"
        f"http://img.exa\x00mple.com/b.jpg{sep}网址里有空字符\n"
        f"http://img.example.com/c.jpg{sep}最后一行\n"
    )
    path = tmp_path / ("list.tsv" if sep == "\t" else "list.csv")
    path.write_bytes(body.encode())
    records = list(read_source(path))
    bad = [r for r in records if isinstance(r, BadRow)]
    n = 1 + 160
    assert [(r.reason, r.line) for r in bad] == [("nul_char", n + 1), ("nul_char", n + 2)]
    assert "caption" in bad[0].detail and "URL" in bad[1].detail
    assert bad[0].where == f"{path}:{n + 1}"
    good = [r for r in records if isinstance(r, SourceRow)]
    assert len(good) == 161 and good[-1].caption == "最后一行"
    _no_nul_stored(records)


def test_csv_extra_columns_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    pad = _padding_rows().replace("\n", ",正常\n")
    path.write_text(f"url,caption,note\n{pad}http://a.example.com/2.jpg,标题,有\x00\n", encoding="utf-8")
    records = list(read_csv(path, extra_columns=["note"]))
    assert [type(r).__name__ for r in records] == ["SourceRow"] * 160 + ["BadRow"]
    assert records[-1].reason == "nul_char" and "'note'" in records[-1].detail
    # A column nobody asked for never reaches the ledger: a NUL there costs nothing.
    assert all(isinstance(r, SourceRow) for r in read_csv(path))


def test_jsonl_escaped_nul_in_caption_url_or_extra_key(tmp_path: Path) -> None:
    rows = [
        {"url": "http://j.example.com/1.jpg", "caption": "正常的标题", "w": "1"},
        {"url": "http://j.example.com/2.jpg", "caption": "标题\u0000结尾", "w": "2"},
        {"url": "http://j.example.com/\u00003.jpg", "caption": "网址有空字符", "w": "3"},
        {"url": "http://j.example.com/4.jpg", "caption": "额外字段", "w": "4\u0000"},
    ]
    path = tmp_path / "list.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert "\\u0000" in path.read_text(encoding="utf-8")  # as JSON writes it: no raw NUL in the file
    records = list(read_jsonl(path, extra_keys=["w"]))
    assert [(r.line, r.reason) for r in records if isinstance(r, BadRow)] == [(2, "nul_char"), (3, "nul_char"), (4, "nul_char")]
    assert [r.line for r in records if isinstance(r, SourceRow)] == [1]
    _no_nul_stored(records)


def test_parquet_nul_in_a_value(tmp_path: Path) -> None:
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"URL": ["https://l.example.org/1.png", "https://l.example.org/2.png"], "TEXT": ["好", "坏\x00"]}), path)
    records = list(read_parquet(path))
    assert isinstance(records[0], SourceRow)
    assert isinstance(records[1], BadRow) and (records[1].reason, records[1].position) == ("nul_char", "row 2")


def test_taisu_caption_forms_refuse_nul_in_id_w_g_and_url(tmp_path: Path) -> None:
    single = tmp_path / "captions.json"
    single.write_text(json.dumps({"1": {"w": "好", "g": None}, "2": {"w": "坏\u0000", "g": None}, "3\u0000": {"w": "id 坏", "g": None}}),
                      encoding="utf-8")
    lines = tmp_path / "captions.jsonl"
    lines.write_text(
        json.dumps({"id": "4", "w": "好", "g": "生成\u0000"}) + "\n" + json.dumps({"id": "5", "w": "好", "url": "http://x.example.com/\u0000"}) + "\n",
        encoding="utf-8",
    )
    txt = tmp_path / "captions.txt"
    txt.write_bytes(("".join(f"p{i}*****填充标题{i}*****None\n" for i in range(400)) + "6*****有\x00的标题*****None\n").encode())
    assert txt.stat().st_size > PAD

    got = {p.name: list(iter_caption_file(p)) for p in (single, lines, txt)}
    assert [(r.position, r.reason) for r in got["captions.json"] if isinstance(r, BadRow)] == [("entry 2", "nul_char"), ("entry 3", "nul_char")]
    assert [(r.line, r.reason) for r in got["captions.jsonl"] if isinstance(r, BadRow)] == [(1, "nul_char"), (2, "nul_char")]
    assert [(r.line, r.reason) for r in got["captions.txt"] if isinstance(r, BadRow)] == [(401, "nul_char")]
    for records in got.values():
        _no_nul_stored(records)


def test_archive_member_name_with_nul_is_a_damaged_member(tmp_path: Path) -> None:
    # A pax header can carry any name; the id and position made from it would reach the ledger.
    path = tmp_path / "baidu_image0.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("1.jpg", "x" * 120 + "2\x00.jpg"):
            data = jpeg(len(name))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    captions = tmp_path / "c.txt"
    captions.write_text("1*****一*****None\n", encoding="utf-8")
    records = list(read_taisu([path], [captions]))
    assert [r.source_id for r in records if isinstance(r, SourceRow)] == ["1"]
    (bad,) = [r for r in records if isinstance(r, BadRow)]
    assert bad.reason == "damaged_member" and "NUL" in bad.detail and "\\x00" in bad.position
    _no_nul_stored(records)


# --------------------------------------------------------------------------- inputs that break off

WUKONG = ["url,caption"] + [f"http://img.example.com/{i}.jpg,标题{i}{'很长' * (i % 37)}" for i in range(4000)]
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_a_cut_stream_yields_whole_rows_up_to_the_break_then_names_the_last_good_line(tmp_path: Path, kind: str) -> None:
    data = COMPRESSORS[kind](("\n".join(WUKONG) + "\n").encode())
    path = tmp_path / f"wukong.csv.{kind}"
    seen = set()
    for cut in [*range(40, len(data), len(data) // 25), len(data) - 1]:
        path.write_bytes(data[:cut])
        got: list = []
        with pytest.raises(TruncatedInput) as err:
            got.extend(read_source(path))
        # Never a piece of the line the data broke in: a shortened caption would be a new pair,
        # and ingesting the repaired file would then add that row a second time.
        assert all(isinstance(r, SourceRow) and f"{r.url},{r.caption}" == WUKONG[r.line - 1] for r in got), cut
        last = got[-1].line if got else None
        expected = (f"after line {last}",) if last else ("before the first line", "after line 1")  # 1: the header
        assert err.value.position in expected, (cut, err.value.position)
        assert isinstance(err.value, InputError) and str(path) in str(err.value) and "\n" not in str(err.value)
        assert err.value.bad_row().reason == "truncated_input"
        seen.add(len(got))
    # Broke before any row, after all of them, and (but in bzip2's 900 KB blocks) in between.
    assert 0 in seen and len(WUKONG) - 1 in seen and len(seen) > (1 if kind == "bz2" else 5)


def test_a_small_cut_gzip_still_yields_the_rows_before_the_break(tmp_path: Path) -> None:
    # Under the 8 KB the format check reads: the check must not refuse the file for its end.
    data = gzip.compress(("\n".join(WUKONG[:60]) + "\n").encode())
    path = tmp_path / "small.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps({"url": f"http://s.example.com/{i}.jpg", "caption": f"标题{i}"}) + "\n"
                                           for i in range(60)).encode())[:-12])
    got: list = []
    with pytest.raises(TruncatedInput) as err:
        got.extend(read_jsonl(path))
    assert len(got) > 30 and err.value.position == f"after line {len(got)}"
    path = tmp_path / "small.csv.gz"
    path.write_bytes(data[:-12])
    got = []
    with pytest.raises(TruncatedInput):
        got.extend(read_source(path))
    assert len(got) > 30


def test_corrupt_parquet_data_is_a_break_after_the_last_good_row(tmp_path: Path) -> None:
    path = tmp_path / "part-1.parquet"
    n = 3000
    pq.write_table(pa.table({"url": [f"http://p.example.com/{i}.jpg" for i in range(n)], "caption": [f"标题{i}" * 5 for i in range(n)]}),
                   path, row_group_size=500, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(3).column(1)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset + 40: column.data_page_offset + 240] = b"\xab" * 200
    path.write_bytes(bytes(data))
    got: list = []
    with pytest.raises(TruncatedInput) as err:
        got.extend(read_parquet(path, batch_size=500))
    assert len(got) == 1500 and err.value.position == "after row 1500" and "\n" not in str(err.value)


def test_a_broken_single_json_object_names_the_last_whole_entry(tmp_path: Path) -> None:
    text = json.dumps({str(i): {"w": f"标题{i}", "g": None} for i in range(50)}, ensure_ascii=False)
    path = tmp_path / "captions.json"
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    got: list = []
    with pytest.raises(TruncatedInput) as err:
        got.extend(iter_caption_file(path))
    assert got and err.value.position == f"after entry {len(got)}"
