"""Incremental runs: skip videos an earlier run already did; re-run the failures of an earlier run.

Both work inside the graph on tables of earlier runs, so they scale with the corpus:
the earlier `videos` tables are read and joined with the requests by `video_id`.
Only earlier runs made with the same model and preprocessing count as done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.layout import table_glob
from transforms.records import NAMESPACE
from transforms.tables import read_run_metadata

log = logging.getLogger(__name__)


def _file_metadata(path: str) -> dict[str, Any]:
    with FileSystems.open(path) as f:
        return read_run_metadata(pq.read_schema(f))


def matching_table_files(prefixes: Sequence[str], table: str, model: str, preprocessing: dict) -> list[str]:
    """Files of `table` under the prefixes made with this model and preprocessing; others are logged and left out."""
    files = []
    for prefix in prefixes:
        for match in FileSystems.match([table_glob(prefix, table)])[0].metadata_list:
            meta = _file_metadata(match.path)
            if meta.get("model") == model and meta.get("preprocessing") == preprocessing:
                files.append(match.path)
            else:
                log.warning("%s was made with model %r / %s, not this run's %r / %s: its videos are not skipped",
                            match.path, meta.get("model"), meta.get("preprocessing"), model, preprocessing)
    return files


class _DropDoneFn(beam.DoFn):
    def __init__(self):
        self._skipped = Metrics.counter(NAMESPACE, "videos_skipped_done")

    def process(self, keyed):
        _, grouped = keyed
        if list(grouped["done"]):
            self._skipped.inc(len(list(grouped["requests"])))
            return
        yield from grouped["requests"]


class SkipDone(beam.PTransform):
    """Requests minus those whose video_id is in the given earlier `videos` files."""

    def __init__(self, done_files: Sequence[str]):
        super().__init__()
        self._files = list(done_files)

    def expand(self, requests):
        if not self._files:
            return requests
        done = (
            requests.pipeline
            | "DoneFiles" >> beam.Create(self._files)
            | "ReadDoneIds" >> beam.io.ReadAllFromParquet(columns=["video_id"])
            | "KeyDone" >> beam.Map(lambda row: (row["video_id"], True))
        )
        keyed = requests | "KeyRequests" >> beam.Map(lambda r: (r.video_id, r))
        return (
            {"requests": keyed, "done": done}
            | "JoinDone" >> beam.CoGroupByKey()
            | "DropDone" >> beam.ParDo(_DropDoneFn())
        )


class _FailureToRowFn(beam.DoFn):
    """A row of an earlier failures table -> a manifest row, if its stage and error type are wanted."""

    def __init__(self, stages: Sequence[str], errors: Sequence[str]):
        self._stages = set(stages)
        self._errors = set(errors)

    def process(self, failure: dict[str, Any]):
        if self._stages and failure["stage"] not in self._stages:
            return
        if self._errors and failure["error_type"] not in self._errors:
            return
        Metrics.counter(NAMESPACE, "failures_retried").inc()
        yield {
            "video_id": failure["video_id"],
            "uri": failure["uri"],
            "start_sec": failure.get("segment_start_sec"),
            "end_sec": failure.get("segment_end_sec"),
        }


class ReadFailuresAsInput(beam.PTransform):
    """An earlier run's failures table -> manifest rows to decode again (optionally some stages / error types)."""

    def __init__(self, prefix: str, stages: Sequence[str] = (), errors: Sequence[str] = ()):
        super().__init__()
        self._glob = table_glob(prefix, "failures")
        self._stages = list(stages)
        self._errors = list(errors)

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadFailures" >> beam.io.ReadFromParquet(self._glob)
            | "SelectFailures" >> beam.ParDo(_FailureToRowFn(self._stages, self._errors))
        )
