"""Synthetic videos encoded with PyAV, for the tests, the benchmarks and the demo.

Frames carry their own index so a reader can check which frames were picked:
the top half of the centre square is gray level `code(i % 28)`, the bottom half
`code(i // 28 % 28)`. Outside the centre square a landscape frame has a red band on
the left and a blue band on the right (portrait: red top, blue bottom), so a centre
crop that is off shows colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

LEVELS = 28


def code(value: int) -> int:
    return 16 + 8 * (value % LEVELS)


def decode_index(frame: np.ndarray) -> int:
    """The index a pattern frame (any size, RGB, centre-cropped) carries."""
    h, w, _ = frame.shape
    top = frame[h // 8: 3 * h // 8, w // 4: 3 * w // 4].mean()
    bottom = frame[5 * h // 8: 7 * h // 8, w // 4: 3 * w // 4].mean()
    low = int(round((top - 16) / 8)) % LEVELS
    high = int(round((bottom - 16) / 8)) % LEVELS
    return high * LEVELS + low


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    if width > height:
        img[:, :x0] = (220, 30, 30)
        img[:, x0 + side:] = (30, 30, 220)
    elif height > width:
        img[:y0] = (220, 30, 30)
        img[y0 + side:] = (30, 30, 220)
    img[y0: y0 + side // 2, x0: x0 + side] = code(index)
    img[y0 + side // 2: y0 + side, x0: x0 + side] = code(index // LEVELS)
    return img


def write_video(
    path: str,
    num_frames: int,
    fps: float | Fraction = 10,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    times: Sequence[float] | None = None,
    start_sec: float = 0.0,
    audio: str | None = None,
    rotation: int | None = None,
    frame_fn=pattern_frame,
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> str:
    """Encodes a pattern video.

    Args:
        fps: nominal rate (Fraction(30000, 1001) for 29.97).
        times: explicit presentation times in seconds (variable frame rate); overrides fps spacing.
        start_sec: presentation time of the first frame (streams that start above zero).
        audio: "first" adds an audio stream before the video stream, "after" after it.
        rotation: display-matrix rotation in degrees (counter-clockwise), as phones write it.
        gop: keyframe interval in frames.
        options: encoder options, replacing the near-lossless defaults.
    """
    rate = Fraction(fps).limit_denominator(100000)
    # Explicit times or a late start need a fine time base; otherwise one tick per frame.
    tb = Fraction(1, 90000) if (times is not None or start_sec) else None
    with av.open(path, mode="w") as container:
        audio_stream = container.add_stream("aac", rate=16000) if audio == "first" else None
        stream = _video_stream(container, codec, rate, width, height, pix_fmt, gop, options)
        if tb is not None:
            stream.codec_context.time_base = tb
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if audio == "after":
            audio_stream = container.add_stream("aac", rate=16000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_fn(i, width, height), format="rgb24")
            frame.pts, frame.time_base = _timestamp(i, rate, tb, times, start_sec)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio_stream is not None:
            _write_silence(container, audio_stream, seconds=num_frames / float(rate))
    return path


def _video_stream(container, codec: str, rate: Fraction, width: int, height: int, pix_fmt: str,
                  gop: int | None, options: dict[str, str] | None):
    """A video stream with near-lossless settings, so that the frames' gray-level codes survive."""
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if gop is not None:
        stream.codec_context.gop_size = gop
    if codec in ("libx264", "libvpx-vp9"):
        stream.options = {"crf": "18"} if codec == "libx264" else {"crf": "20", "b": "0"}
    elif codec in ("mpeg4", "mjpeg") and options is None:
        stream.options = {"qscale": "2"}
        stream.codec_context.qmin = 1
        stream.codec_context.qmax = 3
    if options is not None:
        stream.options = options
    return stream


def _timestamp(i: int, rate: Fraction, tb: Fraction | None, times: Sequence[float] | None,
               start_sec: float) -> tuple[int, Fraction]:
    """(pts, time base) of frame i: its explicit time or its place at `rate`, shifted by `start_sec`."""
    if tb is None:
        return i, 1 / rate
    t = times[i] + start_sec if times is not None else start_sec + i / rate
    return int(round(t / tb)), tb


def _write_silence(container, stream, seconds: float) -> None:
    samples = int(16000 * seconds)
    frame_size = 1024
    for start in range(0, max(samples, frame_size), frame_size):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, frame_size), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: str, seconds: float = 1.0) -> str:
    with av.open(path, mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        _write_silence(container, stream, seconds)
    return path
