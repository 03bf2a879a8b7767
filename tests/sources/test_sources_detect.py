"""detect_format / read_source: the right reader, or one clear error for a file that lies about itself."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taisu_etl.errors import InputError
from taisu_etl.sources import SourceRow, detect_format, read_csv, read_jsonl, read_source

from .builders import jpeg, png, write_tar


def test_formats_by_name_and_content(tmp_path: Path) -> None:
    files = {
        "wukong_100m_0.csv": b"url,caption\nhttp://x.example.com/1.jpg,a\n",
        "list.tsv": b"url\tcaption\nhttp://x.example.com/1.jpg\ta\n",
        "urls.jsonl": b'{"url": "http://x.example.com/1.jpg", "caption": "a"}\n',
        "urls.json": b'{"url": "http://x.example.com/1.jpg", "caption": "a"}\n',
        "captions.jsonl": b'{"id": "1", "w": "a", "g": null}\n',
        "keyed.jsonl": b'{"1": {"w": "a", "g": null}}\n',
        "captions.json": b'{"1": {"w": "a", "g": null}}',
        "captions.txt": b"1*****a*****None\n",
        "urls.csv.gz": gzip.compress(b"url,caption\nhttp://x.example.com/1.jpg,a\n"),
        "no_suffix_csv": b"url,caption\nhttp://x.example.com/1.jpg,a\n",
        "no_suffix_tsv.dat": b"url\tcaption\nhttp://x.example.com/1.jpg\ta\n",
        "no_suffix_captions": b"1*****a*****None\n",
        "no_suffix_jsonl": b'{"URL": "http://x.example.com/1.jpg"}\n',
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    write_tar(tmp_path / "baidu_image10.tgz", [("1.jpg", jpeg(1))])
    write_tar(tmp_path / "part.tar", [("1.jpg", jpeg(1))], mode="w")
    write_tar(tmp_path / "archive_without_suffix", [("1.jpg", jpeg(1))])
    pq.write_table(pa.table({"URL": ["http://x.example.com/1.jpg"], "TEXT": ["a"]}), tmp_path / "laion.parquet")
    pq.write_table(pa.table({"URL": ["http://x.example.com/1.jpg"], "TEXT": ["a"]}), tmp_path / "laion_part_0")

    got = {p.name: detect_format(p) for p in sorted(tmp_path.iterdir())}
    assert got == {
        "archive_without_suffix": "taisu-archive",
        "baidu_image10.tgz": "taisu-archive",
        "captions.json": "taisu-captions",
        "captions.jsonl": "taisu-captions",
        "captions.txt": "taisu-captions",
        "keyed.jsonl": "taisu-captions",
        "laion.parquet": "parquet",
        "laion_part_0": "parquet",
        "list.tsv": "tsv",
        "no_suffix_captions": "taisu-captions",
        "no_suffix_csv": "csv",
        "no_suffix_jsonl": "jsonl",
        "no_suffix_tsv.dat": "tsv",
        "part.tar": "taisu-archive",
        "urls.csv.gz": "csv",
        "urls.json": "jsonl",
        "urls.jsonl": "jsonl",
        "wukong_100m_0.csv": "csv",
    }


def test_png_renamed_csv(tmp_path: Path) -> None:
    path = tmp_path / "wukong_100m_7.csv"
    path.write_bytes(png(3))
    for call in (lambda: detect_format(path), lambda: list(read_csv(path)), lambda: read_source(path)):
        with pytest.raises(InputError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"{path}: not a CSV file") and "PNG image" in message
        assert "\n" not in message


def test_files_that_are_not_what_they_claim(tmp_path: Path) -> None:
    cases = {
        "data.parquet": (b"url,caption\nhttp://x.example.com/1.jpg,a\n", "not a Parquet file: no PAR1"),
        "cut.parquet": (b"PAR1" + b"\0" * 100, "no PAR1 footer"),
        "urls.jsonl": (jpeg(1), "not a JSON-lines file: it looks like a JPEG image"),
        "list.tsv": (b"\0\0\0\0binary", "not a TSV file: it looks like binary data"),
        "baidu_image1.tgz": (b"just some text, long enough " * 30, "not a tar archive"),
        "captions.txt": ("这不是标题文件\n".encode(), "not a TaiSu caption file"),
        "utf16.csv": ("url,caption\n".encode("utf-16"), "UTF-16 text"),
        "mystery.bin": (b"just words without any separators\n", "cannot tell the format"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as err:
            detect_format(path)
        assert str(path) in str(err.value) and expected in str(err.value), name
    with pytest.raises(InputError, match="no such file"):
        detect_format(tmp_path / "absent.csv")


def test_read_source_dispatches_and_refuses_release_files(tmp_path: Path) -> None:
    path = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["http://x.example.com/1.jpg"], "TEXT": ["图"], "WIDTH": [5]}), path)
    (row,) = read_source(path, extra_columns=["WIDTH"])
    assert isinstance(row, SourceRow) and (row.caption, row.extra, row.position) == ("图", {"WIDTH": 5}, "row 1")

    tsv = tmp_path / "weird.txt"
    tsv.write_text("url\tcaption\nhttp://x.example.com/1.jpg\t图\n", encoding="utf-8")
    (row,) = read_source(tsv, fmt="tsv")
    assert row.caption == "图"

    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"1": {"w": "a", "g": None}}), encoding="utf-8")
    with pytest.raises(InputError, match="read_taisu"):
        read_source(captions)
    with pytest.raises(ValueError, match="unknown format"):
        read_source(tsv, fmt="xlsx")


def test_jsonl_reader_on_binary(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(gzip.compress(png(1)))  # compressed, and an image inside
    with pytest.raises(InputError, match="PNG image"):
        list(read_jsonl(path))
