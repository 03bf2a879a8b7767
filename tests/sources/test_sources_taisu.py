"""TaiSu's release: image tar parts joined with captions in its three published forms."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from taisu_etl.errors import InputError
from taisu_etl.sources import BadRow, CaptionRecord, SourceRow, caption_form, iter_caption_file, read_taisu
from taisu_etl.sources import taisu as taisu_module

from .builders import jpeg, png, write_tar


def release(tmp_path: Path) -> tuple[list[Path], list[Path], dict[str, bytes]]:
    """Two .tgz parts and a plain .tar, captions split over the three forms."""
    images = {i: jpeg(int(i)) for i in ("0", "1", "3", "5", "10", "12", "20", "21")}
    images["11"] = png(11)
    archives = [
        write_tar(
            tmp_path / "baidu_image0.tgz",
            [
                ("0.jpg", images["0"]),
                ("1.jpg", images["1"]),
                ("2.jpg", b"<html>not an image</html>"),  # damaged, but its caption has an image
                ("3.jpg", images["3"]),  # no caption record at all
                ("5.jpg", images["5"]),  # caption record with neither w nor g
            ],
        ),
        write_tar(
            tmp_path / "baidu_image1.tgz",
            [
                ("baidu_image1", None),
                ("baidu_image1/10.jpg", images["10"]),
                ("baidu_image1/11.png", images["11"]),
                ("baidu_image1/12.jpg", images["12"]),
            ],
        ),
        write_tar(tmp_path / "extra.tar", [("20.jpg", images["20"]), ("21.jpg", images["21"])], mode="w"),
    ]
    single = tmp_path / "captions.json"
    single.write_text(
        json.dumps(
            {
                "0": {"w": "一只猫在沙发上", "g": "a cat on a sofa"},
                "1": {"w": "北京天安门", "g": None},
                "2": {"w": "损坏的图片", "g": None},
                "10": {"w": "第十张", "g": "生成的第十张"},
                "99": {"w": "这条标题没有图片", "g": None},
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ),
        encoding="utf-8",
    )
    lines = tmp_path / "captions.jsonl"
    lines.write_text(
        '{"id": "11", "w": "一张PNG", "g": "a png"}\n'
        '{"12": {"w": "单键形式", "g": null}}\n'
        '{"id": "13", "w": \n'
        '{"id": 20, "w": "带网址", "g": "with a url", "url": "http://img.example.com/20.jpg"}\n',
        encoding="utf-8",
    )
    txt = tmp_path / "captions.txt"
    txt.write_text(
        "21*****网页标题*****None\n22*****None*****只有生成的标题\n这一行没有分隔符\n5*****None*****None\n",
        encoding="utf-8",
    )
    return archives, [single, lines, txt], {k: v for k, v in images.items()}


def test_read_taisu_joins_images_and_captions(tmp_path: Path) -> None:
    archives, captions, images = release(tmp_path)
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    records = list(read_taisu(archives, captions, index_dir=index_dir))
    good = [r for r in records if isinstance(r, SourceRow)]
    bad = [r for r in records if isinstance(r, BadRow)]

    assert [(r.source_id, r.caption, r.generated_caption) for r in good] == [
        ("0", "一只猫在沙发上", "a cat on a sofa"),
        ("1", "北京天安门", None),
        ("10", "第十张", "生成的第十张"),
        ("11", "一张PNG", "a png"),
        ("12", "单键形式", None),
        ("20", "带网址", "with a url"),
        ("21", "网页标题", None),
    ]
    for row in good:
        assert row.image == images[row.source_id]
    assert [(r.origin, r.position, r.image_name) for r in good[2:4]] == [
        (str(archives[1]), "member baidu_image1/10.jpg", "baidu_image1/10.jpg"),
        (str(archives[1]), "member baidu_image1/11.png", "baidu_image1/11.png"),
    ]
    assert good[5].url == "http://img.example.com/20.jpg" and good[5].normalised_url == "http://img.example.com/20.jpg"
    assert all(r.url is None for r in good if r.source_id != "20")

    assert Counter(r.reason for r in bad) == {"unparsable": 2, "damaged_member": 1, "no_caption": 2, "no_image": 2}
    assert [(r.origin, r.position, r.reason, r.line) for r in bad] == [
        (str(captions[1]), "line 3", "unparsable", 3),
        (str(captions[2]), "line 3", "unparsable", 3),
        (str(archives[0]), "member 2.jpg", "damaged_member", None),
        (str(archives[0]), "member 3.jpg", "no_caption", None),
        (str(archives[0]), "member 5.jpg", "no_caption", None),
        (str(captions[0]), "entry 5", "no_image", None),
        (str(captions[2]), "line 2", "no_image", 2),
    ]
    assert "not a JPEG/PNG/WebP/GIF" in bad[2].detail
    assert "'99'" in bad[5].detail and "'22'" in bad[6].detail
    assert "neither w nor g" in bad[4].detail
    assert list(index_dir.iterdir()) == []  # the caption index is removed afterwards


def test_truncated_tgz_is_recorded_and_the_next_archive_still_read(tmp_path: Path) -> None:
    members = [(f"{i}.jpg", jpeg(i, size=48, noise=True)) for i in range(30, 40)]
    whole = write_tar(tmp_path / "whole.tgz", members)
    data = whole.read_bytes()
    cut = tmp_path / "baidu_image7.tgz"
    cut.write_bytes(data[: len(data) * 6 // 10])
    after = write_tar(tmp_path / "baidu_image8.tgz", [("40.jpg", jpeg(40))])
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"{i}*****标题{i}*****None\n" for i in range(30, 41)), encoding="utf-8")

    records = list(read_taisu([cut, after], [captions]))
    from_cut = [r for r in records if r.origin == str(cut)]
    damaged = [r for r in from_cut if isinstance(r, BadRow)]
    images = [r for r in from_cut if isinstance(r, SourceRow)]
    assert len(damaged) == 1 and damaged[0].reason == "truncated_input"
    assert "truncated" in damaged[0].detail and "rest" in damaged[0].detail
    assert 1 <= len(images) < 10
    assert [r.source_id for r in images] == [str(i) for i in range(30, 30 + len(images))]
    assert [r.source_id for r in records if isinstance(r, SourceRow) and r.origin == str(after)] == ["40"]
    # The captions of the lost members are not called image-less: their images may be in the lost
    # part, and a re-run on the repaired archive would leave those no_image issues behind, wrong.
    assert not [r for r in records if isinstance(r, BadRow) and r.reason == "no_image"]


def test_truncated_plain_tar_at_a_member_boundary(tmp_path: Path) -> None:
    a, b = jpeg(1), jpeg(2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("1.jpg", a), ("2.jpg", b)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        boundary = tf.offset  # end of 2.jpg's padded data, before the end-of-archive marker
    path = tmp_path / "cut.tar"
    path.write_bytes(buf.getvalue()[:boundary])
    captions = tmp_path / "c.txt"
    captions.write_text("1*****一*****None\n2*****二*****None\n", encoding="utf-8")
    records = list(read_taisu([path], [captions]))
    assert [r.source_id for r in records if isinstance(r, SourceRow)] == ["1", "2"]
    (bad,) = [r for r in records if isinstance(r, BadRow)]
    assert (bad.reason, bad.position) == ("truncated_input", "after member 2.jpg")
    assert "end-of-archive" in bad.detail


def test_odd_members_cost_one_member_each(tmp_path: Path) -> None:
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in (
            ("../escape.jpg", jpeg(1)),
            ("big.jpg", jpeg(2, size=64, noise=True)),
            ("notes.txt", b"hello"),
            ("empty.jpg", b""),
            ("ok.jpg", jpeg(3)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"id": "ok", "w": "好", "g": null}\n{"id": "big", "w": "大", "g": null}\n', encoding="utf-8")
    records = list(read_taisu([path], [captions], max_member_bytes=2000))
    assert [r.source_id for r in records if isinstance(r, SourceRow)] == ["ok"]
    bad = [(r.position, r.reason) for r in records if isinstance(r, BadRow)]
    assert bad == [
        ("member ../escape.jpg", "damaged_member"),
        ("member big.jpg", "damaged_member"),
        ("member notes.txt", "damaged_member"),
        ("member empty.jpg", "damaged_member"),
        ("member link.jpg", "damaged_member"),
    ]  # "big" had a member, even if refused: no no_image for it


def test_not_an_archive_fails_before_anything_is_read(tmp_path: Path) -> None:
    fake = tmp_path / "baidu_image3.tgz"
    fake.write_bytes(png(1))
    captions = tmp_path / "c.txt"
    captions.write_text("1*****一*****None\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_taisu([fake], [captions])
    assert str(fake) in str(err.value) and "PNG" in str(err.value)
    with pytest.raises(InputError, match="no such file"):
        read_taisu([tmp_path / "missing.tgz"], [captions])


# --------------------------------------------------------------------------- caption files


def test_caption_forms(tmp_path: Path) -> None:
    entries = {"100": {"w": "网页标题", "g": "生成标题"}, "101": {"w": None, "g": "只有生成"}}
    single = tmp_path / "single.json"
    single.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(entries, ensure_ascii=False, indent=2), encoding="utf-8")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"100": entries["100"]}, ensure_ascii=False), encoding="utf-8")
    keyed = tmp_path / "keyed.jsonl"
    keyed.write_text(
        "".join(json.dumps({k: v}, ensure_ascii=False) + "\n" for k, v in entries.items()), encoding="utf-8"
    )
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": k, **v}, ensure_ascii=False) + "\n" for k, v in entries.items()), encoding="utf-8"
    )
    txt = tmp_path / "captions.txt"
    txt.write_text("100*****网页标题*****生成标题\n101*****None*****只有生成\n", encoding="utf-8")
    zipped = tmp_path / "single.json.gz"
    zipped.write_bytes(gzip.compress(single.read_bytes()))

    forms = {p.name: caption_form(p) for p in (single, pretty, one, keyed, rows, txt, zipped)}
    assert forms == {
        "single.json": "json-object",
        "pretty.json": "json-object",
        "one.json": "json-object",
        "keyed.jsonl": "jsonl",
        "rows.jsonl": "jsonl",
        "captions.txt": "txt",
        "single.json.gz": "json-object",
    }
    expected = [("100", "网页标题", "生成标题"), ("101", None, "只有生成")]
    for path in (single, pretty, keyed, rows, txt, zipped):
        got = list(iter_caption_file(path))
        assert all(isinstance(r, CaptionRecord) for r in got)
        assert [(r.id, r.w, r.g) for r in got] == expected, path.name
    assert [r.position for r in iter_caption_file(single)] == ["entry 1", "entry 2"]
    assert [(r.position, r.line) for r in iter_caption_file(txt)] == [("line 1", 1), ("line 2", 2)]


def test_caption_lines_with_problems(tmp_path: Path) -> None:
    txt = tmp_path / "captions.txt"
    txt.write_bytes(
        "1*****好*****None\n".encode()
        + b"2*****\xff\xfe*****None\n"
        + "3*****太多*****部分*****了\n".encode()
        + b"\n"
        + "4.jpg*****带扩展名的编号\n".encode()
    )
    got = list(iter_caption_file(txt))
    assert [(r.line, r.reason) for r in got if isinstance(r, BadRow)] == [(2, "bad_utf8"), (3, "unparsable")]
    assert [(r.id, r.w, r.g, r.line) for r in got if isinstance(r, CaptionRecord)] == [
        ("1", "好", None, 1),
        ("4", "带扩展名的编号", None, 5),
    ]


def test_broken_single_object_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    text = json.dumps({str(i): {"w": f"标题{i}", "g": None} for i in range(50)}, ensure_ascii=False)
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(InputError) as err:
        list(iter_caption_file(path))
    assert str(path) in str(err.value) and "broken after entry" in str(err.value)


def test_not_a_caption_file(tmp_path: Path) -> None:
    path = tmp_path / "captions.txt"
    path.write_text("url,caption\nhttp://x.example.com/1.jpg,标题\n", encoding="utf-8")
    with pytest.raises(InputError, match="not a TaiSu caption file"):
        caption_form(path)


class CountingReader:
    """A binary file that records every read size, to prove the JSON object is parsed in chunks."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")
        self.sizes: list[int] = []
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        self.sizes.append(size)
        data = self._f.read(size)
        self.total += len(data)
        return data

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def test_single_json_object_is_parsed_incrementally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "captions.json"
    n = 20_000
    with path.open("w", encoding="utf-8") as f:  # written in pieces too: one line, never one string
        f.write("{")
        for i in range(n):
            f.write(
                ("," if i else "")
                + json.dumps(str(i))
                + ":"
                + json.dumps({"w": f"网页标题{i}", "g": f"生成{i}"}, ensure_ascii=False)
            )
        f.write("}")
    size = path.stat().st_size
    assert b"\n" not in path.read_bytes()
    readers: list[CountingReader] = []

    def counting_open(p: object) -> CountingReader:
        readers.append(CountingReader(Path(str(p))))
        return readers[-1]

    monkeypatch.setattr(taisu_module, "open_binary", counting_open)
    records = iter_caption_file(path, form="json-object")
    first = next(records)
    assert (first.id, first.w, first.g) == ("0", "网页标题0", "生成0")
    assert readers[-1].total < size // 4  # the first entry came before most of the file was read
    rest = list(records)
    assert len(rest) == n - 1 and rest[-1].id == str(n - 1) and rest[-1].position == f"entry {n}"
    assert max(s for s in readers[-1].sizes if s is not None) <= 64 * 1024
    assert all(s is not None and s >= 0 for s in readers[-1].sizes)  # never read(-1): never the whole file

    # Form detection stops after the first entries too.
    assert caption_form(path) == "json-object"
    assert readers[-1].total < size // 4


