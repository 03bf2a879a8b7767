"""The small parts: tar headers, the sorted-id merge, glob-to-LIKE, TXT fields, options."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest

from taisu_etl.release.captions import txt_field
from taisu_etl.release.diff import merge_diff
from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.options import LATEST, ReleaseOptions
from taisu_etl.release.selection import _like
from taisu_etl.release.tarwriter import TarWriter, ustar_header


@pytest.mark.parametrize("name,size", [("a.jpg", 0), ("0123456789abcdef0123456789abcdef.json", 12345), ("x" * 100, 8**11 - 1)])
def test_header_is_the_same_bytes_tarfile_writes(name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o644, 0, "", ""
    assert ustar_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT)


def test_header_refuses_what_ustar_cannot_hold() -> None:
    with pytest.raises(ValueError):
        ustar_header("x" * 101, 1)
    with pytest.raises(ValueError):
        ustar_header("a", 8**11)


@pytest.mark.parametrize("compress", [False, True])
def test_archive_reads_back_everywhere_and_hashes_what_it_wrote(tmp_path: Path, compress: bool) -> None:
    members = [(f"{i:032x}.jpg", bytes([i]) * (i * 97)) for i in range(40)]
    digests = []
    for run in ("a", "b"):
        w = TarWriter(tmp_path / run, compress=compress)
        for name, data in members:
            w.add(name, data)
        digests.append(w.close())
        assert digests[-1].sha256 == hashlib.sha256((tmp_path / run).read_bytes()).hexdigest()
        assert digests[-1].size == (tmp_path / run).stat().st_size
    assert digests[0] == digests[1]
    with tarfile.open(tmp_path / "a", "r:*") as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == members  # type: ignore[union-attr]
    listing = subprocess.run(["tar", "-tvf", str(tmp_path / "a")], check=True, capture_output=True, text=True).stdout
    assert len(listing.splitlines()) == 40 and "1970-01-01" in listing
    if compress:
        raw = (tmp_path / "a").read_bytes()
        assert raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0"  # no FNAME flag, mtime 0
        assert gzip.decompress(raw)[:100].rstrip(b"\0") == members[0][0].encode()
    else:
        assert (tmp_path / "a").stat().st_size % 10240 == 0


def test_merge_diff_streams_two_sorted_lists() -> None:
    old = ["a", "b", "d", "f"]
    new = ["b", "c", "d", "g", "h"]
    assert list(merge_diff(old, new)) == [("-", "a"), ("+", "c"), ("-", "f"), ("+", "g"), ("+", "h")]
    assert list(merge_diff([], ["x"])) == [("+", "x")] and list(merge_diff(["x"], [])) == [("-", "x")]
    with pytest.raises(ReleaseError, match="not sorted"):
        list(merge_diff(["b", "a"], []))


def test_glob_to_like_is_a_superset() -> None:
    assert _like("wukong/*.csv") == "wukong/%.csv"
    assert _like("a?b") == "a_b"
    assert _like("part_[0-9]%") == "part\\__\\%"
    assert _like("[") == "["


def test_txt_fields_cannot_break_the_line_format() -> None:
    assert txt_field(None) == "None"
    assert txt_field("一行\n两行\t三") == "一行 两行 三"
    assert txt_field("a*****b******c") == "a****b****c"


def test_options_are_canonical_and_checked() -> None:
    a = ReleaseOptions(formats=("parquet", "taisu"), sources=("b*", "a*", "b*"))
    assert a.formats == ("taisu", "parquet") and a.sources == ("a*", "b*")
    assert a.recipe("v1")["parent"] == "v1" and ReleaseOptions().parent == LATEST
    for bad in ({"shard_size": 0}, {"min_score": float("nan")}, {"formats": ()}, {"parent": "a/b"}, {"sources": ("",)}):
        with pytest.raises(ReleaseError):
            ReleaseOptions(**bad)  # type: ignore[arg-type]
