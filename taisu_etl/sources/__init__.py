"""Streaming readers of source files: URL + caption lists and TaiSu's own release.

    read_source(path)            CSV/TSV (Wukong), JSON lines, Parquet (LAION): SourceRow | BadRow
    read_taisu(archives, captions)  TaiSu image tars joined with captions: SourceRow | BadRow
    detect_format(path)          which of the above a file is; InputError when it is none of them

Every record names its origin file and position; a bad row is a `BadRow` with an ingest reason
code, and a file that is not what it claims is one `InputError`. `SourceStats` counts them.
A file that breaks off part-way raises `TruncatedInput` (an InputError) where it breaks, after
the records before the break; the ingest stage keeps those and records the break.
"""

from taisu_etl.sources._io import TruncatedInput
from taisu_etl.sources.detect import FORMATS, URL_LIST_FORMATS, detect_format, read_source
from taisu_etl.sources.records import BadRow, SourceRow, SourceStats
from taisu_etl.sources.tabular import read_csv, read_jsonl, read_parquet
from taisu_etl.sources.taisu import CaptionRecord, caption_form, iter_caption_file, read_taisu

__all__ = [
    "FORMATS",
    "URL_LIST_FORMATS",
    "BadRow",
    "CaptionRecord",
    "SourceRow",
    "SourceStats",
    "TruncatedInput",
    "caption_form",
    "detect_format",
    "iter_caption_file",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "read_source",
    "read_taisu",
]