@pytest.mark.parametrize("mode,suffix", [("w:gz", ".tgz"), ("w", ".tar")])
def test_any_truncation_is_one_break_and_keeps_what_came_before(
    tmp_path: Path, mode: str, suffix: str
) -> None:
    members = [(f"{i}.jpg", jpeg(i, size=32, noise=True)) for i in range(6)]
    whole = write_tar(tmp_path / f"whole{suffix}", members, mode=mode).read_bytes()
    captions = tmp_path / "c.txt"
    captions.write_text("".join(f"{i}*****标题*****None\n" for i in range(6)), encoding="utf-8")
    data_end = len(whole) if mode == "w:gz" else 512 * 2 + sum(512 + -(-len(d) // 512) * 512 for _, d in members[:-1])
    kept = []
    for cut in range(512, data_end, max(1, data_end // 40)):
        path = tmp_path / f"baidu_image0{suffix}"
        path.write_bytes(whole[:cut])
        records = list(read_taisu([path], [captions]))
        damaged = [r for r in records if isinstance(r, BadRow) and r.reason == "truncated_input"]
        assert len(damaged) == 1, (cut, damaged)
        assert not [r for r in records if isinstance(r, BadRow) and r.reason == "damaged_member"], cut
        kept.append(sum(isinstance(r, SourceRow) for r in records))
    assert kept == sorted(kept) and kept[0] == 0 and kept[-1] >= 4
