"""What exactly does the model see? The decoder alone, with the job's decoding options.

    python -m pipeline.frames VIDEO [--output OUT.npy] [--sheet OUT.png] [decoding options]

It decodes VIDEO as `pipeline.extract` would with the same flags, and:
- writes the sampled real frames, in time order, as uint8 [N, size, size, 3] to OUT.npy
  (each sample once, however many clips share it; no padding frames);
- draws a contact sheet PNG, a row per clip, of the frames the model gets (padding included);
- prints one JSON line: sampled_frames, decoded_frames (frames the codec really decoded),
  clips, frames_written, seconds (decoding wall time) and what the decoder learnt of the video.
It is also how decode speed is measured (`--decode_all` decodes every frame, the reference).
Exit status: 0 done, 1 the video could not be decoded (the error on stderr), 2 bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any

import av
import numpy as np

from decoder import DecodeOptions, VideoError, add_decode_arguments
from decoder.process import DecoderProcess
from storage.paths import opener_for

SHEET_CLIPS = 16  # rows of the contact sheet: clips chosen evenly from the video


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.frames",
        description="Decode one video as the extraction job does and show what the model sees: the sampled "
        "frames as a .npy array, a contact sheet PNG, and a JSON summary on stdout.",
    )
    parser.add_argument("video", help="a video file, or a URI Beam can read (gs://, s3://, https://, ...)")
    parser.add_argument("--output", help="write the sampled real frames here, uint8 [N, size, size, 3] (.npy)")
    parser.add_argument("--sheet", help="write a contact sheet here (.png): one row per clip")
    parser.add_argument("--sheet_clips", type=int, default=SHEET_CLIPS,
                        help=f"most clips on the sheet, chosen evenly (default: {SHEET_CLIPS})")
    parser.add_argument("--sheet_thumb", type=int, default=112,
                        help="side of a frame on the sheet in pixels (default: 112; the model sees --size)")
    parser.add_argument("--start_sec", type=float, default=None, help="segment start, seconds (default: 0)")
    parser.add_argument("--end_sec", type=float, default=None, help="segment end, seconds (default: the end)")
    parser.add_argument("--decode_all", action="store_true",
                        help="decode every frame, without skipping unused frames or seeking over gaps "
                        "(the reference; same frames, slower)")
    add_decode_arguments(parser)
    return parser.parse_args(argv)


class _FrameFile:
    """Sampled frames appended to a temporary raw file, written as one .npy at the end (memory stays flat)."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        self._raw = tempfile.NamedTemporaryFile(dir=folder, prefix=".frames-", suffix=".raw", delete=False)
        self.count = 0
        self.shape: tuple[int, ...] | None = None

    def add(self, frame: np.ndarray) -> None:
        self.shape = frame.shape
        self._raw.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        self.count += 1

    def close(self, keep: bool) -> None:
        self._raw.close()
        try:
            if keep:
                shape = (self.count, *(self.shape or (0, 0, 3)))
                out = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8, shape=shape)
                frame_bytes = int(np.prod(shape[1:]))
                with open(self._raw.name, "rb") as raw:  # a hundred frames at a time: memory stays flat
                    for start in range(0, self.count, 100):
                        n = min(100, self.count - start)
                        out[start: start + n] = np.frombuffer(raw.read(n * frame_bytes), np.uint8).reshape(n, *shape[1:])
                out.flush()
                del out
        finally:
            os.unlink(self._raw.name)


