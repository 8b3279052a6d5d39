"""Where a run's output lives, in one place, without Beam: PREFIX/TABLE/TABLE-SSSSS-of-NNNNN.parquet
and PREFIX/run_summary.json (written last: its presence marks a complete run).

A run in chunks (--chunk_videos) keeps each chunk as a run of its own, PREFIX/chunks/NNNNN/ (its
input.jsonl, tables and summary), the plan in PREFIX/chunks/plan.json, and the top-level summary
once every chunk is complete. Readers list a table's files with `table_files`, which serves both
layouts and sees only complete chunks; `any_layout_glob` is the one glob for tools (DuckDB).

The jobs, search, incremental runs, the index and the Airflow DAG's check all derive paths here.
Path arithmetic needs nothing; reading a remote summary or listing a table uses Beam's filesystems.
"""

from __future__ import annotations

import json
import os
from typing import Any

from storage.paths import is_local, local_path

SUMMARY_NAME = "run_summary.json"
CHUNKS_DIR = "chunks"
PLAN_NAME = "plan.json"
CHUNK_INPUT_NAME = "input.jsonl"

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


def any_layout_glob(output_prefix: str, table: str) -> str:
    """One glob for a table's files in either layout (DuckDB's and Python's `**` match no directory too).

    It lists files and knows nothing of completeness: once the run's summary exists every chunk is
    complete, so it reads exactly the run; before that it may see a chunk whose tables are final but
    whose summary is not yet written. `table_files` and the summary's `files` never do.
    """
    return f"{output_prefix.rstrip('/')}/**/{table}-*.parquet"


def chunk_name(index: int) -> str:
    return f"{index:05d}"


def chunk_prefix(output_prefix: str, name: str) -> str:
    """The run prefix of one chunk: PREFIX/chunks/NNNNN."""
    return f"{output_prefix.rstrip('/')}/{CHUNKS_DIR}/{name}"


def plan_path(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/{CHUNKS_DIR}/{PLAN_NAME}"


def summary_path(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/{SUMMARY_NAME}"


def read_summary(output_prefix: str) -> dict[str, Any] | None:
    """The run summary under a prefix on any filesystem, or None when the run has not completed.

    Local paths are read directly (no Beam); a remote one through storage.objects, where a missing
    object is FileNotFoundError on every store.
    """
    return read_json(summary_path(output_prefix))


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON object on any filesystem, or None when there is no such file."""
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
    """The final files of a table, sorted, in either layout: the run's own, or those of its complete chunks.

    From listings of the store (never temp files: they live apart). A chunk counts once its summary
    exists, so a reader never sees a chunk that is running or died half way.
    """
    from apache_beam.io.filesystems import FileSystems

    base = output_prefix.rstrip("/")
    chunk_tables = f"{base}/{CHUNKS_DIR}/*/{table}/{table}-*.parquet"
    own, summaries, chunked = FileSystems.match(
        [table_glob(output_prefix, table), f"{base}/{CHUNKS_DIR}/*/{SUMMARY_NAME}", chunk_tables])
    complete = {m.path.rsplit("/", 2)[-2] for m in summaries.metadata_list}  # .../chunks/NAME/run_summary.json
    files = [m.path for m in own.metadata_list]
    files += [m.path for m in chunked.metadata_list if m.path.rsplit("/", 3)[-3] in complete]  # NAME/TABLE/file
    return sorted(files)
