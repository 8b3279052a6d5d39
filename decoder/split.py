"""Cutting a long video into parts that workers decode side by side, with the clips of one reader.

`read_extent` reads what a split needs from the container's header and first packets
(nothing is decoded); `plan_parts` cuts the sample times at clip starts. A `Part` turns
into `ClipReader(..., part=part.reader_part(options))`.
"""

from __future__ import annotations

import dataclasses
import math

from decoder.decode_less import LOOKAHEAD
from decoder.options import DecodeOptions
from decoder.sampling import EPS, TimestampSampler
from decoder.source import Opener, declared_duration, open_container


@dataclasses.dataclass(frozen=True)
class Part:
    """Clips [first_clip, next_clip) of a video (next_clip None: to the end), part `index` of `count`."""

    index: int
    count: int
    first_target: int  # the index k of the video's first sample time (0 unless the stream starts late)
    first_clip: int
    next_clip: int | None

    def reader_part(self, options: DecodeOptions) -> tuple[int, int | None, int]:
        """ClipReader's `part`: the sample indices [first, end) and the first clip's index."""
        stride, frames = options.clip_stride, options.frames_per_clip
        # The first part samples from the start as an unsplit reader does (and finds first_target itself).
        first = 0 if self.index == 0 else self.first_target + self.first_clip * stride
        end = None if self.next_clip is None else self.first_target + (self.next_clip - 1) * stride + frames
        return first, end, self.first_clip


@dataclasses.dataclass(frozen=True)
class Extent:
    """What the header says: the declared duration, and when the first frame shows (from the stream's start)."""

    duration_sec: float | None
    first_frame_sec: float


def read_extent(uri: str, opener: Opener | None = None) -> Extent:
    """Reads the header and the first packets (no decoding). Raises the decoder's OpenError and the like."""
    with open_container(uri, opener) as container:
        if not container.streams.video:
            return Extent(None, 0.0)
        stream = container.streams.video[0]
        tb = stream.time_base
        duration = declared_duration(container, stream)
        pts = []
        for packet in container.demux(stream):
            if packet.pts is not None:
                pts.append(packet.pts)
            if len(pts) >= LOOKAHEAD or packet.size == 0:
                break
        start = stream.start_time if stream.start_time is not None else (min(pts) if pts else 0)
        first = float((min(pts) - start) * tb) if pts else 0.0
        return Extent(duration, max(0.0, first))


def plan_parts(options: DecodeOptions, split_sec: float, extent: Extent, start_sec: float | None = None,
               end_sec: float | None = None) -> list[Part]:
    """The parts of a video longer than `split_sec`, cut at clip starts; [] to decode it whole.

    Only videos the options can split split (DecodeOptions.splittable).
    """
    if split_sec <= 0 or not options.splittable or extent.duration_sec is None:
        return []
    start = start_sec or 0.0
    end = extent.duration_sec if end_sec is None else min(end_sec, extent.duration_sec)
    if end - start <= split_sec:
        return []
    fps, stride = options.fps, options.clip_stride
    late = extent.first_frame_sec - start
    first_target = TimestampSampler.index_at(extent.first_frame_sec, start, fps) if late > EPS else 0
    clips = math.ceil(((end - start) * fps - first_target) / stride)
    per_part = max(1, math.ceil(split_sec * fps / stride))
    count = math.ceil(clips / per_part)
    if count <= 1:
        return []
    return [
        Part(i, count, first_target, i * per_part, None if i == count - 1 else (i + 1) * per_part)
        for i in range(count)
    ]