class _Sheet:
    """At most `rows` clips, chosen evenly: when full, every other row goes and the step doubles."""

    def __init__(self, rows: int, thumb: int):
        self._rows, self._thumb = rows, thumb
        self._step = 1
        self._kept: list[tuple[int, np.ndarray]] = []

    def add(self, clip_index: int, frames: np.ndarray) -> None:
        if clip_index % self._step:
            return
        self._kept.append((clip_index, np.concatenate([self._scale(f) for f in frames], axis=1)))
        if len(self._kept) > self._rows:
            self._step *= 2
            self._kept = [(i, row) for i, row in self._kept if i % self._step == 0]

    def _scale(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape[0] == self._thumb and frame.shape[1] == self._thumb:
            return frame
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        return image.reformat(width=self._thumb, height=self._thumb, interpolation="AREA").to_ndarray()

    def image(self) -> np.ndarray | None:
        if not self._kept:
            return None
        gap = np.full((2, self._kept[0][1].shape[1], 3), 255, np.uint8)  # a white line between clips
        return np.concatenate([part for _, row in self._kept for part in (row, gap)][:-1], axis=0)


def write_png(path: str, image: np.ndarray) -> None:
    """An RGB image as PNG, with FFmpeg's encoder."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = image.shape[1], image.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24"))
    packets += codec.encode(None)
    with open(path, "wb") as f:
        for packet in packets:
            f.write(bytes(packet))


def extract_frames(video: str, options: DecodeOptions, start_sec: float | None = None, end_sec: float | None = None,
                   output: str | None = None, sheet: str | None = None, sheet_clips: int = SHEET_CLIPS,
                   sheet_thumb: int = 112, decode_all: bool = False) -> dict[str, Any]:
    """Decodes `video`; writes the frames and the sheet if asked; returns the summary.

    Raises:
        VideoError: the video could not be decoded (nothing is written).
    """
    with DecoderProcess(slots=2) as decoder:  # FFmpeg apart: a crash is this video's error, not a traceback
        reader = decoder.reader(video, options, start_sec, end_sec, opener=opener_for(video), decode_all=decode_all)
        frames = _FrameFile(output) if output else None
        board = _Sheet(sheet_clips, sheet_thumb) if sheet else None
        clips, written_to = 0, 0  # samples below `written_to` are in the file already
        started = time.perf_counter()
        try:
            for clip in reader:
                clips += 1
                if frames is not None:
                    for j in range(max(0, written_to - clip.first_sample), clip.num_frames):
                        frames.add(clip.frames[j])
                    written_to = max(written_to, clip.first_sample + clip.num_frames)
                if board is not None:
                    board.add(clip.clip_index, clip.frames)
            seconds = time.perf_counter() - started
        except BaseException:
            if frames is not None:
                frames.close(keep=False)
            raise
    if frames is not None:
        frames.close(keep=True)
    if board is not None and (image := board.image()) is not None:
        write_png(sheet, image)
    info = dataclasses.asdict(reader.info)
    return {
        "uri": video,
        "sampled_frames": info.pop("sampled_frames"),
        "decoded_frames": info.pop("decoded_frames"),
        "clips": clips,
        "frames_written": frames.count if frames is not None else 0,
        "seconds": round(seconds, 4),
        **{k: v for k, v in info.items() if k not in ("uri", "num_clips")},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        options = DecodeOptions.from_flags(args)
        if args.sheet_clips < 1:
            raise ValueError(f"--sheet_clips must be >= 1, got {args.sheet_clips}")
        if args.sheet_thumb < 2:
            raise ValueError(f"--sheet_thumb must be >= 2, got {args.sheet_thumb}")
        for flag in ("start_sec", "end_sec"):
            value = getattr(args, flag)
            if value is not None and not value >= 0:
                raise ValueError(f"--{flag} must be >= 0, got {value}")
        if args.start_sec is not None and args.end_sec is not None and args.end_sec <= args.start_sec:
            raise ValueError(f"--end_sec must be > --start_sec, got [{args.start_sec}, {args.end_sec})")
        for flag, suffix in (("output", ".npy"), ("sheet", ".png")):
            value = getattr(args, flag)
            if value and not value.lower().endswith(suffix):
                raise ValueError(f"--{flag} must name a {suffix} file, got {value!r}")
            if value and not os.path.isdir(os.path.dirname(os.path.abspath(value))):
                raise ValueError(f"--{flag} {value!r}: no such directory")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = extract_frames(args.video, options, args.start_sec, args.end_sec, args.output, args.sheet,
                                 args.sheet_clips, args.sheet_thumb, args.decode_all)
    except VideoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
