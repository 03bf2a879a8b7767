"""Each rule with real-looking Chinese web captions on both sides of its boundary.

Every case goes through the whole default filter, so it also checks that nothing earlier in the
order catches a caption meant for a later rule.
"""

import pytest

from taisu_etl.text import TextFilter, TextFilterConfig
from taisu_etl.text.rules import cjk_units, is_resident_id

# A 50-character Taobao-style title, and the same with one more character.
TITLE_50 = "2024夏季新款韩版宽松显瘦雪纺连衣裙女中长款气质温柔风小个子法式碎花裙子度假风沙滩裙海边拍照裙子女"
TITLE_51 = TITLE_50 + "装"


def reason(f: TextFilter, caption: str, frequency: int | None = None) -> str | None:
    return f.check(caption, frequency).reason


def test_fixture_lengths() -> None:
    assert (len(TITLE_50), len(TITLE_51)) == (50, 51)


# --- length ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("故宫的雪景", None),  # 5 characters: the minimum
        ("故宫雪景", "text_too_short"),  # 4
        ("大熊猫吃竹", None),
        ("熊猫吃竹", "text_too_short"),
        (TITLE_50, None),  # 50: the maximum
        (TITLE_51, "text_too_long"),  # 51
        ("<b>故宫的雪景</b>", None),  # measured after clean-up
        ("<b>故宫雪景</b> 😀", "text_too_short"),
    ],
)
def test_length(default_filter: TextFilter, caption: str, expected: str | None) -> None:
    assert reason(default_filter, caption) == expected


def test_length_detail(default_filter: TextFilter) -> None:
    d = default_filter.check("故宫雪景")
    assert (d.rule, d.detail) == ("length", {"chars": 4, "min_chars": 5})
    d = default_filter.check(TITLE_51)
    assert (d.rule, d.detail) == ("length", {"chars": 51, "max_chars": 50})


def test_length_bounds_from_recipe() -> None:
    f = TextFilter(TextFilterConfig(min_chars=3, max_chars=None))
    assert reason(f, "故宫雪") is None
    assert reason(f, "故宫") == "text_too_short"
    assert reason(f, TITLE_51 * 2) is None


# --- jieba words -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def words_filter() -> TextFilter:
    return TextFilter(TextFilterConfig(min_words=3, max_words=8))


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("北京故宫的雪景", None),  # 北京故宫/的/雪景: 3 words, the minimum
        ("中华人民共和国国旗", "too_few_words"),  # 中华人民共和国/国旗: 2 words, 9 characters
        ("一只可爱的橘猫趴在窗台上晒太阳", None),  # 8 words, the maximum
        ("一只可爱的橘猫趴在窗台上晒太阳呢", "too_many_words"),  # 9
        ("iPhone 15 Pro 手机壳 透明 防摔", None),  # spaces are not words: 8
    ],
)
def test_words(words_filter: TextFilter, caption: str, expected: str | None) -> None:
    assert reason(words_filter, caption) == expected


def test_words_detail(words_filter: TextFilter) -> None:
    d = words_filter.check("中华人民共和国国旗")
    assert (d.rule, d.detail) == ("words", {"words": 2, "min_words": 3})
    d = words_filter.check("一只可爱的橘猫趴在窗台上晒太阳呢")
    assert d.detail == {"words": 9, "max_words": 8}


def test_jieba_not_run_by_default(default_filter: TextFilter) -> None:
    assert "words" not in default_filter.rule_names


