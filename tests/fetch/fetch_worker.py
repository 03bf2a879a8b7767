"""One fetch-stage process for tests/fetch/test_shared_limits.py: fetch one shard, print its report.

    python -m tests.fetch.fetch_worker LEDGER_URL SHARDS SHARD STORE_DIR SETTINGS_JSON

Prints "ready" once the ledger is open, waits for a line on stdin (so several workers start
together), runs `fetch_shard` and prints the report as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from taisu_etl.db.ledger import Ledger
from taisu_etl.fetch.settings import FetchSettings
from taisu_etl.images import ImageConfig
from taisu_etl.stages.fetch import fetch_shard
from taisu_etl.storage import LocalObjectStore


def main(argv: list[str]) -> None:
    url, shards, shard, store_dir, settings_json = argv
    ledger = Ledger.open(url, shards=int(shards))
    settings = FetchSettings(**json.loads(settings_json))
    print("ready", flush=True)
    sys.stdin.readline()
    report = fetch_shard(ledger, LocalObjectStore(Path(store_dir)), settings, ImageConfig(), shard=int(shard), decode_workers=1)
    ledger.dispose()
    print(json.dumps(report.as_dict()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
