"""Finding a font that has Chinese glyphs, for the word cloud and the plot labels.

Without one, matplotlib and wordcloud silently draw empty boxes; a clear error is better.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

from taisu_etl.release.errors import ReleaseError

# Debian/Ubuntu packages: fonts-wqy-zenhei, fonts-wqy-microhei, fonts-noto-cjk, fonts-arphic-uming.
KNOWN_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)
_PROBE = "中文图"


def has_cjk_glyphs(path: str | Path) -> bool:
    """True when the font file draws the probe characters (not a fallback box)."""
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(str(path))
    except (OSError, RuntimeError, ValueError):
        return False
    return all(font.get_char_index(ord(c)) != 0 for c in _PROBE)


def _fontconfig_candidates() -> list[str]:
    if shutil.which("fc-match") is None:
        return []
    out: list[str] = []
    commands = (["fc-match", "-f", "%{file}\n", ":lang=zh"], ["fc-list", ":lang=zh", "file"])
    for cmd in commands:
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        # fc-list prints "path: " lines in no fixed order; sorted keeps the choice stable.
        lines = [line.split(":", 1)[0].strip() for line in text.splitlines() if line.strip()]
        out.extend(lines if cmd[0] == "fc-match" else sorted(lines))
    return out


@cache
def find_cjk_font(explicit: str | None = None) -> str:
    """Path of a font with Chinese glyphs: `explicit` if given, else known paths, else fontconfig."""
    if explicit:
        if not Path(explicit).is_file():
            raise ReleaseError(f"font file {explicit} does not exist: give a .ttf/.ttc/.otf with Chinese glyphs")
        if not has_cjk_glyphs(explicit):
            raise ReleaseError(f"font {explicit} has no Chinese glyphs: give a CJK font such as wqy-zenhei.ttc")
        return explicit
    # Known paths first: fontconfig's answer for ':lang=zh' can be a Latin font on a minimal system.
    for candidate in (*KNOWN_PATHS, *_fontconfig_candidates()):
        if candidate and Path(candidate).is_file() and has_cjk_glyphs(candidate):
            return candidate
    raise ReleaseError(
        "no font with Chinese glyphs found for the dataset card (word cloud and plot labels): "
        "install one, e.g. `apt-get install fonts-wqy-zenhei` or fonts-noto-cjk"
    )