# --- Chinese character ratio -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("iPhone 15 Pro 手机壳 透明 防摔", None),  # brand names must not sink a Chinese caption
        ("Apple MacBook Pro 13英寸 笔记本电脑", None),
        ("Nike Air Force 1 空军一号 板鞋", None),
        ("Merry Christmas and Happy New Year 圣诞快乐", None),  # 4 / (4 + 6) = 0.4: the minimum
        ("Merry Christmas and a Happy New Year 圣诞快乐", "low_cjk_ratio"),  # 4 / 11
        ("A beautiful sunset over the sea 夕阳", "low_cjk_ratio"),
        ("Beautiful sunset over the sea", "low_cjk_ratio"),
        ("아름다운 풍경 사진", "low_cjk_ratio"),  # Korean
        ("2023年新款 ins风 连衣裙", None),  # bare numbers count for neither side
    ],
)
def test_cjk_ratio(default_filter: TextFilter, caption: str, expected: str | None) -> None:
    assert reason(default_filter, caption) == expected


def test_cjk_units() -> None:
    assert cjk_units("iPhone 15 Pro 手机壳 透明 防摔") == (7, 2)
    assert cjk_units("abc中def") == (1, 2)
    assert cjk_units("256GB 原装") == (2, 1)


def test_cjk_ratio_detail(default_filter: TextFilter) -> None:
    d = default_filter.check("A beautiful sunset over the sea 夕阳")
    assert d.rule == "cjk_ratio"
    assert d.detail == {"cjk_ratio": 0.25, "min_cjk_ratio": 0.4, "cjk_chars": 2, "other_words": 6}


# --- boilerplate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption",
    [
        "图片",
        "查看源网页",
        "点击查看大图",
        "如下图所示：",
        "图片来源于网络",
        "暂无图片",
        "高清图片",
        "缩略图",
        "效果图 (2)",
        "【图片】",
        "未标题-1",
        "图片来源于网络，如有侵权请联系删除",  # two phrases back to back
        "點擊查看大圖",  # traditional spelling, without t2s
        "Untitled",
    ],
)
def test_boilerplate(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) == "boilerplate"


@pytest.mark.parametrize(
    "caption",
    ["一张风景图片", "杭州西湖 图片", "高清图片下载 西湖风景", "点击查看大图 西湖断桥残雪", "效果图 现代简约客厅"],
)
def test_not_boilerplate(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) is None


def test_boilerplate_detail(default_filter: TextFilter) -> None:
    assert default_filter.check("图片(1)").detail == {"match": "exact", "key": "图片"}


# --- file names and URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "kind"),
    [
        ("IMG_20190101_123456.jpg", "file_name"),
        ("未标题-1.png", "file_name"),
        ("微信图片_20200101.jpg", "file_name"),
        ("abc.png", "file_name"),
        ("西湖风景.JPEG", "file_name"),
        ("DSC0001", "camera_name"),
        ("IMG_1234", "camera_name"),
        ("mmexport1577836800000", "camera_name"),
        ("Screenshot_20200101-120000", "camera_name"),
        ("u=123,456&fm=26", "query_string"),
        ("u=3141592653,2718281828&fm=26&gp=0", "query_string"),
        ("d41d8cd98f00b204e9800998ecf8427e", "hash"),
        ("uploads/2019/01/abc", "path"),
        ("www.xxx.com", "url"),
        ("https://img.example.cn/upload/2019/a.jpg", "url"),
    ],
)
def test_filename_or_url(default_filter: TextFilter, caption: str, kind: str) -> None:
    d = default_filter.check(caption)
    assert d.reason == "filename_or_url"
    assert d.detail == {"kind": kind}


@pytest.mark.parametrize(
    "caption",
    ["西湖风景 JPG 高清壁纸", "Vue.js 入门教程 截图", "AC/DC 乐队演唱会海报", "E=mc² 爱因斯坦 质能方程", "佳能 IMG 摄影展 作品"],
)
def test_not_filename(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) is None


# --- digits and symbols only ------------------------------------------------------------------


@pytest.mark.parametrize("caption", ["2019-01-01", "123456789", "～～～ ！！", "10:30 / 12:45", "3.1415926"])
def test_symbols_only(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) == "symbols_only"


@pytest.mark.parametrize("caption", ["2019年1月1日", "12:45 下班啦", "3.14 圆周率"])
def test_not_symbols_only(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) is None


