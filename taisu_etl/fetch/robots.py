"""robots.txt per origin, with RFC 9309 semantics, cached, and with evidence for the ledger.

RFC 9309 in short, as applied here:
- 2xx: the file's rules apply (parsed by protego; at most `robots_max_bytes`, the rest ignored).
- 4xx ("unavailable"), and more than 5 redirects: the crawler may access anything.
- 5xx, 429, network errors, timeouts, a refused address ("unreachable"): assume complete
  disallow, and say it is temporary so the URL is retried in a later attempt, not given up on.
- Cached per origin (scheme, host, port) for `robots_cache_ttl_s` (24 h at most); an
  unreachable verdict only for `robots_error_ttl_s`, so the host gets another chance soon.

The robots.txt request itself goes through the same guarded, paced client as image requests;
the caller supplies it as `fetch_robots`, which keeps this module free of HTTP details.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protego import Protego
from yarl import URL

from taisu_etl.fetch.policy import FetchPolicy

if TYPE_CHECKING:
    from taisu_etl.fetch.client import FetchResult

RobotsFetch = Callable[[str], Awaitable["FetchResult"]]

_PARSE_IN_THREAD_BYTES = 64 * 1024  # larger files are parsed off the event loop


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    """Whether robots.txt lets us fetch a URL, and the evidence either way."""

    allowed: bool
    temporary: bool  # disallowed only because robots.txt could not be read: retry later
    evidence: dict[str, Any]


@dataclass(slots=True)
class _Entry:
    robots_url: str
    mode: str  # "rules" | "allow_all" | "disallow_all"
    status: int | None
    fetched_at: str
    expires: float  # monotonic clock
    parser: Protego | None = None
    error: str | None = None  # reason code of the failed fetch, for unreachable verdicts
    crawl_delay_s: float | None = None

    def evidence(self) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "source": "robots.txt",
            "robots_url": self.robots_url,
            "status": self.status,
            "fetched_at": self.fetched_at,
            "mode": self.mode,
        }
        if self.error:
            ev["error"] = self.error
        if self.crawl_delay_s is not None:
            ev["crawl_delay_s"] = self.crawl_delay_s
        return ev


def origin_of(url: URL) -> tuple[str, str, int]:
    """RFC 9309 2.3: robots.txt rules apply to one protocol, host and port."""
    return (url.scheme, (url.raw_host or "").lower(), url.port or 0)


def _matched_rule(parser: Protego, url: str, agent: str) -> tuple[str | None, str | None]:
    """(group user-agent, "disallow: pattern") of the rule that decided `url`, for the evidence.

    protego has no public API for this, so it reads protego's internals and returns
    (None, None) if they ever change: the verdict itself never depends on this function.
    """
    try:
        from protego._utils import _quote_path

        rule_set = parser._get_matching_rule_set(agent)
        if rule_set is None:
            return None, None
        path = _quote_path(url)
        for rule in rule_set._rules:
            if rule.value.match(path):
                return rule_set.user_agent, f"{rule.field}: {rule.value._pattern}"
        return rule_set.user_agent, None
    except Exception:  # noqa: BLE001 - evidence is best effort; see docstring
        return None, None


class RobotsCache:
    """robots.txt verdicts per origin; each origin's file is fetched once per TTL, even when
    hundreds of its URLs ask at the same moment."""

    _MAX_ENTRIES = 100_000

    def __init__(
        self,
        policy: FetchPolicy,
        fetch_robots: RobotsFetch,
        *,
        on_crawl_delay: Callable[[str, float | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._fetch_robots = fetch_robots
        self._on_crawl_delay = on_crawl_delay
        self._clock = clock
        self._entries: dict[tuple[str, str, int], _Entry] = {}
        self._inflight: dict[tuple[str, str, int], asyncio.Task[_Entry]] = {}
        self.fetches = 0  # robots.txt files requested (not cache hits): for tests and stats

    async def check(self, url: URL) -> RobotsVerdict:
        """The verdict for `url` (an absolute http(s) URL)."""
        origin = origin_of(url)
        entry = self._entries.get(origin)
        if entry is None or entry.expires <= self._clock():
            entry = await self._load(origin, url)
        if entry.mode == "allow_all":
            return RobotsVerdict(True, False, entry.evidence())
        if entry.mode == "disallow_all":
            return RobotsVerdict(False, True, entry.evidence())
        assert entry.parser is not None
        target = str(url)
        agent = self._policy.robots_agent
        if entry.parser.can_fetch(target, agent):
            return RobotsVerdict(True, False, entry.evidence())
        evidence = entry.evidence()
        group, rule = _matched_rule(entry.parser, target, agent)
        evidence.update(agent=group, rule=rule, url=target)
        return RobotsVerdict(False, False, evidence)

    async def _load(self, origin: tuple[str, str, int], url: URL) -> _Entry:
        task = self._inflight.get(origin)
        if task is None:
            task = asyncio.ensure_future(self._fetch_entry(origin, url))
            self._inflight[origin] = task
            task.add_done_callback(functools.partial(self._done, origin))
        return await asyncio.shield(task)

    def _done(self, origin: tuple[str, str, int], task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(origin) is task:
            del self._inflight[origin]
        if not task.cancelled():
            task.exception()  # retrieved, so an unawaited failure is not logged as lost

    async def _fetch_entry(self, origin: tuple[str, str, int], url: URL) -> _Entry:
        p = self._policy
        robots_url = str(url.with_path("/robots.txt").with_query(None).with_fragment(None).with_user(None))
        self.fetches += 1
        result = await self._fetch_robots(robots_url)
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        ok_ttl, err_ttl = p.robots_cache_ttl_s, min(p.robots_error_ttl_s, p.robots_cache_ttl_s)
        status = result.status
        if result.ok:
            text = (result.body or b"").decode("utf-8", errors="replace")
            if len(text) > _PARSE_IN_THREAD_BYTES:
                parser = await asyncio.to_thread(Protego.parse, text)
            else:
                parser = Protego.parse(text)
            delay = parser.crawl_delay(p.robots_agent)
            entry = _Entry(robots_url, "rules", status, now, self._clock() + ok_ttl, parser=parser,
                           crawl_delay_s=min(delay, p.max_crawl_delay_s) if delay else None)
        elif status is not None and 400 <= status < 500 and status != 429:
            entry = _Entry(robots_url, "allow_all", status, now, self._clock() + ok_ttl)
        elif result.reason == "too_many_redirects":
            # RFC 9309 2.3.1.2: past five redirects the file MAY be taken as unavailable.
            entry = _Entry(robots_url, "allow_all", status, now, self._clock() + ok_ttl, error=result.reason)
        else:
            entry = _Entry(robots_url, "disallow_all", status, now, self._clock() + err_ttl, error=result.reason)
        if self._on_crawl_delay is not None and url.raw_host:
            self._on_crawl_delay(url.raw_host.lower(), entry.crawl_delay_s)
        if len(self._entries) >= self._MAX_ENTRIES:
            for key in list(self._entries)[: self._MAX_ENTRIES // 2]:
                del self._entries[key]
        self._entries[origin] = entry
        return entry

    def evidence(self) -> dict[str, dict[str, Any]]:
        """Evidence of every cached robots.txt, by host (the latest origin wins for a host)."""
        out: dict[str, dict[str, Any]] = {}
        for (_scheme, host, _port), entry in self._entries.items():
            out[host] = entry.evidence()
        return out
