"""The demo's inputs: a synthetic web on 127.0.0.1 and URL lists that point only at it.

Nothing in the demo can reach another machine: every URL is on the synthetic web, and the fetcher
may use loopback only because the demo allowlists that one host:port.
"""

from __future__ import annotations

import csv
from pathlib import Path

from taisu_etl.synthweb import SyntheticWeb, make_pairs

# Web captions as they come: boilerplate, file names, personal data, spam. The text filter should
# drop every one of them before any download.
NOISY_CAPTIONS = [
    "图片", "查看源网页", "点击查看大图", "如下图所示", "图片来源于网络", "IMG_20190312_154233.jpg", "未标题-1.png",
    "联系电话13812345678", "哈哈哈哈哈哈哈哈哈哈", "好", "123456", "加微信 abc12345 领取优惠券", "www.example.com",
]
# Hostile cases the fetch stage must refuse, each with its own caption (so none is over-frequent).
HOSTILE = ["404", "410", "403", "not-image", "html", "truncated.jpg", "bomb.png", "endless", "redirect-loop",
           "redirect-private-10", "redirect-private-metadata", "noai", "tiny.jpg", "wide.jpg", "exif-rotated.jpg"]


def write_demo_sources(web: SyntheticWeb, out_dir: Path, pairs: int = 120, seed: int = 2022) -> list[Path]:
    """Write the demo's URL lists (Wukong-style CSV) for the pairs `web` serves."""
    out_dir.mkdir(parents=True, exist_ok=True)
    served = make_pairs(pairs, seed=seed)
    lists = [web.write_url_list(out_dir / "synthetic_web.csv", served).urls]
    noisy = out_dir / "noisy_captions.csv"
    with open(noisy, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption"])
        for pair, caption in zip(served, NOISY_CAPTIONS):
            w.writerow([web.url_for(pair.id), caption])
        for n, case in enumerate(HOSTILE, 1):
            w.writerow([web.hostile_url(case), f"第{n}张测试图片：一只在草地上奔跑的小狗"])
        w.writerow([web.private_url(served[0].id), "被 robots.txt 禁止抓取的一张风景照片"])
    lists.append(noisy)
    return lists


def demo_web(pairs: int = 120, seed: int = 2022) -> SyntheticWeb:
    return SyntheticWeb(make_pairs(pairs, seed=seed))
