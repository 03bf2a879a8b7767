"""Regenerate examples/sample/wukong_sample.csv: a small Wukong-style list (url,caption).

Deterministic (fixed seed). It mixes captions that should pass the text filter with the web's
usual noise — boilerplate, file names, phone numbers, too-short and repeated captions — plus a
few malformed rows, so the demo's funnel has something to show.

    python examples/make_sample.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "sample" / "wukong_sample.csv"

SUBJECTS = ["一只橘猫", "两只小狗", "一位老人", "小女孩", "一辆红色自行车", "一座古老的石桥", "一片金黄的麦田", "一碗热腾腾的牛肉面", "一艘白色帆船", "一棵开满樱花的树"]
PLACES = ["在窗台上", "在海边", "在雪地里", "在公园的长椅旁", "在夕阳下", "在热闹的街头", "在安静的湖边", "在山顶上", "在雨中的小巷", "在厨房里"]
ACTIONS = ["晒太阳", "奔跑", "看书", "放风筝", "静静地停着", "随风摇曳", "冒着热气", "缓缓前行", "开心地笑着", "等待着主人"]
NOISE = [
    "图片", "查看源网页", "点击查看大图", "如下图所示", "图片来源于网络", "IMG_20190312_154233.jpg", "未标题-1.png",
    "联系电话13812345678 欢迎咨询", "哈哈哈哈哈哈哈哈哈哈哈哈", "好", "123456", "加微信 abc12345 领取优惠券",
    "限时特价 包邮 秒杀 点击购买", "www.example.com",
]


def main() -> None:
    rng = random.Random(20221124)
    rows: list[tuple[str, str]] = []
    for i in range(160):
        caption = f"{rng.choice(SUBJECTS)}{rng.choice(PLACES)}{rng.choice(ACTIONS)}"
        rows.append((f"http://img{i % 7}.example.com/photos/{i:05d}.jpg", caption))
    for i, caption in enumerate(NOISE * 3):
        rows.append((f"http://img{i % 5}.example.net/misc/{i:04d}.jpg?size=large", caption))
    rows.append(("", "没有链接的一行"))
    rows.append(("ftp://files.example.com/a.jpg", "不是 http 的链接"))
    rows.append((rows[0][0].replace("http://img", "HTTP://IMG", 1).replace(".jpg", ".jpg#top"), rows[0][1]))  # same pair, other spelling
    rng.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
