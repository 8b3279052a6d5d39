"""Streaming video decoding into model-ready clips with PyAV.

`ClipReader(uri, options)` opens a video (a local path directly, any other URI through
the `opener` it is given), decodes the first video stream with threading, samples
frames at a target rate by presentation time, crops and scales only the kept frames in
FFmpeg's scaler, and yields fixed-length clips one at a time. Memory is bounded by
about two clips of frames whatever the video's length.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import av
import numpy as np

from decoder.errors import (
    CorruptStreamError,
    LimitExceededError,
    NoFramesError,
    NoVideoStreamError,
    OpenError,
    TooShortError,
    UnsupportedCodecError,
    VideoError,
)
from decoder.frames import FrameConverter
from decoder.options import FALLBACK_FPS, DecodeOptions
from decoder.sampling import Clip, TimestampSampler, Windower

# Opens a remote URI for reading (e.g. Beam's FileSystems.open). It raises FileNotFoundError
# for a missing object; other errors count as transient (timeouts, 5xx) and may be retried.
Opener = Callable[[str], IO[bytes]]


@dataclasses.dataclass
class VideoInfo:
    """What is known of a video; complete once its clips have all been read."""

    uri: str
    codec: str = ""
    width: int = 0  # as displayed, after rotation
    height: int = 0
    rotation: int = 0  # degrees counter-clockwise applied to the decoded frames
    native_fps: float | None = None
    duration_sec: float | None = None  # declared by the container, else what was decoded
    decoded_frames: int = 0
    sampled_frames: int = 0
    num_clips: int = 0
    dropped_tail_frames: int = 0  # sampled frames not in any clip because tail == "drop"


def is_local(uri: str) -> bool:
    """A path on this machine (or a file:// URI), as opposed to an object store URI."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The path of a local URI (a file:// URI loses its scheme; a plain path stays as it is)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _local_source(uri: str) -> str:
    path = local_path(uri)
    if not os.path.exists(path):
        raise OpenError(uri, "no such file")
    if os.path.isdir(path):
        raise OpenError(uri, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise OpenError(uri, "empty file (0 bytes)")
    return path


def _remote_source(uri: str, opener: Opener | None) -> IO[bytes]:
    if opener is None:
        raise OpenError(uri, "a remote URI needs an opener (the jobs pass Beam's FileSystems)")
    try:
        return opener(uri)
    except FileNotFoundError as e:
        raise OpenError(uri, f"no such object: {e}") from e
    except Exception as e:  # filesystem plugins raise their own types (BeamIOError, ...): retryable
        raise OpenError(uri, f"cannot read: {type(e).__name__}: {e}", transient=True) from e


def open_container(uri: str, opener: Opener | None = None) -> tuple[Any, IO[bytes] | None]:
    """Opens the container; returns (container, file object to close or None)."""
    fileobj = None
    try:
        if is_local(uri):
            source: Any = _local_source(uri)
        else:
            source = fileobj = _remote_source(uri, opener)
        return av.open(source, mode="r", metadata_errors="ignore"), fileobj
    except VideoError:
        if fileobj is not None:
            fileobj.close()
        raise
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        if fileobj is not None:
            fileobj.close()
        raise OpenError(uri, f"not a readable media file: {type(e).__name__}: {e}") from e


@dataclasses.dataclass
class _Stream:
    """What probing the container tells before the first frame."""

    stream: Any
    time_base: Any
    t0: float | None  # the stream's start time, seconds (None: taken from the first frame)
    declared: float | None  # duration the container declares


class ClipReader:
    """Iterates the clips of one video; `info` is complete after the iteration.

    Args:
        uri: local path, file:// URI, or a remote URI that `opener` can open (gs://, s3://, ...).
        options: sampling, windowing, preprocessing and limits.
        start_sec, end_sec: optional segment [start_sec, end_sec) in seconds from the
            start of the stream; decoding seeks to the keyframe before start_sec.
        opener: opens remote URIs (the Beam layer passes Beam's FileSystems).

    Raises (from iteration): the VideoError subclasses of decoder.errors.
    """

    def __init__(
        self, uri: str, options: DecodeOptions, start_sec: float | None = None, end_sec: float | None = None,
        opener: Opener | None = None,
    ):
        if start_sec is not None and start_sec < 0:
            raise ValueError(f"start_sec must be >= 0, got {start_sec}")
        if end_sec is not None and start_sec is not None and end_sec <= start_sec:
            raise ValueError(f"end_sec must be > start_sec, got [{start_sec}, {end_sec})")
        self.uri = uri
        self.options = options
        self.start_sec = start_sec or 0.0
        self.end_sec = end_sec
        self.opener = opener
        self.info = VideoInfo(uri=uri)

    def __iter__(self) -> Iterator[Clip]:
        container, fileobj = open_container(self.uri, self.opener)
        try:
            yield from _Decoding(self, container).clips()
        finally:
            container.close()
            if fileobj is not None:
                fileobj.close()

    @property
    def segment(self) -> str:
        """' in [start, end)' when a segment was asked for, for messages."""
        return f" in [{self.start_sec}, {self.end_sec})" if (self.start_sec or self.end_sec is not None) else ""


class _Decoding:
    """One pass over one container: probe, decode and sample frame by frame, then the end checks."""

    def __init__(self, reader: ClipReader, container: Any):
        self.reader, self.uri, self.opts, self.info = reader, reader.uri, reader.options, reader.info
        self.container = container
        self.sampler = TimestampSampler(self.opts.fps, reader.start_sec, reader.end_sec)
        self.windower: Windower | None = None
        self.converter: FrameConverter | None = None
        self._converted: tuple[int, np.ndarray] | None = None  # one frame may fill several sample times
        self.prev: tuple[Any, float, int] | None = None  # the last decoded frame, not yet sampled past

    # ---- before the first frame ---------------------------------------------------------------

    def probe(self) -> _Stream:
        """Picks the video stream, checks its size, reads rate and duration, seeks to the segment."""
        container, opts, info = self.container, self.opts, self.info
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise NoVideoStreamError(self.uri, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]  # the first video stream, wherever audio or data streams sit
        if stream.codec_context is None:
            raise UnsupportedCodecError(self.uri, "no decoder for the video stream's codec in this FFmpeg build")
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = opts.threads
        ctx = stream.codec_context
        info.codec = ctx.name
        self._check_pixels(ctx.width, ctx.height)
        rate = stream.average_rate or stream.guessed_rate
        info.native_fps = float(rate) if rate else None
        tb = stream.time_base
        t0 = float(stream.start_time * tb) if stream.start_time is not None else None
        info.duration_sec = declared = self._declared_duration(stream)
        if self.reader.start_sec > 0 and t0 is not None:
            container.seek(int((t0 + self.reader.start_sec) / tb), stream=stream, backward=True, any_frame=False)
        return _Stream(stream, tb, t0, declared)

    def _declared_duration(self, stream: Any) -> float | None:
        if stream.duration is not None and stream.time_base:
            return float(stream.duration * stream.time_base)
        if self.container.duration is not None:
            return self.container.duration / av.time_base
        return None

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self.opts.max_pixels:
            raise LimitExceededError(
                self.uri, "max_pixels", f"{width}x{height} frames exceed max_pixels={self.opts.max_pixels}"
            )

    @property
    def sample_fps(self) -> float:
        """Samples per second: the target rate, else the native one, else the fallback."""
        return self.opts.fps or self.info.native_fps or FALLBACK_FPS

    @property
    def sample_dt(self) -> float:
        return 1.0 / self.sample_fps

    def _window_starts(self, declared: float | None) -> list[int] | None:
        n = self.opts.num_clips
        if n is None:
            return None
        seg_start, seg_end = self.reader.start_sec, self.reader.end_sec
        if declared is None:
            raise NoFramesError(self.uri, "num_clips needs the video's duration, and the container declares none")
        duration = (min(declared, seg_end) if seg_end is not None else declared) - seg_start
        fps = self.sample_fps
        clip_sec = self.opts.frames_per_clip / fps
        starts_sec = np.linspace(0.0, max(0.0, duration - clip_sec), n)
        return [int(round(s * fps)) for s in starts_sec]

    def _start(self, frame: Any, declared: float | None) -> None:
        """At the first frame: its geometry and rotation, the windows and the converter."""
        info = self.info
        self._check_pixels(frame.width, frame.height)
        info.rotation = 180 if frame.rotation == -180 else int(frame.rotation or 0)
        rotated = info.rotation % 180 != 0
        info.width, info.height = (frame.height, frame.width) if rotated else (frame.width, frame.height)
        self.windower = Windower(self.opts, self._window_starts(declared))
        self.converter = FrameConverter(self.opts, info.rotation)

    # ---- frame by frame -----------------------------------------------------------------------

    def _convert(self, frame_id: int, frame: Any) -> np.ndarray:
        if self._converted is None or self._converted[0] != frame_id:
            self._converted = (frame_id, self.converter(frame))
        return self._converted[1]

    def _emit(self, frame: Any, t: float, frame_id: int, upto: float) -> Iterator[Clip]:
        """The clips completed by sampling `frame` (shown from `t` until `upto`)."""
        for target in self.sampler.times(t, upto):
            self.info.sampled_frames = self.sampler.sampled
            yield from self.windower.push(self._convert(frame_id, frame), target, self.sample_dt)

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise LimitExceededError(
                self.uri, "max_seconds_per_video",
                f"decoding took longer than max_seconds_per_video={self.opts.max_seconds_per_video}s",
            )

    def _check_duration(self, t: float) -> None:
        if t > self.opts.max_duration_sec:
            raise LimitExceededError(
                self.uri, "max_duration_sec", f"video runs past max_duration_sec={self.opts.max_duration_sec}s"
            )

    def clips(self) -> Iterator[Clip]:
        s = self.probe()
        t0, info, seg_end = s.t0, self.info, self.reader.end_sec
        deadline = time.monotonic() + self.opts.max_seconds_per_video
        frame_id = 0
        try:
            for frame in self.container.decode(s.stream):
                self._check_deadline(deadline)
                if frame.pts is None:
                    continue
                t0 = float(frame.pts * s.time_base) if t0 is None else t0
                t = float(frame.pts * s.time_base) - t0
                info.decoded_frames += 1
                frame_id += 1
                if self.windower is None:
                    self._start(frame, s.declared)
                self._check_duration(t)
                if self.prev is not None:
                    yield from self._emit(*self.prev, upto=t)
                    if self.windower.done:
                        break
                self.prev = (frame, t, frame_id)
                if seg_end is not None and t >= seg_end:
                    break
        except (av.error.FFmpegError, OSError) as e:
            yield from self._after_break(e)
        yield from self._finish(s, t0)

    # ---- at the end ---------------------------------------------------------------------------

    def _after_break(self, error: Exception) -> Iterator[Clip]:
        """The stream broke: keep what was decoded (tail padded), then report the break."""
        if self.prev is not None:
            yield from self._emit(*self.prev, upto=self.prev[1] + self.sample_dt)
        if self.windower is not None:
            yield from self.windower.finish(self.sample_dt)
            self.info.num_clips = self.windower.clips_emitted
        raise CorruptStreamError(
            self.uri, f"stream broke after {self.info.decoded_frames} frames: {type(error).__name__}: {error}",
            clips_emitted=self.info.num_clips,
        ) from error

    def _finish(self, s: _Stream, t0: float | None) -> Iterator[Clip]:
        """The last frame's samples and the padded windows, then the end-of-stream checks."""
        info, where = self.info, self.reader.segment
        if self.prev is None or self.windower is None:
            raise NoFramesError(self.uri, f"no decodable video frames{where} (codec {info.codec})")
        last_frame, last_time, last_id = self.prev
        last_dt = (float(last_frame.duration * s.time_base) if last_frame.duration
                   else 1.0 / (info.native_fps or self.opts.fps or FALLBACK_FPS))
        yield from self._emit(last_frame, last_time, last_id, upto=last_time + last_dt)
        if info.sampled_frames == 0:
            raise NoFramesError(self.uri, f"no video frames{where}: the video has {last_time + last_dt:.2f}s")
        yield from self.windower.finish(self.sample_dt)
        info.num_clips = self.windower.clips_emitted
        info.dropped_tail_frames = self.windower.dropped
        self._check_end(s, t0, decoded_to=last_time + last_dt)

    def _check_end(self, s: _Stream, t0: float | None, decoded_to: float) -> None:
        """Records the decoded duration; raises for no clip at all, or a stream cut short."""
        info, whole = self.info, self.reader.start_sec == 0 and self.reader.end_sec is None
        if not self.windower.done and whole:
            info.duration_sec = decoded_to  # decoded to the end: the truth, whatever the header says
        if info.num_clips == 0:
            raise TooShortError(
                self.uri,
                f"{info.sampled_frames} sampled frames, fewer than frames_per_clip={self.opts.frames_per_clip}, "
                "and tail='drop'",
            )
        # A container that declares more than was decoded was cut short (a truncated upload, say).
        if s.declared is not None and self.reader.end_sec is None and not self.windower.done:
            # Some containers (Matroska) declare the end time rather than the length of a stream
            # that starts above zero: take the smaller reading.
            missing = min(s.declared, s.declared - (t0 or 0.0)) - decoded_to
            if missing > max(1.0, 0.05 * s.declared):
                raise CorruptStreamError(
                    self.uri,
                    f"stream ends at {decoded_to:.2f}s but the container declares {s.declared:.2f}s (truncated?)",
                    clips_emitted=info.num_clips,
                )
