"""Reading the response headers that change what the crawler may do: X-Robots-Tag and Retry-After."""

from __future__ import annotations

import datetime as _dt
import email.utils
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

# The opt-outs a dataset builder honours. Search-engine directives (noindex, nofollow,
# noimageindex) are about indexing, not about training, and are deliberately not read as opt-outs.
NOAI_DIRECTIVES = frozenset({"noai", "noimageai"})

# Directives that carry a value after a colon: "max-snippet: 20" is a directive, not a
# "user-agent: directive" prefix.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
# A user-agent prefix is one token without spaces ("googlebot", "taisu-etl", "*"); anything else
# before a colon is the tail of a value that contained a comma (a date) and is ignored.
_AGENT_TOKEN = re.compile(r"[A-Za-z0-9_*][A-Za-z0-9_.*-]*")


@dataclass(frozen=True, slots=True)
class NoAI:
    """Which X-Robots-Tag directive opted the resource out, and for whom."""

    directive: str  # "noai" or "noimageai"
    agent: str | None  # the user-agent prefix it was scoped to, None when it applies to all
    header: str  # the header value as sent, for the evidence record


def find_noai(values: Iterable[str], agent: str) -> NoAI | None:
    """The first noai/noimageai directive among X-Robots-Tag header values that applies to `agent`.

    Each value is a comma-separated list of directives, optionally introduced by a user-agent
    name ("otherbot: noai, noimageai"); as in Google's reading, a prefix applies to the
    directives that follow it in the same header value. Unprefixed directives apply to everyone.
    """
    me = agent.lower()
    for value in values:
        scope: str | None = None
        for raw in value.split(","):
            token = raw.strip()
            name, sep, rest = token.partition(":")
            if sep:
                key = name.strip().lower()
                if key in _VALUED_DIRECTIVES or not _AGENT_TOKEN.fullmatch(key):
                    continue
                scope = key
                token = rest.strip()
            directive = token.lower()
            if directive in NOAI_DIRECTIVES and scope in (None, "*", me):
                return NoAI(directive=directive, agent=scope, header=value)
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or HTTP-date); None if absent or bad.

    A date in the past means "now" (0.0). Fractional seconds are accepted although RFC 9110
    only allows digits: being lenient costs nothing and errs towards waiting.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    # parsedate_to_datetime returns a naive datetime for "-0000"; HTTP dates are always GMT.
    stamp = when.timestamp() if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC).timestamp()
    return max(0.0, stamp - (time.time() if now is None else now))
