"""Chinese caption text filter: runs before any image is downloaded.

    from taisu_etl.text import TextFilter, TextFilterConfig
    f = TextFilter(TextFilterConfig(pii_action="mask"))
    d = f.check("高清西湖风景壁纸 联系电话13812345678")
    d.keep, d.text, d.reason, d.rule, d.detail
"""

from taisu_etl.text.cleanup import clean_caption
from taisu_etl.text.config import DEFAULT_ORDER, TextFilterConfig
from taisu_etl.text.filter import TextDecision, TextFilter

__all__ = ["DEFAULT_ORDER", "TextDecision", "TextFilter", "TextFilterConfig", "clean_caption"]
