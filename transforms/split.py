"""Long videos over several workers: split them into parts at clip starts, join the parts' results.

`SplitLongVideos` reads each video's declared duration from its header (no decoding) and
turns a video longer than `split_sec` into one request per part; the Reshuffle after it
spreads the parts over workers. The decode step decodes a part like a video and reports
it (`parts` output); `JoinParts` groups a video's parts and gives the one `info` row an
unsplit run gives (clips numbered on, counters summed), or one failure row if a part
failed, with the clips of every part kept and counted.
"""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from decoder import DecodeOptions
from decoder.process import DecoderProcess
from decoder.split import plan_parts
from storage.objects import open_object
from transforms.progress import ProgressLog, count_failed_video
from transforms.records import FAILURES, NAMESPACE, VideoRequest, failure_row

PARTS = "parts"
INFO = "info"

log = logging.getLogger(__name__)


def check_split_sec(split_sec: float | None) -> None:
    """The one check of --split_sec. Raises ValueError naming the flag."""
    if split_sec is None or not split_sec >= 0:
        raise ValueError(f"--split_sec must be >= 0 (0 turns splitting off), got {split_sec}")


class SplitLongVideosFn(beam.DoFn):
    """A request -> itself, or one request per part when the video is longer than `split_sec`.

    A video whose header cannot be read goes on whole: the decode step reports why it fails.
    """

    def __init__(self, options: DecodeOptions, split_sec: float):
        self._options = options
        self._split_sec = split_sec

    def setup(self):
        self._split = Metrics.counter(NAMESPACE, "videos_split")
        self._parts = Metrics.counter(NAMESPACE, "video_parts")
        self._decoder = DecoderProcess(slots=1)  # the header is read apart too: FFmpeg parses it

    def teardown(self):
        self._decoder.close()

    def process(self, request: VideoRequest):
        try:
            extent = self._decoder.read_extent(request.uri, self._options, open_object)
        except Exception as e:  # noqa: BLE001 - any unreadable header: decoding whole reports it properly
            log.debug("not splitting %s: %s", request.uri, e)
            yield request
            return
        parts = plan_parts(self._options, self._split_sec, extent, request.start_sec, request.end_sec)
        if not parts:
            yield request
            return
        self._split.inc()
        self._parts.inc(len(parts))
        for part in parts:
            yield request._replace(part=part)


class SplitLongVideos(beam.PTransform):
    """PCollection[VideoRequest] -> PCollection[VideoRequest], long videos as parts (split_sec 0: as they are)."""

    def __init__(self, options: DecodeOptions, split_sec: float):
        super().__init__()
        check_split_sec(split_sec)
        self._options = options
        self._split_sec = split_sec

    def expand(self, requests):
        if self._split_sec == 0 or not self._options.splittable:
            return requests
        return requests | "Split" >> beam.ParDo(SplitLongVideosFn(self._options, self._split_sec))


def part_record(request: VideoRequest, first_target: int | None, clips: int, info: dict[str, Any] | None = None,
                failure: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """What the decode step reports of one part, keyed by video_id for JoinParts."""
    part = request.part
    return request.video_id, {
        "part": part.index, "parts": part.count, "expected_first_target": part.first_target,
        "first_target": first_target, "first_clip": part.first_clip, "clips": clips,
        "info": info, "failure": failure,
    }


class JoinPartsFn(beam.DoFn):
    """A video's part records -> its info row (as one reader would give it), or one failure row."""

    def __init__(self, options: DecodeOptions, progress: ProgressLog | None = None):
        self._stride = options.clip_stride
        self._progress = progress or ProgressLog()

    def process(self, keyed):
        video_id, records = keyed
        records = sorted(records, key=lambda r: r["part"])
        self._progress.add("video")
        failed = [r for r in records if r["failure"] is not None]
        if failed or len(records) != records[0]["parts"] or records[0]["first_target"] != records[0]["expected_first_target"]:
            yield beam.pvalue.TaggedOutput(FAILURES, self._failure(video_id, records, failed))
            return
        Metrics.counter(NAMESPACE, "videos_decoded").inc()
        yield video_id, self._merge([r["info"] for r in records], records[-1])

    def _merge(self, rows: list[dict[str, Any]], last: dict[str, Any]) -> dict[str, Any]:
        merged = dict(rows[0])
        merged["decoded_frames"] = sum(r["decoded_frames"] for r in rows)
        merged["num_clips"] = sum(r["num_clips"] for r in rows)
        # samples are counted from the video's first one; the last part's first is first_clip * stride on
        merged["sampled_frames"] = last["first_clip"] * self._stride + rows[-1]["sampled_frames"]
        for key in ("duration_sec", "dropped_tail_frames"):
            merged[key] = rows[-1][key]
        return merged

    def _failure(self, video_id: str, records: list[dict[str, Any]], failed: list[dict[str, Any]]) -> dict[str, Any]:
        kept = sum(r["clips"] for r in records)
        count = records[0]["parts"]
        if failed:
            first, row = failed[0], failed[0]["failure"]
            where = f"part {first['part'] + 1} of {count} (from clip {first['first_clip']})"
            count_failed_video(row["stage"], row["error_type"])
            return {**row, "message": f"{where}: {row['message']}", "clips_kept": kept}
        any_row = next(r["info"] for r in records if r["info"] is not None)
        segment = (any_row["segment_start_sec"], any_row["segment_end_sec"])
        if len(records) != count:  # not expected: every part reports once
            message = f"{len(records)} of {count} parts reported"
        else:
            message = (f"the first sample time is number {records[0]['first_target']}, the split expected "
                       f"{records[0]['expected_first_target']}; run this video with --split_sec 0")
        count_failed_video("decode")
        return failure_row(video_id, any_row["uri"], "decode", "SplitMismatch", message, clips_kept=kept,
                           segment=segment)


class JoinParts(beam.PTransform):
    """PCollection[(video_id, part record)] -> {info: (video_id, row), failures: rows}."""

    def __init__(self, options: DecodeOptions, progress: ProgressLog | None = None):
        super().__init__()
        self._fn = JoinPartsFn(options, progress)

    def expand(self, records):
        joined = (
            records
            | "GroupParts" >> beam.GroupByKey()
            | "Join" >> beam.ParDo(self._fn).with_outputs(FAILURES, main=INFO)
        )
        return {INFO: joined[INFO], FAILURES: joined[FAILURES]}
