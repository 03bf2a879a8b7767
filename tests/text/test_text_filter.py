"""The filter as a whole: order, decisions, configuration, word lists, jieba offline."""

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from taisu_etl.errors import ConfigError
from taisu_etl.text import DEFAULT_ORDER, TextDecision, TextFilter, TextFilterConfig
from taisu_etl.text.lexicon import WORDLIST_NAMES, load_wordlist, shipped_wordlist_dir
from taisu_etl.vocab import REASONS, Stage


def test_defaults() -> None:
    c = TextFilterConfig()
    assert (c.min_chars, c.max_chars, c.min_words, c.max_words) == (5, 50, None, None)
    assert (c.min_cjk_ratio, c.max_repeat, c.pii_action, c.t2s) == (0.4, 4, "reject", False)
    assert (c.max_caption_frequency, c.wordlist_dir, c.disabled) == (10, None, ())
    assert c.order == DEFAULT_ORDER and c.order[0] == "cleanup" and c.order[-1] == "words"


def test_kept_caption(default_filter: TextFilter) -> None:
    d = default_filter.check("一只可爱的橘猫趴在窗台上晒太阳")
    assert d == TextDecision(True, "一只可爱的橘猫趴在窗台上晒太阳", None, None, {})
    d = default_filter.check("<b>西湖断桥残雪</b>&nbsp;高清壁纸 😀")
    assert d == TextDecision(True, "西湖断桥残雪 高清壁纸", None, None, {"edits": ["cleanup"]})


def test_decision_is_frozen(default_filter: TextFilter) -> None:
    d = default_filter.check("一只可爱的橘猫趴在窗台上晒太阳")
    with pytest.raises(AttributeError):
        d.keep = False  # type: ignore[misc]


def test_every_reason_is_a_text_code(default_filter: TextFilter) -> None:
    captions = ["", "图片", "故宫雪景", "IMG_1234", "123456", "哈哈哈哈哈哈", "加微信领取优惠券",
                "兼职刷单 日赚500", "联系人13812345678", "Hello world from Beijing 你好", "https://a.cn/x.jpg"]
    for d in default_filter.check_many(captions):
        assert not d.keep
        assert REASONS[d.reason][0] is Stage.TEXT


def test_first_failing_rule_is_reported() -> None:
    # This caption fails two rules when max_chars is 10: pii and length.
    caption = "高清风景壁纸 联系13812345678"
    both = TextFilterConfig(max_chars=10)
    assert TextFilter(both).check(caption).reason == "pii"  # pii comes before length by default
    swapped = list(DEFAULT_ORDER)
    swapped.remove("length")
    swapped.insert(swapped.index("pii"), "length")
    assert TextFilter(both.model_copy(update={"order": tuple(swapped)})).check(caption).reason == "text_too_long"


def test_order_picks_the_more_specific_reason(default_filter: TextFilter) -> None:
    # "图片" is also too short and "123456" also has no Chinese: the specific rule speaks first.
    assert default_filter.check("图片").reason == "boilerplate"
    assert default_filter.check("123456").reason == "symbols_only"


def test_disabled_rules() -> None:
    f = TextFilter(TextFilterConfig(disabled=("boilerplate", "advertising")))
    assert "boilerplate" not in f.rule_names and "advertising" not in f.rule_names
    assert f.check("图片").reason == "text_too_short"
    assert f.check("加微信领取优惠券 夏季新款").keep


def test_without_cleanup_rules_see_raw_text() -> None:
    f = TextFilter(TextFilterConfig(disabled=("cleanup",)))
    d = f.check("<b>故宫雪景</b>")
    assert d.keep and d.text == "<b>故宫雪景</b>"


def test_t2s_in_the_filter() -> None:
    f = TextFilter(TextFilterConfig(t2s=True))
    d = f.check("臺灣阿里山的日出雲海")
    assert d.keep and d.text == "台湾阿里山的日出云海"
    assert TextFilter().check("臺灣阿里山的日出雲海").text == "臺灣阿里山的日出雲海"


def test_check_many_with_frequencies(default_filter: TextFilter) -> None:
    out = default_filter.check_many(["夏季新款连衣裙女", "夏季新款连衣裙女", "图片"], [3, 30, 1])
    assert [d.reason for d in out] == [None, "over_frequent", "boilerplate"]
    with pytest.raises(ValueError):
        default_filter.check_many(["a"], [1, 2])


def test_no_op_rules_are_left_out() -> None:
    f = TextFilter(TextFilterConfig(max_repeat=None, min_cjk_ratio=0, max_caption_frequency=None))
    assert {"repeated_char", "cjk_ratio", "over_frequent", "words"}.isdisjoint(f.rule_names)
    assert "words" in TextFilter(TextFilterConfig(max_words=20)).rule_names


# --- configuration ----------------------------------------------------------------------------


def test_config_from_recipe_toml(tmp_path: Path) -> None:
    recipe = tomllib.loads(
        textwrap.dedent(
            """
            [text]
            min_chars = 4
            max_chars = 64
            min_words = 2
            pii_action = "mask"
            t2s = true
            disabled = ["advertising"]
            max_caption_frequency = 500
            """
        )
    )
    c = TextFilterConfig.model_validate(recipe["text"])
    assert (c.min_chars, c.max_chars, c.min_words, c.pii_action, c.t2s) == (4, 64, 2, "mask", True)
    assert c.disabled == ("advertising",) and c.max_caption_frequency == 500
    assert TextFilterConfig.model_validate(c.model_dump(mode="json")) == c


