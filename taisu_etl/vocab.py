"""The closed vocabularies of the ledger: sample states, stages and reason codes.

Reason codes are documented here and nowhere else; `taisu-etl reasons` prints this table and
the ledger refuses codes that are not in it, so a typo never becomes a new category in SQL.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a sample is in the pipeline. Stages claim samples in their input state."""

    INGESTED = "ingested"            # row exists, caption not yet checked
    TEXT_OK = "text_ok"              # caption passed the text filter; waiting for fetch
    TEXT_REJECTED = "text_rejected"  # caption failed a text rule (terminal)
    FETCH_RETRY = "fetch_retry"      # transient fetch failure; a later attempt will retry
    FETCH_FAILED = "fetch_failed"    # permanent fetch failure or opt-out (terminal)
    EXPIRED = "expired"              # URL is gone (404/410/NXDOMAIN) and no bytes are stored
    FETCHED = "fetched"              # image bytes stored; waiting for image checks
    IMAGE_REJECTED = "image_rejected"  # failed size/aspect checks, or blocklisted (terminal)
    DUPLICATE = "duplicate"          # exact or near duplicate of an earlier sample (terminal)
    IMAGE_OK = "image_ok"            # passed image checks and dedup; waiting for scoring
    SCORE_REJECTED = "score_rejected"  # failed retrieval filtering (terminal)
    ACCEPTED = "accepted"            # passed retrieval filtering; waiting for captions
    CAPTIONED = "captioned"          # accepted; the caption stage ran (gen_caption set unless caption_rejected)
    TAKEN_DOWN = "taken_down"        # removed on a rights holder's request (terminal)


class Stage(StrEnum):
    INGEST = "ingest"
    TEXT = "text"
    FETCH = "fetch"
    IMAGE = "image"
    SCORE = "score"
    CAPTION = "caption"
    RELEASE = "release"
    TAKEDOWN = "takedown"
    RECHECK = "recheck"
    ADMIN = "admin"


