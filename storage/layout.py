"""Where a run's output lives, in one place, without Beam: PREFIX/TABLE/TABLE-SSSSS-of-NNNNN.parquet
and PREFIX/run_summary.json (written last: its presence marks a complete run).

A run in chunks (--chunk_videos) keeps the plan in PREFIX/chunks/plan.json, each chunk's input in
PREFIX/chunks/NNNNN/input.jsonl, and each attempt at a chunk as a run of its own in
PREFIX/chunks/NNNNN/attempts/ATTEMPT/ (tables, then its summary), the top-level summary once every
chunk is complete. Attempt names sort by their start: a chunk's committed attempt is its newest
complete one, so an older attempt that finishes late (a zombie) never replaces it, and two attempts'
files never mix. Readers list a table's files with `table_files`, which serves both layouts and sees
only committed attempts; `any_layout_glob` is the one glob for tools (DuckDB).

The jobs, search, incremental runs, the index and the Airflow DAG's check all derive paths here.
Path arithmetic needs nothing; reading a remote summary or listing a table uses Beam's filesystems.
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Any

from storage.paths import is_local, local_path

SUMMARY_NAME = "run_summary.json"
CHUNKS_DIR = "chunks"
PLAN_NAME = "plan.json"
CHUNK_INPUT_NAME = "input.jsonl"
ATTEMPTS_DIR = "attempts"

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


def new_attempt() -> str:
    """A name for a new attempt at a chunk, sorting by its start (UTC, then a random tail)."""
    import time
    import uuid

    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def attempt_prefix(output_prefix: str, name: str, attempt: str) -> str:
    """The run prefix of one attempt at a chunk: PREFIX/chunks/NNNNN/attempts/ATTEMPT."""
    return f"{chunk_prefix(output_prefix, name)}/{ATTEMPTS_DIR}/{attempt}"


def committed_attempts(output_prefix: str) -> dict[str, str]:
    """Chunk name -> its committed attempt (the newest with a summary), from one listing."""
    return committed_of(chunk_paths(output_prefix))


def _chunks_listing(output_prefix: str) -> str:
    """Everything under PREFIX/chunks/, one listing (a store lists by prefix; `**` crosses folders)."""
    return f"{output_prefix.rstrip('/')}/{CHUNKS_DIR}/**"


def chunk_paths(output_prefix: str) -> list[str]:
    """Every file under PREFIX/chunks/ (plan, inputs, attempts), from one listing."""
    from apache_beam.io.filesystems import FileSystems

    return [m.path for m in FileSystems.match([_chunks_listing(output_prefix)])[0].metadata_list]


def attempt_of(path: str) -> tuple[str, str, list[str]] | None:
    """(chunk, attempt, the rest) of a path under PREFIX/chunks/NAME/attempts/ATTEMPT/, else None."""
    parts = path.rsplit(f"/{CHUNKS_DIR}/", 1)[-1].split("/")
    if len(parts) < 4 or parts[1] != ATTEMPTS_DIR:
        return None
    return parts[0], parts[2], parts[3:]


def committed_of(paths) -> dict[str, str]:
    """Chunk name -> its committed attempt, among the listed paths."""
    committed: dict[str, str] = {}
    for path in paths:
        found = attempt_of(path)
        if found and found[2] == [SUMMARY_NAME]:
            name, attempt, _ = found
            committed[name] = max(committed.get(name, attempt), attempt)
    return committed


def chunk_summary(output_prefix: str, name: str) -> dict[str, Any] | None:
    """The summary of a chunk's committed attempt, or None when no attempt at it has completed."""
    attempt = committed_attempt(output_prefix, name)
    return read_summary(attempt_prefix(output_prefix, name, attempt)) if attempt else None


def committed_attempt(output_prefix: str, name: str) -> str | None:
    """One chunk's committed attempt (a listing of that chunk only)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = f"{attempt_prefix(output_prefix, name, '*')}/{SUMMARY_NAME}"
    attempts = [m.path.rsplit("/", 2)[-2] for m in FileSystems.match([pattern])[0].metadata_list]
    return max(attempts) if attempts else None


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

    From listings of the store (never temp files: they live apart). A chunk counts once an attempt at
    it has its summary, and then only that attempt's files: a reader never sees a chunk that is
    running or died half way, nor two attempts' files.
    """
    from apache_beam.io.filesystems import FileSystems

    own, chunked = FileSystems.match([table_glob(output_prefix, table), _chunks_listing(output_prefix)])
    paths = [m.path for m in chunked.metadata_list]
    committed = committed_of(paths)
    files = [m.path for m in own.metadata_list]
    for path in paths:  # NAME/attempts/ATTEMPT/TABLE/TABLE-*.parquet of a committed attempt
        found = attempt_of(path)
        if found and committed.get(found[0]) == found[1] and len(found[2]) == 2 and found[2][0] == table \
                and fnmatch.fnmatchcase(found[2][1], f"{table}-*.parquet"):
            files.append(path)
    return sorted(files)