@pytest.mark.parametrize(
    "bad",
    [
        {"min_chars": 10, "max_chars": 5},
        {"min_words": 5, "max_words": 2},
        {"min_cjk_ratio": 1.5},
        {"pii_action": "drop"},
        {"order": ["cleanup", "lenght"]},
        {"order": ["cleanup", "length", "length"]},
        {"disabled": ["nonsense"]},
        {"min_char": 5},  # typo: unknown keys are refused, not ignored
    ],
)
def test_config_rejects(bad: dict) -> None:
    with pytest.raises(ValidationError):
        TextFilterConfig(**bad)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        TextFilterConfig().min_chars = 3  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    for name, info in TextFilterConfig.model_fields.items():
        assert info.description, name


# --- word lists --------------------------------------------------------------------------------


def test_shipped_wordlists() -> None:
    assert len(load_wordlist("boilerplate")) >= 30
    assert len(load_wordlist("advertising")) >= 30
    assert len(load_wordlist("blacklist")) >= 30
    for name in WORDLIST_NAMES:
        phrases = load_wordlist(name)
        assert all(p and not p.startswith("#") and p == p.strip() for p in phrases)
    assert "查看源网页" in load_wordlist("boilerplate")


def _write_lists(directory: Path, boilerplate: str, advertising: str, blacklist: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "boilerplate.txt").write_text(boilerplate, encoding="utf-8")
    (directory / "advertising.txt").write_text(advertising, encoding="utf-8")
    (directory / "blacklist.txt").write_text(blacklist, encoding="utf-8")


def test_custom_wordlist_dir(tmp_path: Path) -> None:
    _write_lists(tmp_path / "lists", "# mine\n风景壁纸\n\n", "# none\n", "西湖\n")
    f = TextFilter(TextFilterConfig(wordlist_dir=tmp_path / "lists"))
    assert f.check("风景壁纸！").reason == "boilerplate"
    assert f.check("風景壁紙").reason == "boilerplate"  # traditional variant added
    assert f.check("查看源网页").keep  # only in the shipped list
    assert f.check("加微信领取优惠券 夏季新款").keep  # empty advertising list rejects nothing
    d = f.check("西湖断桥残雪 冬季")
    assert (d.reason, d.detail) == ("blacklist_word", {"phrase": "西湖"})


def test_custom_wordlist_dir_missing_file(tmp_path: Path) -> None:
    (tmp_path / "boilerplate.txt").write_text("图片\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="advertising.txt"):
        TextFilter(TextFilterConfig(wordlist_dir=tmp_path))


def test_custom_wordlist_bad_utf8(tmp_path: Path) -> None:
    _write_lists(tmp_path, "图片\n", "包邮\n", "x\n")
    (tmp_path / "blacklist.txt").write_bytes("赌场\n".encode() + b"\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"blacklist.txt:2"):
        TextFilter(TextFilterConfig(wordlist_dir=tmp_path))


def test_wordlists_ship_in_the_package() -> None:
    d = shipped_wordlist_dir()
    assert {p.name for p in d.glob("*.txt")} >= {f"{n}.txt" for n in WORDLIST_NAMES}


# --- jieba offline ------------------------------------------------------------------------------

_OFFLINE = textwrap.dedent(
    """
    import socket, sys, tempfile
    def refuse(*a, **k):
        raise OSError("network use in the text filter")
    socket.socket = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    import jieba
    jieba.dt.tmp_dir = tempfile.mkdtemp()  # no cached dictionary: load the bundled one
    from taisu_etl.text import TextFilter, TextFilterConfig
    f = TextFilter(TextFilterConfig(min_words=3))
    d = f.check("北京故宫的雪景")
    assert d.keep, d
    assert f.check("中华人民共和国国旗").reason == "too_few_words"
    print("ok")
    """
)


def test_jieba_runs_offline_from_its_bundled_dictionary() -> None:
    import jieba

    assert Path(jieba.__file__).parent.joinpath("dict.txt").is_file()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", _OFFLINE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- hostile input ------------------------------------------------------------------------------


def test_long_hostile_captions_stay_linear(tmp_path: Path) -> None:
    # Patterns that make naive regexes backtrack: long digit runs, long words without a dot,
    # a word list whose entries overlap ("啊", "啊啊"), many "<" and "@".
    _write_lists(tmp_path, "啊\n啊啊\n啊啊啊\n", "# none\n", "# none\n")
    f = TextFilter(TextFilterConfig(max_chars=None, max_repeat=None, wordlist_dir=tmp_path))
    hostile = [
        "1" * 20000 + "字",
        "a" * 20000 + " 中文",
        "啊" * 47 + "哦",
        "<" * 5000 + "b" * 5000,
        "@" * 3000 + "a." * 3000,
        "www." + "a-" * 5000,
        "QQ" * 5000,
        "图片" * 5000 + "x",
    ]
    import time

    start = time.perf_counter()
    for caption in hostile:
        f.check(caption)
    assert time.perf_counter() - start < 2.0