# code -> (stage, meaning). Outcome codes that are not rejections ("ok", "ingested") are listed too,
# so every event row carries a code from this table.
REASONS: dict[str, tuple[Stage, str]] = {
    # progress
    "ok": (Stage.ADMIN, "the stage accepted the sample"),
    "ingested": (Stage.INGEST, "row created from a source file"),
    "claimed": (Stage.ADMIN, "a worker leased the sample"),
    "manual": (Stage.ADMIN, "an operator moved the sample by hand"),
    # ingest: bad rows (counted per file; rows never created)
    "missing_url": (Stage.INGEST, "the row has no URL"),
    "bad_utf8": (Stage.INGEST, "the row is not valid UTF-8"),
    "bad_scheme": (Stage.INGEST, "the URL is not http(s)"),
    "unparsable": (Stage.INGEST, "the line could not be parsed"),
    "no_caption": (Stage.INGEST, "an archived image has no caption"),
    "no_image": (Stage.INGEST, "a caption has no archived image"),
    "damaged_member": (Stage.INGEST, "an archive member could not be read"),
    "nul_char": (Stage.INGEST, "a field holds a NUL character, which the ledger cannot store (Postgres text refuses it)"),
    "truncated_input": (Stage.INGEST, "the file breaks off (truncated or corrupt data): nothing after the break was read; ingest it again once repaired"),
    # text filter
    "empty_caption": (Stage.TEXT, "nothing left after clean-up"),
    "text_too_short": (Stage.TEXT, "fewer characters than the minimum"),
    "text_too_long": (Stage.TEXT, "more characters than the maximum"),
    "too_few_words": (Stage.TEXT, "fewer jieba words than the minimum"),
    "too_many_words": (Stage.TEXT, "more jieba words than the maximum"),
    "low_cjk_ratio": (Stage.TEXT, "too small a share of Chinese characters"),
    "boilerplate": (Stage.TEXT, "a meaningless or boilerplate caption"),
    "filename_or_url": (Stage.TEXT, "the caption is a file name or a URL"),
    "symbols_only": (Stage.TEXT, "only digits and symbols"),
    "repeated_char": (Stage.TEXT, "one character repeated many times"),
    "advertising": (Stage.TEXT, "an advertising phrase"),
    "blacklist_word": (Stage.TEXT, "a word from the block list"),
    "pii": (Stage.TEXT, "personal data (phone, ID number, e-mail, QQ/WeChat)"),
    "over_frequent": (Stage.TEXT, "the same caption appears on too many samples"),
    # fetch
    "http_404": (Stage.FETCH, "not found"),
    "http_410": (Stage.FETCH, "gone"),
    "http_403": (Stage.FETCH, "forbidden"),
    "http_429": (Stage.FETCH, "rate limited"),
    "http_4xx": (Stage.FETCH, "another client error"),
    "http_5xx": (Stage.FETCH, "server error"),
    "dns": (Stage.FETCH, "the host name does not resolve"),
    "connect": (Stage.FETCH, "the connection failed"),
    "timeout": (Stage.FETCH, "the deadline passed"),
    "too_large": (Stage.FETCH, "more bytes than the cap"),
    "not_image": (Stage.FETCH, "the bytes are not an allowed image format"),
    "decode_error": (Stage.FETCH, "the image could not be decoded"),
    "too_many_pixels": (Stage.FETCH, "more pixels than the cap (decompression bomb)"),
    "blocked_address": (Stage.FETCH, "the host resolves to a non-global address"),
    "too_many_redirects": (Stage.FETCH, "more redirects than allowed"),
    "robots_disallow": (Stage.FETCH, "robots.txt disallows the URL"),
    "noai_header": (Stage.FETCH, "X-Robots-Tag: noai / noimageai"),
    "retries_exhausted": (Stage.FETCH, "transient failures past the retry limit"),
    "bad_url": (Stage.FETCH, "the URL or a redirect target is not a fetchable http(s) URL"),
    "host_backoff": (Stage.FETCH, "not attempted: the host is backing off (429/503 or failures)"),
    "stage_error": (Stage.FETCH, "the stage itself failed on this sample (see the task log); retried later"),
    # image checks and dedup
    "too_small": (Stage.IMAGE, "shorter side below the minimum"),
    "bad_aspect": (Stage.IMAGE, "aspect ratio above the maximum"),
    "duplicate": (Stage.IMAGE, "exact duplicate (same sha256)"),
    "near_duplicate": (Stage.IMAGE, "perceptual hash within the distance threshold"),
    # scoring
    "retrieval_miss": (Stage.SCORE, "TaiSu's rule: neither direction ranked the pair first"),
    "low_score": (Stage.SCORE, "cosine score below the threshold or quantile"),
    "unreadable_image": (Stage.SCORE, "the stored image could not be read or decoded"),
    # generated captions
    "caption_rejected": (Stage.CAPTION, "every generated caption failed the text filter or the retrieval check"),
    # recheck of stored samples' URLs (the sample's state does not change)
    "url_alive": (Stage.RECHECK, "the URL still serves the stored image"),
    "url_changed": (Stage.RECHECK, "the URL serves different bytes now; recorded as a new candidate"),
    # takedown
    "takedown": (Stage.TAKEDOWN, "removed on a rights holder's request"),
    # Shared by every stage that admits samples (see INGEST_ALSO): ingest records the row as an
    # ingest issue and creates no sample; fetch ends it fetch_failed, image checks image_rejected,
    # scoring score_rejected. Its event details say what matched ("by": url | host | sha256 | phash).
    "blocklisted": (Stage.TAKEDOWN, "on the takedown blocklist (URL, host, sha256 or a perceptual hash within the dedup distance)"),
}


# Codes of other stages that ingest also records for a refused row.
INGEST_ALSO: frozenset[str] = frozenset({"blocklisted"})


def check_reason(code: str) -> str:
    """Return `code` if it is in the vocabulary, else raise ValueError (a programming error)."""
    if code not in REASONS:
        raise ValueError(f"unknown reason code {code!r}; add it to taisu_etl/vocab.py REASONS")
    return code
