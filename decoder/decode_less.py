"""Decoding less: the packets read ahead, the frames the codec may drop, the seeks across gaps no clip uses.

A pass over a container (decoder.reader) reads its packets through `Packets`, which holds a
few ahead so that each packet's successor on screen is known. Before each packet it asks
`Shortcuts.set_skip` whether the codec may drop it (a non-reference frame on screen at no
used sample time); after it, `seek_again` or `maybe_seek`; for each decoded frame, `landed`
tells whether a seek landed where it should. The decisions need the sample plan (the
Windower's) and the sampler's times, never the frames: the frames are the ones decoding
everything gives (tests/test_decode_less.py checks it clip by clip).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import av

from decoder.sampling import EPS, NeedAllFrames, TimestampSampler, Windower

# Packets read ahead of the decoder: enough to know each frame's successor in presentation
# order (codecs reorder at most 16 frames).
LOOKAHEAD = 32
# A gap in the samples the clips use is skipped by seeking when it is longer than this, and
# longer than 1.5 keyframe intervals seen so far (a shorter seek would land before the gap).
MIN_SEEK_GAP_SEC = 2.0
SEEK_EARLY_SEC = 1e-3  # a seek asks for a little before the target time
MAX_RESEEKS = 4  # seeks from further back when one lands past its target; then from the stream's start


class Packets:
    """The stream's packets in decoding order, read LOOKAHEAD ahead, to tell each one's successor on screen."""

    def __init__(self, container: Any, stream: Any):
        self.container, self.stream = container, stream
        self.keyframe_interval = 0.0  # the longest seen, in pts units
        self._last_keyframe: int | None = None
        self._restart()

    def _restart(self) -> None:
        self._demux = self.container.demux(self.stream)
        self._ahead: deque[Any] = deque()
        self._recent: deque[int] = deque(maxlen=LOOKAHEAD)  # pts of the packets handed out lately
        self._error: BaseException | None = None  # a read error, raised once the packets before it are out

    def _fill(self) -> None:
        while self._error is None and len(self._ahead) < LOOKAHEAD:
            try:
                self._ahead.append(next(self._demux))
            except StopIteration:
                self._error = StopIteration()
            except (av.error.FFmpegError, OSError) as e:
                self._error = e

    def next(self) -> Any | None:
        """The next packet; None at the end of the stream."""
        self._fill()
        if not self._ahead:
            if self._error is not None and not isinstance(self._error, StopIteration):
                raise self._error
            return None
        packet = self._ahead.popleft()
        if packet.pts is not None:
            self._recent.append(packet.pts)
            if packet.is_keyframe:
                if self._last_keyframe is not None and packet.pts > self._last_keyframe:
                    self.keyframe_interval = max(self.keyframe_interval, packet.pts - self._last_keyframe)
                self._last_keyframe = packet.pts
        return packet

    def successor(self, pts: int) -> int | None:
        """The next pts after `pts` among the packets around it; None near the end of the stream."""
        later = [p.pts for p in self._ahead if p.pts is not None and p.pts > pts]
        later += [p for p in self._recent if p > pts]
        return min(later) if later else None

    def seek(self, pts: int) -> None:
        """To the keyframe at or before `pts`; the decoder's buffers are flushed with it."""
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
        self._last_keyframe = None
        self._restart()


