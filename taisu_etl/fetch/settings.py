"""The `[fetch]` table of a recipe, and the FetchPolicy it makes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from taisu_etl.fetch.policy import DEFAULT_USER_AGENT, FetchPolicy


class FetchSettings(BaseModel):
    """How the fetch stage downloads: safety caps, politeness and retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_agent: str = Field(DEFAULT_USER_AGENT, description="says who is crawling; never impersonate a browser")
    concurrency: int = Field(64, ge=1, description="requests in flight per worker")
    per_host_concurrency: int = Field(4, ge=1, description="connections to one host at once")
    per_host_rate: float | None = Field(10.0, ge=0, description="requests per second to one host; 0 = no limit")
    deadline_s: float = Field(20.0, gt=0, description="total time for one URL, redirects and body included")
    max_bytes: int = Field(20 << 20, ge=1024, description="byte cap, counted while streaming")
    max_redirects: int = Field(5, ge=0, le=20)
    honour_robots: bool = True
    honour_noai: bool = True
    allow_loopback: tuple[str, ...] = Field((), description="host:port pairs on this machine that may be fetched (tests, demo)")
    max_attempts: int = Field(3, ge=1, description="transient failures before a URL is given up")
    retry_base_s: float = Field(600.0, ge=0, description="back-off before the second attempt; doubles each time")
    batch_size: int = Field(1000, ge=1, description="samples claimed at once")
    shared_host_limits: bool = Field(True, description="per-host rate and concurrency hold across every worker sharing the ledger, not per worker")
    host_budget_wait_s: float = Field(120.0, gt=0, description="longest a request waits for its host's shared budget before it is retried later")

    def policy(self) -> FetchPolicy:
        return FetchPolicy(
            user_agent=self.user_agent,
            concurrency=self.concurrency,
            per_host_concurrency=self.per_host_concurrency,
            per_host_rate=self.per_host_rate or None,
            deadline_s=self.deadline_s,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            honour_robots=self.honour_robots,
            honour_noai=self.honour_noai,
            allow_loopback=frozenset(self.allow_loopback),
            shared_wait_s=self.host_budget_wait_s,
        )
