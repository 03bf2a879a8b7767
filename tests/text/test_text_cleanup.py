"""clean_caption: what a raw web caption becomes before any rule judges it."""

import pytest

from taisu_etl.text import clean_caption


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        # HTML entities, also escaped twice as scraped alt texts often are
        ("西湖&nbsp;断桥残雪", "西湖 断桥残雪"),
        ("&amp;nbsp;西湖&amp;amp;断桥", "西湖&断桥"),
        ("Tom &amp; Jerry 猫和老鼠 动画截图", "Tom & Jerry 猫和老鼠 动画截图"),
        # tags: inline ones vanish, block ones separate
        ("<b>上海</b>外滩<br/>夜景", "上海外滩 夜景"),
        ("<p>第一段</p><p>第二段</p>", "第一段 第二段"),
        ('<a href="http://x.cn">故宫</a>雪景', "故宫雪景"),
        ("价格<100元 促销", "价格<100元 促销"),  # not a tag
        # URLs: with scheme, www., full-width, bare domains; CJK after a URL is kept
        ("详见http://t.cn/abc点击 故宫雪景", "详见 点击 故宫雪景"),
        ("网址：ｗｗｗ．ｂａｉｄｕ．ｃｏｍ 百度首页", "网址：百度首页"),
        ("百度 baidu.com 首页截图", "百度 首页截图"),
        ("ASP.NET 开发教程", "ASP.NET 开发教程"),  # upper-case: not taken for a domain
        # control, zero-width and bidi characters
        ("零\u200b宽\u200d字符\ufeff测试\x07", "零宽字符测试"),
        ("第一行\n第二行\t第三行\r\n", "第一行 第二行 第三行"),
        # emoji and decoration symbols become separators
        ("清晨的稻田与远处的青山 😊", "清晨的稻田与远处的青山"),
        ("👨\u200d👩\u200d👧 一家人 🇨🇳 国庆", "一家人 国庆"),
        ("【新品】★☆限时★ 连衣裙 ♥♡ ✔ ➤ ■□ →", "新品 限时 连衣裙"),
        # full-width ASCII -> half-width; Chinese punctuation stays full-width
        ("ＡＢＣ１２３，中文！（括号）：；？", "ABC123，中文！（括号）：；？"),
        ("ｉＰｈｏｎｅ　１５　手机壳", "iPhone 15 手机壳"),
        ("①号线 ⼀ ℃", "1号线 一 °C"),  # NFKC: enclosed digits, Kangxi radicals, symbols
        ("《三体》“黑暗森林”、「面壁者」……", "《三体》“黑暗森林”、「面壁者」……"),
        # punctuation runs squeezed; ellipses and dashes kept
        ("好看！！！！！真好看。。。。。", "好看！真好看。"),
        ("等等……然后——结束...", "等等……然后——结束..."),
        ("~~~~可爱的猫~~~~", "~可爱的猫~"),
        # whitespace
        ("　全角空格　测试　", "全角空格 测试"),
        ("  上海   外滩 ，夜景 。 ", "上海 外滩，夜景。"),
        # already clean: unchanged
        ("一只可爱的橘猫趴在窗台上晒太阳", "一只可爱的橘猫趴在窗台上晒太阳"),
        ("iPhone 15 Pro 手机壳 透明 防摔", "iPhone 15 Pro 手机壳 透明 防摔"),
    ],
)
def test_clean_caption(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


@pytest.mark.parametrize("raw", ["", "   \n\t ", "<img src='x.jpg'>", "😀😀", "★☆★"])
def test_nothing_left(raw: str) -> None:
    assert clean_caption(raw) == ""


def test_traditional_to_simplified_only_when_asked() -> None:
    raw = "臺灣的風景 點擊查看大圖"
    assert clean_caption(raw) == raw
    assert clean_caption(raw, t2s=True) == "台湾的风景 点击查看大图"


def test_clean_is_idempotent() -> None:
    raw = "<b>【包邮】</b>ＡＢＣ 夏季新款连衣裙！！！ http://x.cn/1 😀"
    once = clean_caption(raw)
    assert once == "包邮 ABC 夏季新款连衣裙！"
    assert clean_caption(once) == once
