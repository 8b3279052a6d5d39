"""Which frames become clip frames: timestamp sampling, and the windows they are grouped into.

`TimestampSampler` picks, for each target time k/fps from the segment's start, the
frame on screen at that time. `Windower` groups sampled frames into fixed-length
clips (a stride, or N windows spread evenly), holding about two clips of frames.
`SamplePlan` says which samples the clips use, so the decoder can leave out the rest.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterator

import numpy as np

from decoder.options import DecodeOptions

EPS = 1e-6  # seconds; absorbs float error when comparing presentation times


@dataclasses.dataclass
class Clip:
    clip_index: int
    start_sec: float  # presentation time of the first frame, from the start of the stream
    end_sec: float  # time just after the last real frame
    num_frames: int  # real frames; the rest (padded=True) repeat the last one
    padded: bool
    frames: np.ndarray  # uint8 [frames_per_clip, size, size, 3], RGB
    # Index of the first frame among the video's samples (not a table column): clips that
    # overlap share samples, and this says which.
    first_sample: int = dataclasses.field(default=0, metadata={"column": False})


class NeedAllFrames(Exception):  # noqa: N818 - a signal inside the decoder, not an error users see
    """A clip needs a sample the plan said no clip uses: the decoder decodes everything instead."""


class SamplePlan:
    """Which sample indices the clips use (all of them with a stride up to frames_per_clip).

    `starts` are the num_clips windows' first samples; None means windows every `stride`
    samples from 0, without end.
    """

    def __init__(self, frames_per_clip: int, stride: int, starts: list[int] | None):
        self._f = frames_per_clip
        self._stride = stride
        self._starts = sorted(starts) if starts is not None else None

    @property
    def uses_all(self) -> bool:
        return self._starts is None and self._stride <= self._f

    def next_needed(self, i: int) -> int | None:
        """The first sample index >= i that some clip uses; None when no clip uses any."""
        i = max(i, 0)
        if self._starts is None:
            j, offset = divmod(i, self._stride)
            return i if offset < self._f else (j + 1) * self._stride
        for start in self._starts:
            if start + self._f > i:
                return max(i, start)
        return None


class TimestampSampler:
    """Target times k/fps from `seg_start`, each filled by the frame shown at that time.

    With fps None (native rate) every frame inside the segment is sampled at its own time.
    """

    def __init__(self, fps: float | None, seg_start: float = 0.0, seg_end: float | None = None, first_k: int = 0):
        self.fps = fps
        self.seg_start = seg_start
        self.seg_end = seg_end
        self.sampled = 0  # frames sampled so far
        self._k = first_k  # index of the next target time (a part of a video starts further on)
        self.first_k: int | None = None  # the target index of the first sample

    @property
    def next_k(self) -> int:
        return self._k

    def target(self, k: int) -> float:
        """The time of target index k (fps must be set)."""
        return self.seg_start + k / self.fps

    @staticmethod
    def index_at(t: float, seg_start: float, fps: float) -> int:
        """The index of the first target time at or after `t` (within EPS), targets k/fps from `seg_start`."""
        return math.ceil((t - seg_start) * fps - EPS)

    def times(self, t: float, upto: float) -> Iterator[float]:
        """The sample times a frame shown from `t` until `upto` fills."""
        if self.fps is None:
            if self.seg_start - EPS <= t and (self.seg_end is None or t < self.seg_end - EPS):
                self.sampled += 1
                yield t
            return
        while True:
            target = self.seg_start + self._k / self.fps
            if target >= upto - EPS or (self.seg_end is not None and target >= self.seg_end - EPS):
                return
            if target < t - EPS and self.sampled == 0:
                # The stream (or segment) starts after this target: begin at the first frame.
                self._k = self.index_at(t, self.seg_start, self.fps)
                continue
            if self.first_k is None:
                self.first_k = self._k
            self.sampled += 1
            self._k += 1
            yield target


class Windower:
    """Turns a stream of sampled frames into clips, holding at most about two clips of frames."""

    def __init__(self, options: DecodeOptions, starts: list[int] | None):
        self.plan = SamplePlan(options.frames_per_clip, options.clip_stride, starts)
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
        if any(a is None for a in arrays):  # a sample left out as unused (see SamplePlan)
            raise NeedAllFrames(f"clip {self._clip_index} at sample {start} needs a sample that was left out")
        arrays += [arrays[-1]] * (self._f - real)
        clip = Clip(
            clip_index=self._clip_index,
            start_sec=frames[0][2],
            end_sec=frames[-1][2] + frame_dt,
            num_frames=real,
            padded=real < self._f,
            frames=np.stack(arrays),
            first_sample=start,
        )
        self._clip_index += 1
        self._covered_to = max(self._covered_to, start + real)
        return clip

    @property
    def next_index(self) -> int:
        """The index the next sampled frame will have."""
        return self._n

    @property
    def uses_all(self) -> bool:
        """Every sample is in some clip (SamplePlan.uses_all)."""
        return self.plan.uses_all

    def needed_from(self, i: int) -> int | None:
        """The first sample index >= i that a clip uses; None when no later clip uses any."""
        return self.plan.next_needed(i)

    def needs(self, i: int) -> bool:
        """Whether a clip uses sample i (unused ones may be pushed as None: they are never converted)."""
        return self.plan.next_needed(i) == i

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