# --- repeated character -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("哈哈哈哈 笑死我了", None),  # a run of 4: the maximum
        ("哈哈哈哈哈 笑死我了", "repeated_char"),  # 5
        ("啊啊啊啊啊啊啊啊啊", "repeated_char"),
        ("好好好 就这样吧", None),
        ("zzzzz 睡觉的猫咪", "repeated_char"),
        ("价格1000000元的豪宅", None),  # digit runs are numbers
        ("好看！！！！！！的裙子", None),  # punctuation runs are squeezed by clean-up
    ],
)
def test_repeated_char(default_filter: TextFilter, caption: str, expected: str | None) -> None:
    assert reason(default_filter, caption) == expected


def test_repeated_char_detail(default_filter: TextFilter) -> None:
    d = default_filter.check("哈哈哈哈哈 笑死我了")
    assert d.detail == {"char": "哈", "run": 5, "max_repeat": 4}


# --- advertising and block list ---------------------------------------------------------------


@pytest.mark.parametrize(
    "caption",
    [
        "夏季新款连衣裙 厂家直销 量大从优",
        "加微信领取优惠券 限时抢购",
        "长按识别二维码 关注我们",
        "诚招代理 一件代发",
        "欢迎进店选购 女装",
        "掃碼關注 領取禮品",  # traditional
    ],
)
def test_advertising(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) == "advertising"


@pytest.mark.parametrize(
    "caption",
    ["夏季新款连衣裙 包邮 正品", "走进店里的小猫咪", "雪后的故宫角楼 欢迎你", "扫地机器人 评测"],
)
def test_not_advertising(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) is None


@pytest.mark.parametrize(
    "caption",
    ["澳门新葡京 真人娱乐 开户送彩金", "兼职刷单 日赚500", "北京赛车PK10 计划 稳赚", "免费看片网站 宅男福利"],
)
def test_blacklist(default_filter: TextFilter, caption: str) -> None:
    d = default_filter.check(caption)
    assert (d.reason, d.rule) == ("blacklist_word", "blacklist")
    assert "phrase" in d.detail


@pytest.mark.parametrize(
    "caption",
    ["特色情侣装 夏季新款", "18K彩金项链 女 锁骨链", "办证大厅 市民排队", "澳门大三巴牌坊 夜景"],
)
def test_not_blacklist(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) is None


# --- personal data -------------------------------------------------------------------------------

VALID_ID = "11010519491231002X"  # check digit X is right for these 17 digits
WRONG_CHECK_ID = "110105194912310021"
BAD_DATE_ID = "110105194902300023"  # 30 February


def test_resident_id_check_digit() -> None:
    assert is_resident_id(VALID_ID)
    assert is_resident_id(VALID_ID.lower())
    assert is_resident_id("440304199003071234") is False
    assert is_resident_id("44030419900307123X")
    assert not is_resident_id(WRONG_CHECK_ID)
    assert not is_resident_id(BAD_DATE_ID)
    assert not is_resident_id("440304299003071238")  # born in 2990


@pytest.mark.parametrize(
    ("caption", "kinds"),
    [
        ("身份证 11010519491231002X 正面照片", {"id_card": 1}),
        ("寻人启事 身份证号44030419900307123X", {"id_card": 1}),
        ("房屋出租 联系人13812345678 王先生", {"mobile": 1}),
        ("房屋出租 联系人 138-1234-5678 王先生", {"mobile": 1}),
        ("家政服务 +86 13812345678 张阿姨", {"mobile": 1}),
        ("投稿邮箱：tougao@example.com.cn 摄影作品", {"email": 1}),
        ("摄影作品交流 qq：123456789", {"account": 1}),
        ("古风汉服摄影 扣扣1234567890", {"account": 1}),
        ("手绘头像定制 vx: hanfu_2024", {"account": 1}),
        ("婚纱摄影工作室 微信号：abc_studio", {"account": 1}),
        ("二手相机 V信 sony12345 13812345678", {"account": 1, "mobile": 1}),
    ],
)
def test_pii_rejected(default_filter: TextFilter, caption: str, kinds: dict[str, int]) -> None:
    d = default_filter.check(caption)
    assert (d.reason, d.rule) == ("pii", "pii")
    assert d.detail == {"found": kinds, "action": "reject"}


