"""Streaming video decoding into model-ready clips with PyAV (no TensorFlow here).

`ClipReader(uri, options)` opens a video (a local path directly, any other URI
through Beam's FileSystems), decodes the first video stream with threading,
samples frames at a target rate by presentation time, crops and scales only the
kept frames in FFmpeg's scaler, and yields fixed-length clips one at a time.
Memory is bounded by about two clips of frames whatever the video's length.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

from transforms.errors import (
    CorruptStreamError,
    LimitExceededError,
    NoFramesError,
    NoVideoStreamError,
    OpenError,
    TooShortError,
    UnsupportedCodecError,
    VideoError,
)

CROP_MODES = ("center", "resize", "short_side")
TAIL_POLICIES = ("pad", "drop")
_EPS = 1e-6  # seconds; absorbs float error when comparing presentation times


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How a video becomes clips. Defaults follow the model's evaluation (SPEC.md section 2)."""

    fps: float | None = 10.0  # None keeps the native frame rate
    frames_per_clip: int = 32
    stride: int | None = None  # frames between clip starts; None = frames_per_clip (no overlap)
    num_clips: int | None = None  # instead of a stride: this many clips spread evenly (authors' eval)
    size: int = 224
    crop: str = "center"  # center: centre square then resize; resize: whole frame; short_side: resize then crop
    tail: str = "pad"  # a short last clip (or a video shorter than one clip): pad (repeat last frame) or drop
    max_pixels: int = 7680 * 4320  # per frame (8K UHD)
    max_duration_sec: float = 6 * 3600.0  # of video decoded
    max_seconds_per_video: float = 3600.0  # wall clock
    threads: int = 0  # decoder threads; 0 = one per core

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be > 0 (or None for the native rate), got {self.fps}")
        if self.frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be >= 1, got {self.frames_per_clip}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.num_clips is not None and self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
        if self.num_clips is not None and self.stride is not None:
            raise ValueError("num_clips and stride exclude each other: give one")
        if self.size < 2 or self.size % 2:
            raise ValueError(f"size must be an even number >= 2 (the model needs even H and W), got {self.size}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.tail not in TAIL_POLICIES:
            raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {self.tail!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if not self.max_duration_sec > 0:
            raise ValueError(f"max_duration_sec must be > 0, got {self.max_duration_sec}")
        if not self.max_seconds_per_video > 0:
            raise ValueError(f"max_seconds_per_video must be > 0, got {self.max_seconds_per_video}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")

    @property
    def clip_stride(self) -> int:
        return self.stride if self.stride is not None else self.frames_per_clip


@dataclasses.dataclass
class Clip:
    clip_index: int
    start_sec: float  # presentation time of the first frame, from the start of the stream
    end_sec: float  # time just after the last real frame
    num_frames: int  # real frames; the rest (padded=True) repeat the last one
    padded: bool
    frames: np.ndarray  # uint8 [frames_per_clip, size, size, 3], RGB


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


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _open_container(uri: str) -> tuple[Any, Any]:
    """Opens the container; returns (container, file object to close or None)."""
    fileobj = None
    try:
        if _is_local(uri):
            path = _local_path(uri)
            if not os.path.exists(path):
                raise OpenError(uri, "no such file")
            if os.path.isdir(path):
                raise OpenError(uri, "is a directory, not a video file")
            if os.path.getsize(path) == 0:
                raise OpenError(uri, "empty file (0 bytes)")
            source: Any = path
        else:
            from apache_beam.io.filesystems import FileSystems

            try:
                fileobj = FileSystems.open(uri, compression_type="application/octet-stream")
            except FileNotFoundError as e:
                raise OpenError(uri, f"no such object: {e}") from e
            except (OSError, TimeoutError) as e:
                raise OpenError(uri, f"cannot read: {type(e).__name__}: {e}", transient=True) from e
            except Exception as e:  # filesystem plugins raise their own types (e.g. BeamIOError)
                raise OpenError(uri, f"cannot read: {type(e).__name__}: {e}", transient=True) from e
            source = fileobj
        container = av.open(source, mode="r", metadata_errors="ignore")
    except VideoError:
        if fileobj is not None:
            fileobj.close()
        raise
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        if fileobj is not None:
            fileobj.close()
        raise OpenError(uri, f"not a readable media file: {type(e).__name__}: {e}") from e
    return container, fileobj


class _FrameConverter:
    """Crop, scale and convert to RGB in one FFmpeg filter graph; rebuilt if the frame geometry changes."""

    def __init__(self, options: DecodeOptions, rotation: int):
        self._options = options
        self._k = (rotation // 90) % 4  # np.rot90 turns counter-clockwise, as the display matrix does
        self._key: tuple | None = None
        self._graph: Any = None

    def _filters(self, width: int, height: int) -> list[tuple[str, str]]:
        size = self._options.size
        if self._options.crop == "center":
            side = min(width, height)
            return [("crop", f"{side}:{side}"), ("scale", f"{size}:{size}")]
        if self._options.crop == "resize":
            return [("scale", f"{size}:{size}")]
        short = min(width, height)  # short_side: scale the short side to `size`, keep aspect, crop the centre
        w = max(size, round(width * size / short))
        h = max(size, round(height * size / short))
        return [("scale", f"{w}:{h}"), ("crop", f"{size}:{size}")]

    def _build(self, frame: av.VideoFrame) -> None:
        graph = av.filter.Graph()
        node = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=Fraction(1, 1000))
        for name, args in [*self._filters(frame.width, frame.height), ("format", "rgb24")]:
            nxt = graph.add(name, args)
            node.link_to(nxt)
            node = nxt
        node.link_to(graph.add("buffersink"))
        graph.configure()
        self._graph = graph
        self._key = (frame.width, frame.height, frame.format.name)

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._key != (frame.width, frame.height, frame.format.name):
            self._build(frame)
        frame.pts = None  # the graph's own timing is irrelevant; keeps the buffer source from complaining
        self._graph.vpush(frame)
        rgb = self._graph.vpull().to_ndarray(format="rgb24")
        if self._k:
            rgb = np.ascontiguousarray(np.rot90(rgb, self._k))
        return rgb


class _Windower:
    """Turns a stream of sampled frames into clips, holding at most about two clips of frames."""

    def __init__(self, options: DecodeOptions, starts: list[int] | None):
        self._f = options.frames_per_clip
        self._stride = options.clip_stride
        self._pad = options.tail == "pad"
        self._starts = deque(starts) if starts is not None else None  # num_clips mode: fixed start indices
        self._next_start = self._starts[0] if self._starts else 0
        self._buffer: deque[tuple[int, np.ndarray, float]] = deque()
        self._n = 0  # sampled frames seen
        self._covered_to = 0  # first sampled index not in an emitted clip
        self._clip_index = 0
        self._dt = 0.0
        self.dropped = 0

    def _advance(self) -> bool:
        if self._starts is not None:
            self._starts.popleft()
            if not self._starts:
                return False
            self._next_start = self._starts[0]
        else:
            self._next_start += self._stride
        return True

    def _trim(self) -> None:
        keep_from = min(self._next_start, self._n - self._f)
        while self._buffer and self._buffer[0][0] < keep_from:
            self._buffer.popleft()

    def _clip(self, start: int, frame_dt: float) -> Clip:
        frames = [(i, a, t) for i, a, t in self._buffer if start <= i < start + self._f]
        real = len(frames)
        arrays = [a for _, a, _ in frames]
        arrays += [arrays[-1]] * (self._f - real)
        clip = Clip(
            clip_index=self._clip_index,
            start_sec=frames[0][2],
            end_sec=frames[-1][2] + frame_dt,
            num_frames=real,
            padded=real < self._f,
            frames=np.stack(arrays),
        )
        self._clip_index += 1
        self._covered_to = max(self._covered_to, start + real)
        return clip

    @property
    def clips_emitted(self) -> int:
        return self._clip_index

    @property
    def done(self) -> bool:
        return self._starts is not None and not self._starts

    def push(self, array: np.ndarray, t: float, frame_dt: float) -> Iterator[Clip]:
        self._buffer.append((self._n, array, t))
        self._n += 1
        while not self.done and self._n >= self._next_start + self._f:
            yield self._clip(self._next_start, frame_dt)
            if not self._advance():
                break
        self._trim()

    def finish(self, frame_dt: float) -> Iterator[Clip]:
        """The clips that need padding: a short tail, windows past the end, a video shorter than a clip."""
        if self._n == 0:
            return
        while not self.done:
            start = self._next_start
            if self._starts is not None:
                start = min(start, max(0, self._n - self._f))  # a window planned past the end: the last one
            if start >= self._n or (self._starts is None and self._n <= self._covered_to):
                break
            if not self._pad and self._n - start < self._f:
                self.dropped = self._n - max(start, self._covered_to)
                break
            yield self._clip(start, frame_dt)
            if not self._advance():
                break


class ClipReader:
    """Iterates the clips of one video; `info` is complete after the iteration.

    Args:
        uri: local path, file:// URI, or any Beam filesystem URI (gs://, s3://, ...).
        options: sampling, windowing, preprocessing and limits.
        start_sec, end_sec: optional segment [start_sec, end_sec) in seconds from the
            start of the stream; decoding seeks to the keyframe before start_sec.

    Raises (from iteration): the VideoError subclasses of transforms.errors.
    """

    def __init__(self, uri: str, options: DecodeOptions, start_sec: float | None = None, end_sec: float | None = None):
        if start_sec is not None and start_sec < 0:
            raise ValueError(f"start_sec must be >= 0, got {start_sec}")
        if end_sec is not None and start_sec is not None and end_sec <= start_sec:
            raise ValueError(f"end_sec must be > start_sec, got [{start_sec}, {end_sec})")
        self.uri = uri
        self.options = options
        self.start_sec = start_sec or 0.0
        self.end_sec = end_sec
        self.info = VideoInfo(uri=uri)

    def __iter__(self) -> Iterator[Clip]:
        container, fileobj = _open_container(self.uri)
        try:
            yield from self._clips(container)
        finally:
            container.close()
            if fileobj is not None:
                fileobj.close()

    # ---- the pieces ---------------------------------------------------------------------------

    def _video_stream(self, container: Any) -> Any:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise NoVideoStreamError(self.uri, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]  # the first video stream, wherever audio or data streams sit
        if stream.codec_context is None:
            raise UnsupportedCodecError(self.uri, "no decoder for the video stream's codec in this FFmpeg build")
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self.options.threads
        return stream

    def _declared_duration(self, container: Any, stream: Any) -> float | None:
        if stream.duration is not None and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        return None

    def _window_starts(self, fps: float, duration: float | None) -> list[int] | None:
        n = self.options.num_clips
        if n is None:
            return None
        if duration is None:
            raise NoFramesError(self.uri, "num_clips needs the video's duration, and the container declares none")
        clip_sec = self.options.frames_per_clip / fps
        starts_sec = np.linspace(0.0, max(0.0, duration - clip_sec), n)
        return [int(round(s * fps)) for s in starts_sec]

    def _clips(self, container: Any) -> Iterator[Clip]:
        opts, info = self.options, self.info
        stream = self._video_stream(container)
        ctx = stream.codec_context
        info.codec = ctx.name
        if ctx.width * ctx.height > opts.max_pixels:
            raise LimitExceededError(
                self.uri, "max_pixels", f"{ctx.width}x{ctx.height} frames exceed max_pixels={opts.max_pixels}"
            )
        rate = stream.average_rate or stream.guessed_rate
        info.native_fps = float(rate) if rate else None
        tb = stream.time_base
        t0 = float(stream.start_time * tb) if stream.start_time is not None else None
        declared = self._declared_duration(container, stream)
        info.duration_sec = declared
        seg_start, seg_end = self.start_sec, self.end_sec
        if seg_start > 0 and t0 is not None:
            container.seek(int((t0 + seg_start) / tb), stream=stream, backward=True, any_frame=False)

        fps = opts.fps
        frame_dt_default = 1.0 / (fps or info.native_fps or 25.0)
        window_len = None
        if declared is not None:
            window_len = (min(declared, seg_end) if seg_end is not None else declared) - seg_start
        windower: _Windower | None = None
        converter: _FrameConverter | None = None
        deadline = time.monotonic() + opts.max_seconds_per_video
        prev: tuple[Any, float] | None = None  # the last decoded frame, not yet sampled past
        k = 0  # index of the next target time
        last_t = None
        converted: tuple[int, np.ndarray] | None = None

        def convert(frame_id: int, frame: Any) -> np.ndarray:
            nonlocal converted
            if converted is None or converted[0] != frame_id:
                converted = (frame_id, converter(frame))
            return converted[1]

        def sample(frame: Any, t: float, frame_id: int, upto: float) -> Iterator[Clip]:
            """Emits `frame` for every target time in [its time, upto)."""
            nonlocal k
            if fps is None:
                if seg_start - _EPS <= t and (seg_end is None or t < seg_end - _EPS):
                    info.sampled_frames += 1
                    yield from windower.push(convert(frame_id, frame), t, frame_dt_default)
                return
            while True:
                target = seg_start + k / fps
                if target >= upto - _EPS or (seg_end is not None and target >= seg_end - _EPS):
                    return
                if target < t - _EPS and info.sampled_frames == 0:
                    # The stream (or segment) starts after this target: begin at the first frame.
                    k = math.ceil((t - seg_start) * fps - _EPS)
                    continue
                info.sampled_frames += 1
                k += 1
                yield from windower.push(convert(frame_id, frame), target, frame_dt_default)

        frame_id = 0
        try:
            for frame in container.decode(stream):
                if time.monotonic() > deadline:
                    raise LimitExceededError(
                        self.uri, "max_seconds_per_video",
                        f"decoding took longer than max_seconds_per_video={opts.max_seconds_per_video}s",
                    )
                if frame.pts is None:
                    continue
                if t0 is None:
                    t0 = float(frame.pts * tb)
                t = float(frame.pts * tb) - t0
                info.decoded_frames += 1
                frame_id += 1
                if windower is None:
                    if frame.width * frame.height > opts.max_pixels:
                        raise LimitExceededError(
                            self.uri, "max_pixels",
                            f"{frame.width}x{frame.height} frames exceed max_pixels={opts.max_pixels}",
                        )
                    info.rotation = int(frame.rotation or 0)
                    if info.rotation == -180:
                        info.rotation = 180
                    rotated = info.rotation % 180 != 0
                    info.width, info.height = (frame.height, frame.width) if rotated else (frame.width, frame.height)
                    effective_fps = fps or info.native_fps or 25.0
                    windower = _Windower(opts, self._window_starts(effective_fps, window_len))
                    converter = _FrameConverter(opts, info.rotation)
                if t > opts.max_duration_sec:
                    raise LimitExceededError(
                        self.uri, "max_duration_sec", f"video runs past max_duration_sec={opts.max_duration_sec}s"
                    )
                if prev is not None:
                    yield from sample(*prev, upto=t)
                    if windower.done:
                        break
                prev = (frame, t, frame_id)
                last_t = t
                if seg_end is not None and t >= seg_end:
                    break
        except (av.error.FFmpegError, OSError) as e:
            # The stream broke: keep what was decoded (tail padded), then report the break.
            if prev is not None:
                yield from sample(*prev, upto=prev[1] + frame_dt_default)
            if windower is not None:
                yield from windower.finish(frame_dt_default)
                info.num_clips = windower.clips_emitted
            raise CorruptStreamError(
                self.uri, f"stream broke after {info.decoded_frames} frames: {type(e).__name__}: {e}",
                clips_emitted=info.num_clips, at_sec=last_t,
            ) from e

        where = f" in [{seg_start}, {seg_end})" if (seg_start or seg_end is not None) else ""
        if prev is None or windower is None:
            raise NoFramesError(self.uri, f"no decodable video frames{where} (codec {info.codec})")
        last_frame, last_time, last_id = prev
        last_dt = float(last_frame.duration * tb) if last_frame.duration else 1.0 / (info.native_fps or fps or 25.0)
        yield from sample(last_frame, last_time, last_id, upto=last_time + last_dt)
        if info.sampled_frames == 0:
            raise NoFramesError(self.uri, f"no video frames{where}: the video has {last_time + last_dt:.2f}s")
        yield from windower.finish(frame_dt_default)
        info.num_clips = windower.clips_emitted
        info.dropped_tail_frames = windower.dropped
        decoded_to = last_time + last_dt
        if not windower.done and seg_start == 0 and seg_end is None:
            info.duration_sec = decoded_to  # decoded to the end: the truth, whatever the header says
        if info.num_clips == 0:
            raise TooShortError(
                self.uri,
                f"{info.sampled_frames} sampled frames, fewer than frames_per_clip={opts.frames_per_clip}, "
                "and tail='drop'",
            )
        # A container that declares more than was decoded was cut short (a truncated upload, say).
        if declared is not None and seg_end is None and not windower.done:
            # Some containers (Matroska) declare the end time rather than the length of a stream
            # that starts above zero: take the smaller reading.
            missing = min(declared, declared - (t0 or 0.0)) - decoded_to
            if missing > max(1.0, 0.05 * declared):
                raise CorruptStreamError(
                    self.uri,
                    f"stream ends at {decoded_to:.2f}s but the container declares {declared:.2f}s (truncated?)",
                    clips_emitted=info.num_clips, at_sec=decoded_to,
                )
