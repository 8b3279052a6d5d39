"""The output tables: Arrow schemas, run metadata in every file, and the Parquet writer.

Each table is a directory of Parquet shards under the run's output prefix
(`PREFIX/clips/clips-00000-of-00004.parquet`, ...). Every file carries the run's
parameters (model handle, preprocessing, package version) as key-value metadata
under `s3d.run`, so a file read alone still says how its features were made.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from s3d.architecture import EMBEDDING_DIM, MIXED_5C_DIM
from storage.layout import any_layout_glob, summary_path, table_files, table_prefix
from storage.objects import open_object, write_object
from storage.runs import METADATA_KEY
from transforms.records import NAMESPACE


def _embedding(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


CLIPS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("clip_index", pa.int32()),
    ("start_sec", pa.float64()),
    ("end_sec", pa.float64()),
    ("num_frames", pa.int32()),
    ("padded", pa.bool_()),
    ("mixed_5c", _embedding(MIXED_5C_DIM)),
    ("video_embedding", _embedding(EMBEDDING_DIM)),
])

VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("segment_start_sec", pa.float64()),
    ("segment_end_sec", pa.float64()),
    ("duration_sec", pa.float64()),
    ("native_fps", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("rotation", pa.int32()),
    ("codec", pa.string()),
    ("decoded_frames", pa.int64()),
    ("sampled_frames", pa.int64()),
    ("dropped_tail_frames", pa.int32()),
    ("num_clips", pa.int32()),
    ("mixed_5c", _embedding(MIXED_5C_DIM)),
    ("video_embedding", _embedding(EMBEDDING_DIM)),
    # --captions (transforms.captions); null for a video without captions, or in a run without --captions
    ("captions", pa.int32()),  # captions read for the video
    ("grounded_captions", pa.int32()),  # captions whose best clip of the whole video is near when they are said
    ("grounded_fraction", pa.float64()),  # grounded over captions with a verdict (null: none had one)
])

FAILURES_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("segment_start_sec", pa.float64()),
    ("segment_end_sec", pa.float64()),
    ("stage", pa.string()),  # input | open | decode | inference | assemble
    ("error_type", pa.string()),
    ("message", pa.string()),
    ("transient", pa.bool_()),
    ("clips_kept", pa.int32()),  # clips of this video that are in the clips table all the same
])

TEXTS_SCHEMA = pa.schema([
    ("text_id", pa.string()),
    ("text", pa.string()),
    ("known_words", pa.int32()),  # null when the module does not ship its vocabulary (the hub module)
    ("no_known_words", pa.bool_()),  # embedded all the same: the model's padding-only vector
    ("text_embedding", _embedding(EMBEDDING_DIM)),
])

CAPTIONS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("caption_index", pa.int32()),  # in time order within the video
    ("start_sec", pa.float64()),
    ("end_sec", pa.float64()),
    ("text", pa.string()),
    ("known_words", pa.int32()),
    ("no_known_words", pa.bool_()),
    ("text_embedding", _embedding(EMBEDDING_DIM)),
    ("overlap_score", pa.float32()),  # mean dot product with the clips overlapping the caption (null: none)
    ("best_clip_index", pa.int32()),  # the best clip within --align_window_sec of the caption (null: none)
    ("best_clip_score", pa.float32()),
    ("best_clip_offset_sec", pa.float64()),  # that clip's centre minus the caption's
    ("grounded", pa.bool_()),  # its best clip of the whole video is within the window (null: no verdict)
])

TEXT_FAILURES_SCHEMA = pa.schema([
    ("text_id", pa.string()),
    ("text", pa.string()),
    ("stage", pa.string()),  # input | inference
    ("error_type", pa.string()),
    ("message", pa.string()),
])

SCHEMAS = {
    "clips": CLIPS_SCHEMA, "videos": VIDEOS_SCHEMA, "failures": FAILURES_SCHEMA,
    "texts": TEXTS_SCHEMA, "text_failures": TEXT_FAILURES_SCHEMA,
    "captions": CAPTIONS_SCHEMA, "captions_failures": FAILURES_SCHEMA,
}


def with_run_metadata(schema: pa.Schema, run_metadata: dict[str, Any]) -> pa.Schema:
    return schema.with_metadata({METADATA_KEY: json.dumps(run_metadata, sort_keys=True).encode("utf-8")})


class WriteTable(beam.PTransform):
    """Writes rows (dicts) to one table as sharded Parquet, finalized atomically by Beam's file sink."""

    def __init__(self, output_prefix: str, table: str, run_metadata: dict[str, Any]):
        super().__init__()
        if table not in SCHEMAS:
            raise ValueError(f"unknown table {table!r}; one of {sorted(SCHEMAS)}")
        self._prefix = table_prefix(output_prefix, table)
        self._schema = with_run_metadata(SCHEMAS[table], run_metadata)

    def expand(self, rows):
        return rows | beam.io.WriteToParquet(
            self._prefix,
            schema=self._schema,
            file_name_suffix=".parquet",
            codec="snappy",
            record_batch_size=256,
        )


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def count_rows(paths: list[str]) -> int:
    """Rows in these Parquet files, from their footers, read side by side (each is a round trip on a store)."""
    from concurrent.futures import ThreadPoolExecutor

    def rows(path: str) -> int:
        with open_object(path) as f:
            return pq.read_metadata(f).num_rows

    with ThreadPoolExecutor(max_workers=16) as pool:
        return sum(pool.map(rows, paths))


