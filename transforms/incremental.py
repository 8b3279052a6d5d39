"""Incremental runs: skip videos an earlier run already did; re-run the failures of an earlier run.

Both work inside the graph on tables of earlier runs, so they scale with the corpus:
the earlier `videos` tables are read and joined with the requests by `video_id`.
Only earlier runs whose features are interchangeable with this run's (storage.runs: the same model,
preprocessing and precision, and the same captions settings when this run aligns captions) count as done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from storage.layout import table_files
from storage.runs import differences, done_identity, file_run_metadata
from transforms.records import NAMESPACE

log = logging.getLogger(__name__)


def matching_table_files(prefixes: Sequence[str], table: str, metadata: dict[str, Any]) -> list[str]:
    """Files of `table` under the prefixes that did this run's videos (storage.runs.done_identity).

    Every file of a run carries the same run metadata, so one footer is read per prefix, not one per
    file: a launch over many earlier runs of many shards costs a listing and a read per run. Others
    are logged and left out (their videos are done again).
    """
    wanted = done_identity(metadata, metadata)
    files = []
    for prefix in prefixes:
        paths = table_files(prefix, table)
        if not paths:
            continue
        found = done_identity(file_run_metadata(paths[0]), metadata)
        if found == wanted:
            files.extend(paths)
        else:
            differ = [k for k in wanted if found[k] != wanted[k]]
            log.warning("%s was made with another %s (%s): its videos are not skipped", prefix,
                        " and ".join(differ), differences(found, wanted))
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
        self._files = table_files(prefix, "failures")  # either layout (storage.layout), listed at launch
        self._stages = list(stages)
        self._errors = list(errors)

    def expand(self, pbegin):
        return (
            pbegin
            | "FailureFiles" >> beam.Create(self._files)
            | "ReadFailures" >> beam.io.ReadAllFromParquet()
            | "SelectFailures" >> beam.ParDo(_FailureToRowFn(self._stages, self._errors))
        )
