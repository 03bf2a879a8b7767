"""One run at a time creates a release: this run's claim on the name, kept alive while it builds.

`ReleaseClaim.acquire` claims the `release` row for a lease owner token (records.start: a new row,
or the row of a failed, provably dead or silent run). A thread renews the claim's heartbeat every
quarter of `stale_after`, so a run on another node, whose death this node cannot prove, is taken
over only once it has been silent for `stale_after` seconds.

The run fences itself: `check()` raises once the claim is known lost (a renewal found another
owner) or has gone unrenewed for half of `stale_after` (a run cut off from the ledger must stop
writing before anyone may take it over). The build calls it before each upload; members, publish
and fail are conditional on the claim in the ledger itself, so a run taken over never publishes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

from taisu_etl.db.leases import LeaseOwner
from taisu_etl.release import records
from taisu_etl.release.errors import ReleaseTakenOverError

log = logging.getLogger(__name__)
DEFAULT_STALE_SECONDS = 120.0  # like pipeline.lease_seconds: a silent owner on another node is taken over after this


class ReleaseClaim:
    """This run's claim on creating release `name` (row `release_id`), renewed until `close()`."""

    def __init__(self, engine: Engine, name: str, release_id: int, owner: LeaseOwner, stale_after: float) -> None:
        self.engine, self.name, self.release_id, self.owner = engine, name, release_id, owner
        self.stale_after = stale_after
        self._renewed = time.monotonic()  # when the last successful renewal began
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"release-heartbeat-{name}", daemon=True)

    @classmethod
    def acquire(cls, engine: Engine, name: str, parent_id: int | None, recipe: dict[str, Any], *,
                stale_after: float = DEFAULT_STALE_SECONDS) -> "ReleaseClaim":
        """Claim release `name` for this run (ReleaseBusyError while a live run holds it) and start the heartbeat."""
        owner = LeaseOwner.current(f"release.{uuid.uuid4().hex[:8]}")  # the nonce: two runs of one process differ
        began = time.monotonic()
        release_id = records.start(engine, name, parent_id, recipe, owner, stale_after=stale_after)
        claim = cls(engine, name, release_id, owner, stale_after)
        claim._renewed = began
        claim._thread.start()
        return claim

    @property
    def token(self) -> str:
        return self.owner.token

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            began = time.monotonic()
            try:
                held = records.heartbeat(self.engine, self.release_id, self.token)
            except Exception as exc:  # the ledger is unreachable: keep trying; check() fences the run meanwhile
                log.warning("release %s: could not renew the claim (%s)", self.name, exc)
                continue
            if not held:
                self._lost = f"release {self.name}: this run's claim was taken over by another run; nothing was published by this run"
                return
            self._renewed = began

    def check(self) -> None:
        """Raise ReleaseTakenOverError when this run may no longer write the release's files."""
        if self._lost is not None:
            raise ReleaseTakenOverError(self._lost)
        silent = time.monotonic() - self._renewed
        if silent > self.stale_after / 2:
            raise ReleaseTakenOverError(
                f"release {self.name}: this run could not renew its claim in the ledger for {silent:.0f} s, so another run may take "
                "it over: stopped, nothing was published; run it again once the ledger is reachable"
            )

    def add_members(self, members: Sequence[tuple[int, str]]) -> None:
        began = time.monotonic()
        records.add_members(self.engine, self.release_id, members, owner=self.token, name=self.name)
        self._renewed = max(self._renewed, began)

    def fail(self) -> None:
        """Mark the build failed, if the claim is still this run's (a successor's row is left alone)."""
        records.fail(self.engine, self.release_id, self.token)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
