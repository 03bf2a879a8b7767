"""A small, realistic ledger for the release tests: Chinese captions, stored JPEGs, every outcome."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import sqlalchemy as sa
from PIL import Image

from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.db.schema import blocklist, sample, sample_state
from taisu_etl.storage import ObjectStore
from taisu_etl.vocab import Stage, State

SUBJECTS = ["一只橘色的小猫", "两只白色的小狗", "一辆红色的汽车", "一座古老的寺庙", "一碗热腾腾的面条", "蓝天下的雪山", "城市夜晚的街道", "一束盛开的玫瑰"]
PLACES = ["在草地上玩耍", "停在路边", "在阳光下", "在桌子上", "在公园里", "在湖边"]
SCORE_MODEL = "tiny-clip@0a1b2c3d"
CAPTION_MODEL = "tiny-coca@4e5f6a7b"


def jpeg(i: int, size: int = 32) -> bytes:
    """A distinct, deterministic little JPEG for sample i."""
    img = Image.new("RGB", (size, size), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
    img.putpixel((i % size, (i // size) % size), (255 - (i % 256), i % 256, 128))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def caption(i: int) -> str:
    return f"{SUBJECTS[i % len(SUBJECTS)]}{PLACES[(i // len(SUBJECTS)) % len(PLACES)]} 第{i}张"


@dataclass
class Seeded:
    """Sample ids (url_id, the public id) per outcome."""

    eligible: set[str] = field(default_factory=set)
    captioned_with_g: set[str] = field(default_factory=set)
    taken_down: set[str] = field(default_factory=set)
    blocklisted: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)
    by_id: dict[str, dict] = field(default_factory=dict)


def seed(ledger: Ledger, store: ObjectStore, n: int = 48, *, start: int = 0) -> Seeded:
    """Samples start..start+n: every 10th text-rejected, then score-rejected, taken down; the rest
    accepted (scores 0.20..0.50), two thirds of those captioned (some without a kept caption), one
    blocklisted by sha256 and one by URL."""
    out = Seeded()
    idx = list(range(start, start + n))
    urls = {i: f"http://img{i % 5}.example.com/p/{i}.jpg" for i in idx}
    sources = {i: ("wukong/wukong_100m_0.csv" if i % 3 else "laion/laion2b_zh.parquet") for i in idx}
    ledger.add_samples(
        NewSample(caption=caption(i), source=sources[i], url=urls[i], source_pos=f"line {i + 2}", taisu_id=f"t{i:06d}" if i % 4 == 0 else None)
        for i in idx
    )
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(sample.c.url, sample.c.id, sample.c.url_id).where(sample.c.url.in_(list(urls.values())))).all()
    by_url = {u: (sid, uid) for u, sid, uid in rows}
    sid_of = {i: by_url[urls[i]][0] for i in idx}
    uid_of = {i: by_url[urls[i]][1] for i in idx}
    puts = {i: store.put_image(jpeg(i)) for i in idx}

    def fetched(group: list[int]) -> dict[str, list]:
        return {
            "object_key": [puts[i].key for i in group], "sha256": [puts[i].sha256 for i in group],
            "width": [32] * len(group), "height": [32] * len(group), "bytes": [puts[i].size for i in group],
            "format": ["jpeg"] * len(group), "phash": [f"{i:016x}" for i in group],
        }

    text_rej = [i for i in idx if i % 10 == 0]
    ledger.move([sid_of[i] for i in text_rej], from_state=State.INGESTED, to_state=State.TEXT_REJECTED, stage=Stage.TEXT, reason="text_too_short")
    rest = [i for i in idx if i % 10 != 0]
    ledger.move([sid_of[i] for i in rest], from_state=State.INGESTED, to_state=State.IMAGE_OK, stage=Stage.IMAGE, reason="ok", updates=fetched(rest))
    score_rej = [i for i in rest if i % 10 == 1]
    ledger.move([sid_of[i] for i in score_rej], from_state=State.IMAGE_OK, to_state=State.SCORE_REJECTED, stage=Stage.SCORE,
                reason="low_score", updates={"score": [0.05] * len(score_rej), "score_model": [SCORE_MODEL] * len(score_rej)})
    accepted = [i for i in rest if i % 10 != 1]
    ledger.move([sid_of[i] for i in accepted], from_state=State.IMAGE_OK, to_state=State.ACCEPTED, stage=Stage.SCORE, reason="ok",
                updates={"score": [round(0.2 + (i % 7) * 0.05, 4) for i in accepted], "score_model": [SCORE_MODEL] * len(accepted),
                         "caption_clean": [caption(i).replace(" ", "") if i % 5 == 3 else None for i in accepted]})
    with_g = [i for i in accepted if i % 3 == 0]
    ledger.move([sid_of[i] for i in with_g], from_state=State.ACCEPTED, to_state=State.CAPTIONED, stage=Stage.CAPTION, reason="ok",
                updates={"gen_caption": [f"{SUBJECTS[(i + 1) % len(SUBJECTS)]}的照片" for i in with_g], "gen_caption_model": [CAPTION_MODEL] * len(with_g)})
    no_g = [i for i in accepted if i % 3 == 1]
    ledger.move([sid_of[i] for i in no_g], from_state=State.ACCEPTED, to_state=State.CAPTIONED, stage=Stage.CAPTION, reason="caption_rejected")
    down = [i for i in accepted if i % 10 == 2]
    for i in down:
        from_state = State.CAPTIONED if i in with_g or i in no_g else State.ACCEPTED
        ledger.move([sid_of[i]], from_state=from_state, to_state=State.TAKEN_DOWN, stage=Stage.TAKEDOWN, reason="takedown")
    live = [i for i in accepted if i % 10 != 2]
    blocked_sha, blocked_url = live[0], live[1]
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(blocklist), [{"kind": "sha256", "value": puts[blocked_sha].sha256}, {"kind": "url", "value": urls[blocked_url]}])
    for i in idx:
        out.by_id[uid_of[i]] = {"i": i, "caption": caption(i), "source": sources[i], "jpeg": jpeg(i)}
    out.rejected = {uid_of[i] for i in text_rej + score_rej}
    out.taken_down = {uid_of[i] for i in down}
    out.blocklisted = {uid_of[blocked_sha], uid_of[blocked_url]}
    out.eligible = {uid_of[i] for i in live} - out.blocklisted
    out.captioned_with_g = {uid_of[i] for i in with_g} & out.eligible
    return out


def download_release(store: ObjectStore, name: str, dst: "Path") -> "Path":
    """Copy every file of releases/NAME/ to `dst` (readers then work the same for any store)."""
    from pathlib import Path

    prefix = f"releases/{name}/"
    for info in store.list(prefix):
        target = Path(dst) / info.key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get(info.key))
    return Path(dst)


def read_files(root: "Path") -> dict[str, bytes]:
    from pathlib import Path

    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def sample_id_of(ledger: Ledger, url_id: str) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sample.c.id).where(sample.c.url_id == url_id)).scalar_one()


def take_down(ledger: Ledger, url_id: str) -> int:
    """What the takedown processing does to the sample's state (the rest of it is not this module's)."""
    sid = sample_id_of(ledger, url_id)
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(sample_state).where(sample_state.c.sample_id == sid).values(state=State.TAKEN_DOWN.value))
    return sid
