"""The knobs of the downloader, in one frozen object.

Defaults are the polite, safe ones: a user agent that names the project and says it honours
opt-outs, small per-host concurrency and rate, robots.txt and `X-Robots-Tag: noai` honoured, and
no loopback at all. A benchmark or a test that wants to hammer one local server says so
explicitly (`allow_loopback`, `per_host_concurrency`, `per_host_rate=None`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_USER_AGENT = (
    "taisu-etl/0.1 (image-text dataset builder; honours robots.txt and X-Robots-Tag noai; "
    "operators: set fetch.user_agent to include your contact)"
)
MIB = 1024 * 1024


def normalise_host_port(entry: str) -> str:
    """Canonical "host:port" spelling for allowlist lookups ("[::1]:80", "LOCALHOST:80" -> ...).

    IPv6 addresses are bracketed and compressed, names lower-cased, so the lookup at connect
    time is a plain set membership test.
    """
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"allowlist entries are 'host:port' or '[v6]:port', got {entry!r}")
    host = host.strip("[]").lower().rstrip(".")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{int(port)}"
    return f"[{addr.compressed}]:{int(port)}" if addr.version == 6 else f"{addr}:{int(port)}"


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Safety and politeness settings of one `Fetcher`. All times in seconds."""

    # Identity: who is crawling, honestly stated. `robots_agent` is the product token matched
    # against robots.txt groups and "agent: noai" X-Robots-Tag prefixes.
    user_agent: str = DEFAULT_USER_AGENT
    robots_agent: str = "taisu-etl"

    # Safety.
    max_redirects: int = 5
    deadline_s: float = 20.0  # per URL: connect + every redirect hop + body, network time only
    connect_timeout_s: float = 5.0
    dns_timeout_s: float = 5.0
    dns_cache_ttl_s: float = 60.0  # approved (guard-checked) addresses are reused this long
    max_bytes: int = 20 * MIB
    # "host:port" pairs whose loopback addresses may be fetched (tests, local benchmarks). Never
    # anything by default; only loopback addresses are unlocked, never private or link-local ones.
    allow_loopback: frozenset[str] = field(default_factory=frozenset)

    # Politeness.
    concurrency: int = 64  # requests in flight across all hosts
    per_host_concurrency: int = 4
    per_host_rate: float | None = 10.0  # requests per second per host; None = unlimited
    per_host_burst: int = 4  # requests a quiet host may receive back to back
    backoff_base_s: float = 2.0  # first pause after repeated failures; doubles each time
    backoff_max_s: float = 3600.0
    max_retry_after_s: float = 86400.0  # a Retry-After longer than this is clipped
    host_failure_threshold: int = 3  # consecutive transient failures before a host is paused
    retry_statuses: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})
    throttle_statuses: frozenset[int] = frozenset({429, 503})  # pause the host (Retry-After)
    # With a shared budget (taisu_etl.fetch.host_budget), the per-host limits above hold across every
    # fetch process of the deployment. A request that gets no budget within `shared_wait_s` fails as
    # host_backoff (retried later) rather than exceed them; rate slots are reserved `shared_block_s`
    # of the host's rate at a time.
    shared_wait_s: float = 120.0
    shared_block_s: float = 1.0

    # Opt-outs.
    honour_robots: bool = True
    honour_noai: bool = True
    robots_timeout_s: float = 5.0
    robots_cache_ttl_s: float = 86400.0  # RFC 9309 2.4: SHOULD NOT use a copy older than 24 h
    robots_error_ttl_s: float = 300.0  # an unreachable robots.txt is retried sooner
    robots_max_bytes: int = 512 * 1024  # RFC 9309 2.5: parse at least 500 KiB
    max_crawl_delay_s: float = 30.0  # a larger Crawl-delay is honoured as this

    def __post_init__(self) -> None:
        # Normalise the allowlist once so connect-time checks are set lookups.
        object.__setattr__(
            self, "allow_loopback", frozenset(normalise_host_port(e) for e in self.allow_loopback)
        )
        object.__setattr__(self, "retry_statuses", frozenset(self.retry_statuses))
        object.__setattr__(self, "throttle_statuses", frozenset(self.throttle_statuses))
        if not self.user_agent.strip() or not self.robots_agent.strip():
            raise ValueError("user_agent and robots_agent must say who is crawling")
        if not 0 <= self.max_redirects <= 20:
            raise ValueError("max_redirects must be between 0 and 20")
        for name in ("deadline_s", "connect_timeout_s", "dns_timeout_s", "robots_timeout_s", "shared_wait_s", "shared_block_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_bytes <= 0 or self.robots_max_bytes <= 0:
            raise ValueError("byte caps must be positive")
        if self.concurrency < 1 or self.per_host_concurrency < 1 or self.per_host_burst < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.per_host_rate is not None and self.per_host_rate <= 0:
            raise ValueError("per_host_rate must be positive, or None for unlimited")
