"""Safe, polite HTTP fetching of image URLs (the HTTP layer of the fetch stage).

    from taisu_etl.fetch import Fetcher, FetchPolicy

    async with Fetcher(FetchPolicy()) as fetcher:
        async for result in fetcher.fetch_many(urls):
            ...  # result.ok / result.body, or result.reason (a taisu_etl.vocab code)

No decoding, storage or ledger writes happen here: the fetch stage does those with the results.
"""

from taisu_etl.fetch.client import PERMANENCE, Fetcher, FetchResult, GuardedConnector
from taisu_etl.fetch.guard import FetchRefused, GuardedResolver, check_address, parse_ip_host, resolve_and_check
from taisu_etl.fetch.headers import find_noai, parse_retry_after
from taisu_etl.fetch.limiter import HostLimiter, HostState
from taisu_etl.fetch.policy import DEFAULT_USER_AGENT, FetchPolicy
from taisu_etl.fetch.robots import RobotsCache, RobotsVerdict

__all__ = [
    "DEFAULT_USER_AGENT",
    "PERMANENCE",
    "FetchPolicy",
    "FetchRefused",
    "FetchResult",
    "Fetcher",
    "GuardedConnector",
    "GuardedResolver",
    "HostLimiter",
    "HostState",
    "RobotsCache",
    "RobotsVerdict",
    "check_address",
    "find_noai",
    "parse_ip_host",
    "parse_retry_after",
    "resolve_and_check",
]