class Shortcuts:
    """One pass's decisions to decode less. Times are seconds from the stream's start (`t0`, the caller's).

    Args:
        packets: the pass's packets (their stream's codec context gets `skip_frame`).
        sampler: the pass's sample times (`first_k` None until the first sample: no shortcut before it).
        enabled: False decodes every frame and seeks only to a segment's start (`start_at`).
    """

    def __init__(self, packets: Packets, sampler: TimestampSampler, enabled: bool):
        self.packets, self._sampler, self.enabled = packets, sampler, enabled
        self._time_base = packets.stream.time_base
        self.pending: tuple[float, float] | None = None  # a seek in flight: (time of the last frame before it, target)
        self.landing = False  # the seek's first frame is still to come
        self.overshot = False  # the seek landed past its target: seek again after this packet
        self.skipped_end = 0.0  # end of the latest packet sent with skip_frame on
        self._seek_gap = MIN_SEEK_GAP_SEC
        self._skip_mode = "DEFAULT"
        self._reseeks = 0
        self._unreliable = False  # a seek fell back to the stream's start: no more seeks in this pass

    def _seconds(self, pts: int, t0: float) -> float:
        return float(pts * self._time_base) - t0

    def _used_between(self, windower: Windower, start: float, end: float) -> bool:
        """Whether a clip uses a sample the frame shown in [start, end) would fill.

        The sampler gives a frame the target times in [start - EPS, end - EPS); this asks about
        [start - 2 EPS, end - EPS / 2), a little wider, far above the float error of either.
        """
        sampler = self._sampler
        k0, fps, seg_start = sampler.first_k, sampler.fps, sampler.seg_start
        lo = math.ceil((start - 2 * EPS - seg_start) * fps) - k0
        hi = math.ceil((end - EPS / 2 - seg_start) * fps) - 1 - k0
        i = windower.needed_from(lo)
        return i is not None and i <= hi

    def set_skip(self, packet: Any, windower: Windower | None, t0: float | None) -> None:
        """Lets the codec drop `packet` if it is a non-reference frame on screen at no used sample time."""
        skip = False
        if self.enabled and packet.pts is not None and self._sampler.first_k is not None:
            successor = self.packets.successor(packet.pts)
            if successor is not None:
                start, end = self._seconds(packet.pts, t0), self._seconds(successor, t0)
                skip = not self._used_between(windower, start, end)
                if skip:
                    self.skipped_end = max(self.skipped_end, end)
        mode = "NONREF" if skip else "DEFAULT"
        if mode != self._skip_mode:
            self.packets.stream.codec_context.skip_frame = mode
            self._skip_mode = mode

    def start_at(self, t0: float, when: float) -> None:
        """Seeks to a segment's (or part's) start, checked as any seek is."""
        self.pending = (-math.inf, when)
        self._seek_to(t0, when)

    def maybe_seek(self, windower: Windower | None, t0: float | None, last: float | None) -> None:
        """Seeks across a gap no clip uses, when it is long enough for a keyframe to lie inside it.
        `last`: the time of the last decoded frame (None before the first)."""
        if (not self.enabled or self._sampler.first_k is None or last is None or self.pending is not None
                or self._unreliable):
            return
        i = None if windower.uses_all else windower.needed_from(windower.next_index)
        if i is None:
            return
        target = self._sampler.target(self._sampler.first_k + i)
        if target - last <= max(self._seek_gap, 1.5 * float(self.packets.keyframe_interval * self._time_base)):
            return
        self.pending = (last, target)
        self._seek_to(t0, target - SEEK_EARLY_SEC)

    def _seek_to(self, t0: float, when: float) -> None:
        try:
            self.packets.seek(math.floor((t0 + when) / self._time_base))
        except (av.error.FFmpegError, OSError) as e:
            raise NeedAllFrames(f"seek to {when:.3f}s failed: {e}") from e
        self.landing, self.overshot = True, False

    def seek_again(self, t0: float | None) -> None:
        """The seek landed past its target: again from further back (containers that index by
        decoding time, such as AVI, land on a keyframe shown after the time asked for)."""
        self._reseeks += 1
        last, target = self.pending
        if self._reseeks > MAX_RESEEKS:
            # From the stream's start, taking the frames as they come: what decoding from the start gives.
            # The file's index cannot be trusted, so the rest of the pass decodes through its gaps (a new
            # seek would land late again, and every round trip back to the start gains one frame).
            self._unreliable = True
            self._seek_to(t0, -(t0 or 0.0))
            self.landing = False
            return
        back = 2 ** self._reseeks * max(0.5, float(self.packets.keyframe_interval * self._time_base))
        self._seek_to(t0, max(target - back, last))

    def landed(self, t: float) -> bool:
        """Whether the frame at `t` is to be sampled: False after a seek, for the frames up to the last one
        before it (and for every frame of a seek that landed past its target)."""
        if self.pending is None:
            return True
        last, target = self.pending
        if self.overshot:
            return False  # this packet's other frames; the seek is made again after it
        if self.landing:
            self.landing = False
            if t > target + EPS:  # past the target: the frame on screen at it was not decoded
                self.overshot = True
                return False
            if t <= last + EPS:  # before the last frame: keyframes are further apart than the gap
                self._seek_gap = max(self._seek_gap, 2.0 * (target - t))
        if t <= last + EPS:
            return False
        self.pending, self._reseeks = None, 0
        return True