def write_summary(output_prefix: str, summary: dict[str, Any]) -> str:
    """Writes the run summary (PREFIX/run_summary.json) on any Beam filesystem; returns its path."""
    data = json.dumps(summary, indent=2, sort_keys=True, default=str).encode("utf-8")
    return write_object(summary_path(output_prefix), data, "application/json")  # never half a summary


class CountRows(beam.PTransform):
    """Counts the rows that reach a table (metric `rows_<table>`), passing them through."""

    def __init__(self, table: str):
        super().__init__()
        self._name = f"rows_{table}"

    def expand(self, rows):
        name = self._name

        def count(row):
            beam.metrics.Metrics.counter(NAMESPACE, name).inc()
            return row

        return rows | beam.Map(count)


class WriteTables(beam.PTransform):
    """Rows of each table -> counted, written as Parquet shards; then PREFIX/run_summary.json.

    The summary is the completion marker, written once every table's files are final. It is
    part of the graph, so it works on any runner and without a launcher that waits (a Flex
    Template launch); row counts come from the finished files' Parquet footers. A launcher
    that waits for the job then adds the job's metrics to it.

    Args:
        counts: summary count name -> the table whose rows it counts.
    """

    def __init__(self, output_prefix: str, metadata: dict[str, Any], counts: dict[str, str]):
        super().__init__()
        self._prefix = output_prefix
        self._metadata = metadata
        self._counts = counts

    def expand(self, tables: dict[str, beam.PCollection]):
        files = []
        for name, rows in tables.items():
            title = "".join(part.capitalize() for part in name.split("_"))
            written = (rows | f"Count{title}" >> CountRows(name)
                       | f"Write{title}" >> WriteTable(self._prefix, name, self._metadata))
            files.append(written | f"Tag{title}" >> beam.Map(lambda path, t=name: (t, path)))
        return (
            tuple(files)
            | "AllFiles" >> beam.Flatten()
            | "WhenAllFinal" >> beam.combiners.ToList()
            | "WriteRunSummary" >> beam.Map(self._write_summary, list(tables))
        )

    def _write_summary(self, entries: list[tuple[str, str]], tables: list[str]) -> str:
        # `entries` only says the sinks have finalized. The rows come from a listing of the final
        # tables: a retried finalize skips the shards it already renamed and emits fewer names.
        del entries
        files = {table: table_files(self._prefix, table) for table in tables}
        rows = {table: count_rows(files[table]) for table in tables}
        return write_summary(self._prefix, {
            **self._metadata,
            "status": "complete",
            "output_prefix": self._prefix,
            "finished": utc_now(),
            "rows": rows,
            "counts": {name: rows[table] for name, table in self._counts.items()},
            "tables": {t: any_layout_glob(self._prefix, t) for t in tables},
            "files": files,
        })
