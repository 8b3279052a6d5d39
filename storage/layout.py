"""Where a run's output lives, in one place, without Beam: PREFIX/TABLE/TABLE-SSSSS-of-NNNNN.parquet
and PREFIX/run_summary.json (written last: its presence marks a complete run).

The jobs, search, incremental runs, the index and the Airflow DAG's check all derive paths here.
Path arithmetic needs nothing; reading a remote summary or listing a table uses Beam's filesystems.
"""

from __future__ import annotations

import json
import os
from typing import Any

from storage.paths import is_local, local_path

SUMMARY_NAME = "run_summary.json"

# What search ranks at each level: the table it reads and the columns a result carries.
LEVEL_TABLE = {"clip": "clips", "video": "videos"}
LEVEL_COLUMNS = {
    "clip": ["video_id", "uri", "clip_index", "start_sec", "end_sec"],
    "video": ["video_id", "uri", "duration_sec", "num_clips"],
}
EMBEDDING = "video_embedding"  # the column search and the index score (the joint text-video space)


def table_prefix(output_prefix: str, table: str) -> str:
    """The shard prefix of a table: PREFIX/TABLE/TABLE (shards add -SSSSS-of-NNNNN.parquet)."""
    return f"{output_prefix.rstrip('/')}/{table}/{table}"


def table_glob(output_prefix: str, table: str) -> str:
    return f"{table_prefix(output_prefix, table)}-*.parquet"


def summary_path(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/{SUMMARY_NAME}"


def read_summary(output_prefix: str) -> dict[str, Any] | None:
    """The run summary under a prefix on any filesystem, or None when the run has not completed.

    Local paths are read directly (no Beam); a remote one through storage.objects, where a missing
    object is FileNotFoundError on every store.
    """
    path = summary_path(output_prefix)
    if is_local(path):
        local = local_path(path)
        if not os.path.exists(local):
            return None
        with open(local, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    from storage.objects import open_object

    try:
        with open_object(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None


def table_files(output_prefix: str, table: str) -> list[str]:
    """The final files of a table, sorted, from a listing of the store (never temp files: they live apart)."""
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for m in FileSystems.match([table_glob(output_prefix, table)])[0].metadata_list)
