"""Streaming video decoding into model-ready clips with PyAV.

`ClipReader(uri, options)` opens a video (a local path directly, any other URI through
the `opener` it is given), decodes the first video stream with threading, samples
frames at a target rate by presentation time, crops and scales only the kept frames in
FFmpeg's scaler, and yields fixed-length clips one at a time. Memory is bounded by
about two clips of frames whatever the video's length.

It decodes only what the clips need, with the frames that decoding everything gives:
- a frame on screen at no sample time that no other frame refers to (a non-reference
  frame: most B-frames of h264, hevc and mpeg4) is not decoded: the codec context's
  `skip_frame` is set per packet, from the packets' timestamps read a few ahead;
- across a gap no clip uses (windows of `num_clips`, a stride longer than a clip) it
  seeks to the keyframe before the next window instead of decoding through the gap.
If a clip ever needs a sample that was left out (a container that declares more than
it holds moves the last window), the video is decoded again without either shortcut.
Those decisions live in decoder.decode_less; opening the bytes in decoder.source.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import numpy as np

from decoder.decode_less import Packets, Shortcuts
from decoder.errors import (
    CorruptStreamError,
    LimitExceededError,
    NoFramesError,
    NoVideoStreamError,
    TooShortError,
    UnsupportedCodecError,
)
from decoder.frames import FrameConverter
from decoder.options import FALLBACK_FPS, DecodeOptions
from decoder.sampling import Clip, NeedAllFrames, TimestampSampler, Windower
from decoder.source import Opener, declared_duration, open_container


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
        decode_all: decode every frame, without skipping or seeking (the reference the
            shortcuts are tested and measured against; the clips are the same).
        part: (first, end, first_clip): one part of a long video split over workers, the
            sample times start_sec + k/fps for k in [first, end) (end None: to the end), whose
            first clip is the video's clip `first_clip`. Parts cut at clip starts give the clips
            of a reader without `part`, with the same clip_index and times.
        on_probe: called once the container is open and its video stream probed, before the
            first frame is decoded (a decoder process tells its parent the open stage is over).

    Raises (from iteration): the VideoError subclasses of decoder.errors.
    """

    def __init__(
        self, uri: str, options: DecodeOptions, start_sec: float | None = None, end_sec: float | None = None,
        opener: Opener | None = None, decode_all: bool = False,
        part: tuple[int, int | None, int] | None = None, on_probe: Callable[[], None] | None = None,
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
        self.decode_all = decode_all
        self.on_probe = on_probe
        self.info = VideoInfo(uri=uri)
        self.first_sample, self.end_sample, self.first_clip = part or (0, None, 0)
        if part is not None:
            _check_part(options, *part)
        self.first_target: int | None = None  # after iteration: the index k of the first sample time

    @property
    def seek_sec(self) -> float:
        """Where decoding starts: the segment's start, or the part's first sample time."""
        if not self.first_sample:
            return self.start_sec
        return self.start_sec + self.first_sample / self.options.fps

    @property
    def stop_sec(self) -> float | None:
        """No sample at or after this time: the segment's end, or the part's end sample time."""
        if self.end_sample is None:
            return self.end_sec
        part_end = self.start_sec + self.end_sample / self.options.fps  # as the sampler computes its targets
        return part_end if self.end_sec is None else min(part_end, self.end_sec)

    def __iter__(self) -> Iterator[Clip]:
        yielded = 0
        for decode_all in ((True,) if self.decode_all else (False, True)):
            with open_container(self.uri, self.opener) as container:
                decoding = _Decoding(self, container, decode_all)
                try:
                    for clip in decoding.clips():
                        if clip.clip_index >= yielded:  # a second pass repeats the clips already given
                            yielded += 1
                            yield self._in_video(clip)
                    return
                except NeedAllFrames as e:
                    if decode_all:  # a seek the full pass needs failed (a segment's start, say)
                        raise CorruptStreamError(self.uri, f"cannot decode the frames asked for: {e}",
                                                 clips_emitted=yielded) from e
                    decoded = self.info.decoded_frames
                    self.info = VideoInfo(uri=self.uri, decoded_frames=decoded)  # the second pass counts anew
                finally:
                    self.first_target = decoding.sampler.first_k

    def _in_video(self, clip: Clip) -> Clip:
        """A part's clip numbered as in the whole video."""
        if not self.first_sample:
            return clip
        return dataclasses.replace(clip, clip_index=clip.clip_index + self.first_clip,
                                   first_sample=clip.first_sample + self.first_clip * self.options.clip_stride)

    @property
    def segment(self) -> str:
        """' in [start, end)' when a segment was asked for, for messages."""
        return f" in [{self.start_sec}, {self.end_sec})" if (self.start_sec or self.end_sec is not None) else ""


def _check_part(options: DecodeOptions, first: int, end: int | None, first_clip: int) -> None:
    if not options.splittable:
        raise ValueError("a part of a video needs a sampling rate (--fps) and clips every --stride, not --num_clips")
    if first < 0 or first_clip < 0:
        raise ValueError(f"a part starts at a sample and a clip >= 0, got {first} and {first_clip}")
    if end is not None and end <= first:
        raise ValueError(f"a part must end after it starts, got samples [{first}, {end})")


class _Decoding:
    """One pass over one container: probe, decode and sample frame by frame, then the end checks."""

    def __init__(self, reader: ClipReader, container: Any, decode_all: bool = False):
        self.reader, self.uri, self.opts, self.info = reader, reader.uri, reader.options, reader.info
        self.container = container
        self.decode_all = decode_all or self.opts.fps is None  # native rate: every frame is a sample
        self.t0: float | None = None
        self.shortcuts: Shortcuts | None = None  # once probed (decoder.decode_less)
        self.sampler = TimestampSampler(self.opts.fps, reader.start_sec, reader.stop_sec, reader.first_sample)
        self.windower: Windower | None = None
        self.converter: FrameConverter | None = None
        self._converted: tuple[int, np.ndarray] | None = None  # one frame may fill several sample times
        self.prev: tuple[Any, float, int] | None = None  # the last decoded frame, not yet sampled past

    # ---- before the first frame ---------------------------------------------------------------

    def probe(self) -> _Stream:
        """Picks the video stream, checks its size, reads rate and duration."""
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
        info.duration_sec = declared = declared_duration(self.container, stream)
        return _Stream(stream, tb, t0, declared)

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
        """The clips completed by sampling `frame` (shown from `t` until `upto`); none once the windows are done."""
        windower = self.windower
        for target in self.sampler.times(t, upto):
            if windower.done:
                return
            self.info.sampled_frames = self.sampler.sampled
            i = windower.next_index
            used = self.decode_all or windower.needs(i)
            yield from windower.push(self._convert(frame_id, frame) if used else None, target, self.sample_dt)

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
        if self.reader.on_probe is not None:
            self.reader.on_probe()
        self.t0 = s.t0
        deadline = time.monotonic() + self.opts.max_seconds_per_video
        packets = Packets(self.container, s.stream)
        self.shortcuts = shortcuts = Shortcuts(packets, self.sampler, enabled=not self.decode_all)
        self._frame_id, self._stop = 0, False
        if self.reader.seek_sec > 0 and self.t0 is not None:
            shortcuts.start_at(self.t0, self.reader.seek_sec)
        try:
            while not self._stop:
                packet = packets.next()
                if packet is None and shortcuts.landing:  # a seek landed at the end: as if past its target
                    shortcuts.overshot = True
                elif packet is None:
                    break
                else:
                    shortcuts.set_skip(packet, self.windower, self.t0)
                    for frame in packet.decode():
                        yield from self._on_frame(frame, s, deadline)
                        if self._stop:
                            break
                if shortcuts.overshot:
                    shortcuts.seek_again(self.t0)
                elif not self._stop:
                    shortcuts.maybe_seek(self.windower, self.t0, None if self.prev is None else self.prev[1])
        except (av.error.FFmpegError, OSError) as e:
            yield from self._after_break(e)
        yield from self._finish(s, self.t0)

    def _on_frame(self, frame: Any, s: _Stream, deadline: float) -> Iterator[Clip]:
        """One decoded frame: it ends the previous frame's time on screen, whose samples are taken now."""
        self._check_deadline(deadline)
        if frame.pts is None:
            return
        self.t0 = float(frame.pts * s.time_base) if self.t0 is None else self.t0
        t = float(frame.pts * s.time_base) - self.t0
        self.info.decoded_frames += 1
        self._frame_id += 1
        if not self.shortcuts.landed(t):
            return  # decoded again after a seek that landed before the last frame
        if self.windower is None:
            self._start(frame, s.declared)
        self._check_duration(t)
        if self.prev is not None:
            yield from self._emit(*self.prev, upto=t)
            if self.windower.done:
                self._stop = True
                return
        self.prev = (frame, t, self._frame_id)
        if self.reader.stop_sec is not None and t >= self.reader.stop_sec:
            self._stop = True

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
        if not self._stop:  # to the end: the packets skipped after the last decoded frame were on screen too
            last_dt = max(last_dt, self.shortcuts.skipped_end - last_time)
        yield from self._emit(last_frame, last_time, last_id, upto=last_time + last_dt)
        if info.sampled_frames == 0:
            raise NoFramesError(self.uri, f"no video frames{where}: the video has {last_time + last_dt:.2f}s")
        yield from self.windower.finish(self.sample_dt)
        info.num_clips = self.windower.clips_emitted
        info.dropped_tail_frames = self.windower.dropped
        self._check_end(s, t0, decoded_to=last_time + last_dt)

    def _check_end(self, s: _Stream, t0: float | None, decoded_to: float) -> None:
        """Records the decoded duration; raises for no clip at all, or a stream cut short."""
        info, whole = self.info, self.reader.start_sec == 0 and self.reader.stop_sec is None
        if not self.windower.done and whole:
            info.duration_sec = decoded_to  # decoded to the end: the truth, whatever the header says
        if info.num_clips == 0:
            raise TooShortError(
                self.uri,
                f"{info.sampled_frames} sampled frames, fewer than frames_per_clip={self.opts.frames_per_clip}, "
                "and tail='drop'",
            )
        # A container that declares more than was decoded was cut short (a truncated upload, say).
        if s.declared is not None and self.reader.stop_sec is None and not self.windower.done:
            # Some containers (Matroska) declare the end time rather than the length of a stream
            # that starts above zero: take the smaller reading.
            missing = min(s.declared, s.declared - (t0 or 0.0)) - decoded_to
            if missing > max(1.0, 0.05 * s.declared):
                raise CorruptStreamError(
                    self.uri,
                    f"stream ends at {decoded_to:.2f}s but the container declares {s.declared:.2f}s (truncated?)",
                    clips_emitted=info.num_clips,
                )