@pytest.mark.parametrize(
    "caption",
    [
        f"身份证 {WRONG_CHECK_ID} 正面照片",  # wrong check digit: not an ID number
        f"身份证 {BAD_DATE_ID} 正面照片",  # impossible birth date
        "订单号 2019010112345678 截图",  # 16 digits: not a phone inside a longer run
        "手机号 138123456789 写错了",  # 12 digits
        "手机号 12812345678 不存在",  # 12x is not a mobile prefix
        "QQ音乐 播放器界面 截图",
        "微信 WeChat 图标设计素材",
        "wxWidgets 3.0 界面截图",
        "北京时间12:30 天安门广场",
        "QQ 2023 新版图标",
    ],
)
def test_pii_not_found(default_filter: TextFilter, caption: str) -> None:
    assert reason(default_filter, caption) is None


def test_pii_reject_never_shows_the_value(default_filter: TextFilter) -> None:
    d = default_filter.check("房屋出租 联系人13812345678 王先生")
    assert "13812345678" not in d.text
    assert "13812345678" not in repr(d.detail)


@pytest.mark.parametrize(
    ("caption", "masked", "kinds"),
    [
        ("房屋出租 联系人13812345678 王先生", "房屋出租 联系人[电话] 王先生", {"mobile": 1}),
        ("身份证 11010519491231002X 正面照片", "身份证 [身份证号] 正面照片", {"id_card": 1}),
        ("投稿邮箱：tougao@example.com.cn 摄影作品", "投稿邮箱：[邮箱] 摄影作品", {"email": 1}),
        ("婚纱摄影工作室 微信号：abc_studio", "婚纱摄影工作室 微信号：[账号]", {"account": 1}),
    ],
)
def test_pii_masked(mask_filter: TextFilter, caption: str, masked: str, kinds: dict[str, int]) -> None:
    d = mask_filter.check(caption)
    assert d.keep
    assert d.text == masked
    assert d.detail == {"edits": ["pii"], "pii": kinds}


def test_masked_text_is_what_later_rules_measure(mask_filter: TextFilter) -> None:
    # 52 characters with the phone number, 45 once it is masked: the length bound judges the
    # text that will be stored.
    caption = TITLE_50[:40] + " 13812345678"
    assert len(caption) == 52
    d = mask_filter.check(caption)
    assert d.keep and d.text == TITLE_50[:40] + " [电话]"


# --- over-frequent captions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "expected"),
    [(None, None), (1, None), (10, None), (11, "over_frequent"), (5000, "over_frequent")],
)
def test_over_frequent(default_filter: TextFilter, frequency: int | None, expected: str | None) -> None:
    assert reason(default_filter, "夏季新款连衣裙女", frequency) == expected


def test_over_frequent_detail_and_limit() -> None:
    f = TextFilter(TextFilterConfig(max_caption_frequency=100))
    assert reason(f, "夏季新款连衣裙女", 100) is None
    d = f.check("夏季新款连衣裙女", 101)
    assert (d.rule, d.detail) == ("over_frequent", {"frequency": 101, "max_caption_frequency": 100})
    assert reason(TextFilter(TextFilterConfig(max_caption_frequency=None)), "夏季新款连衣裙女", 10**6) is None


# --- empty -------------------------------------------------------------------------------------


@pytest.mark.parametrize("caption", ["", "   ", None, "😀😀😀", "<br/>"])
def test_empty(default_filter: TextFilter, caption: str | None) -> None:
    d = default_filter.check(caption)
    assert (d.keep, d.reason, d.text) == (False, "empty_caption", "")
