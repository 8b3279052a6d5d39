"""The decode step: VideoRequest -> ClipItems, plus each video's metadata or its failure.

Wraps `ClipReader` in a DoFn with three outputs: clips (main), `info` as
(video_id, video row without features) for videos decoded to the end, and
`failures` rows for videos that could not be (with how many clips they kept).
The parts of a split video (transforms.split) report to `JoinParts` instead, which
gives the video's one info or failure row.
"""

from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from decoder import DecodeOptions, VideoError
from decoder.process import DecoderProcess
from storage.objects import open_object
from transforms.progress import ProgressLog, count_failed_video
from transforms.records import (
    FAILURES,
    NAMESPACE,
    ClipItem,
    VideoRequest,
    check_worker_python,
    failure_row,
    python_version,
    video_row,
)
from transforms.split import INFO, PARTS, JoinParts, part_record

_PROGRESS_EVERY_SEC = 30.0

log = logging.getLogger(__name__)


class DecodeClipsFn(beam.DoFn):
    """Decodes one video per call, in a decoder process of its own (decoder.process): a crash or a
    hang in FFmpeg costs that video a failure record, and the process restarts for the next one.
    The process decodes `prefetch` clips ahead (at least one) while the model runs.

    A transient error before the first clip (an object store timing out, a 5xx) is retried
    up to `io_retries` times with exponential backoff; anything else, or a transient error
    that persists, becomes the video's failure record.
    """

    def __init__(self, options: DecodeOptions, prefetch: int = 2, io_retries: int = 3, backoff_sec: float = 1.0,
                 progress: ProgressLog | None = None):
        self._options = options
        self._progress = progress or ProgressLog()
        self._prefetch = prefetch
        self._io_retries = io_retries
        self._backoff_sec = backoff_sec
        self._launcher_python = python_version()

    def setup(self):
        check_worker_python(self._launcher_python)
        self._videos_ok = Metrics.counter(NAMESPACE, "videos_decoded")
        self._clips = Metrics.counter(NAMESPACE, "clips_decoded")
        self._frames = Metrics.counter(NAMESPACE, "frames_decoded")
        self._padded = Metrics.counter(NAMESPACE, "clips_padded")
        self._retries = Metrics.counter(NAMESPACE, "io_retries")
        self._decode_ms = Metrics.distribution(NAMESPACE, "decode_ms_per_video")
        self._done = 0
        self._clip_total = 0
        self._started = time.monotonic()
        self._last_report = self._started
        self._decoder = DecoderProcess(slots=self._prefetch + 1)

    def teardown(self):
        self._decoder.close()

    def _fail(self, request: VideoRequest, reader, error: Exception, stage: str, transient: bool, clips_kept: int):
        error_type = getattr(error, "error_type", type(error).__name__)  # a decoder's unexpected error: its own
        row = failure_row(request.video_id, request.uri, stage, error_type,
                          getattr(error, "detail", None) or str(error), transient, clips_kept,
                          segment=(request.start_sec, request.end_sec))
        if request.part is not None:  # JoinParts counts the video
            return beam.pvalue.TaggedOutput(PARTS, part_record(request, reader.first_target, clips_kept, failure=row))
        self._progress.add("video")  # done, as a failure (the failures step counts it as one)
        count_failed_video(stage, error_type)
        return beam.pvalue.TaggedOutput(FAILURES, row)

    def process(self, request: VideoRequest):
        start = time.monotonic()
        emitted = 0
        part = request.part
        for attempt in range(self._io_retries + 1):
            reader = self._decoder.reader(request.uri, self._options, request.start_sec, request.end_sec,
                                          opener=open_object, part=part.reader_part(self._options) if part else None)
            try:
                for clip in reader:
                    emitted += 1
                    self._padded.inc(int(clip.padded))
                    yield ClipItem(request.video_id, request.uri, clip)
                break
            except VideoError as e:  # includes a stream that broke after some clips (they stay in `clips`)
                if e.transient and emitted == 0 and attempt < self._io_retries and not getattr(e, "retried", False):
                    delay = self._backoff_sec * 2**attempt
                    log.warning("%s; retrying in %.1fs (%d of %d)", e, delay, attempt + 1, self._io_retries)
                    self._retries.inc()
                    time.sleep(delay)
                    continue
                self._clips.inc(emitted)
                yield self._fail(request, reader, e, e.stage, e.transient, emitted)
                return
            except Exception as e:  # noqa: BLE001 - a decoder crash on one file must not end a job of millions;
                # it is logged with its traceback, counted, and recorded with its type for a bug report.
                log.exception("unexpected error decoding %s", request.uri)
                Metrics.counter(NAMESPACE, "unexpected_errors").inc()
                self._clips.inc(emitted)
                yield self._fail(request, reader, e, "decode", False, emitted)
                return
        info = reader.info  # of the attempt that succeeded
        self._clips.inc(emitted)
        self._frames.inc(info.decoded_frames)
        self._decode_ms.update(int((time.monotonic() - start) * 1000))
        if part is not None:
            yield beam.pvalue.TaggedOutput(
                PARTS, part_record(request, reader.first_target, emitted, info=video_row(request, info)))
        else:
            self._videos_ok.inc()
            yield beam.pvalue.TaggedOutput(INFO, (request.video_id, video_row(request, info)))
            self._progress.add("video")
        self._report(emitted)

    def _report(self, clips: int) -> None:
        self._done += 1
        self._clip_total += clips
        now = time.monotonic()
        if now - self._last_report >= _PROGRESS_EVERY_SEC:
            self._last_report = now
            rate = self._clip_total / (now - self._started)
            log.info("decoded %d videos, %d clips in this worker (%.2f clips/s)", self._done, self._clip_total, rate)


def check_decode_args(prefetch: int | None, io_retries: int | None, backoff_sec: float | None) -> None:
    """The one check of --decode_prefetch, --io_retries and --io_retry_backoff_sec. Raises ValueError naming the flag."""
    for flag, value in (("--decode_prefetch", prefetch), ("--io_retries", io_retries),
                        ("--io_retry_backoff_sec", backoff_sec)):
        if value is None or value < 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")


class DecodeClips(beam.PTransform):
    """PCollection[VideoRequest] -> {clips, info, failures}."""

    def __init__(self, options: DecodeOptions, prefetch: int = 2, io_retries: int = 3, backoff_sec: float = 1.0,
                 progress: ProgressLog | None = None):
        super().__init__()
        # `options` validated itself when it was built (once, by the job's entry point).
        check_decode_args(prefetch, io_retries, backoff_sec)
        self._options, self._progress = options, progress
        self._fn = DecodeClipsFn(options, prefetch, io_retries, backoff_sec, progress)

    def expand(self, requests):
        out = requests | "Decode" >> beam.ParDo(self._fn).with_outputs(INFO, FAILURES, PARTS, main="clips")
        joined = out[PARTS] | "JoinParts" >> JoinParts(self._options, self._progress)
        return {
            "clips": out.clips,
            INFO: (out[INFO], joined[INFO]) | "AllInfo" >> beam.Flatten(),
            FAILURES: (out[FAILURES], joined[FAILURES]) | "AllDecodeFailures" >> beam.Flatten(),
        }
