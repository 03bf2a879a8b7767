"""Parquet metadata: one file per shard, one row per sample, written in row batches.

The schema is fixed (not inferred from the first rows), compression is fixed, and pyarrow writes no
timestamps into the file, so the same rows give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("url_id", pa.string()),  # the public id: <url_id>.jpg in the tars
        ("taisu_id", pa.string()),
        ("source", pa.string()),  # relative to the release's source root, or the file name (build.published_source)
        ("source_pos", pa.string()),
        ("url", pa.string()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("score", pa.float64()),
        ("score_model", pa.string()),
        ("caption", pa.string()),
        ("gen_caption", pa.string()),
        ("gen_caption_model", pa.string()),
        ("shards", pa.list_(pa.string())),  # the release files that hold the sample
    ]
)
BATCH = 2000
COMPRESSION = "zstd"


class ParquetShardWriter:
    """Rows of one shard to one Parquet file, BATCH rows in memory at most."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = pq.ParquetWriter(path, SCHEMA, compression=COMPRESSION)
        self._rows: list[dict[str, Any]] = []
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.rows += 1
        if len(self._rows) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            # One row group per batch: a reader can skip through a shard without loading it whole.
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA), row_group_size=BATCH)
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
