"""How a video becomes clips: sampling, windowing, spatial preprocessing and limits.

Defaults follow the model's evaluation (docs/model.md, "Preprocessing"). Each field
validates with a message that names the job's flag for it, so a job passes the
message on as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

CROP_MODES = ("center", "resize", "short_side")
TAIL_POLICIES = ("pad", "drop")
# The frame rate assumed when neither --fps nor the stream gives one (PAL's, FFmpeg's default guess).
FALLBACK_FPS = 25.0


def _flag(name: str) -> dict[str, str]:
    return {"flag": name}


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How a video becomes clips; invalid values raise ValueError on construction."""

    fps: float | None = 10.0  # None keeps the native frame rate
    frames_per_clip: int = 32  # even: S3D needs an even number of frames
    stride: int | None = None  # frames between clip starts; None = frames_per_clip (no overlap)
    num_clips: int | None = None  # instead of a stride: this many clips spread evenly (authors' eval)
    size: int = 224
    crop: str = "center"  # center: centre square then resize; resize: whole frame; short_side: resize then crop
    tail: str = "pad"  # a short last clip (or a video shorter than one clip): pad (repeat last frame) or drop
    max_pixels: int = 7680 * 4320  # per frame (8K UHD)
    max_duration_sec: float = 6 * 3600.0  # of video decoded
    max_seconds_per_video: float = 3600.0  # wall clock
    max_decoder_memory_mb: int = 8192  # the decoder process's address space (0: no cap)
    threads: int = dataclasses.field(default=0, metadata=_flag("decode_threads"))  # 0 = one per core

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def flag(cls, field_name: str) -> str:
        """The job's command-line flag for a field, e.g. 'threads' -> '--decode_threads'."""
        field = next(f for f in dataclasses.fields(cls) if f.name == field_name)
        return "--" + field.metadata.get("flag", field_name)

    def validate(self) -> None:
        """Raises ValueError naming the first bad option (by its flag) and its value."""
        f = self.flag
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"{f('fps')} must be > 0 (or 'native'), got {self.fps}")
        if self.frames_per_clip < 2 or self.frames_per_clip % 2:
            raise ValueError(
                f"{f('frames_per_clip')} must be even and >= 2 (the model needs an even T), got {self.frames_per_clip}"
            )
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"{f('stride')} must be >= 1, got {self.stride}")
        if self.num_clips is not None and self.num_clips < 1:
            raise ValueError(f"{f('num_clips')} must be >= 1, got {self.num_clips}")
        if self.num_clips is not None and self.stride is not None:
            raise ValueError(f"{f('num_clips')} and {f('stride')} exclude each other: give one")
        if self.size < 2 or self.size % 2:
            raise ValueError(f"{f('size')} must be an even number >= 2 (the model needs even H and W), got {self.size}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"{f('crop')} must be one of {CROP_MODES}, got {self.crop!r}")
        if self.tail not in TAIL_POLICIES:
            raise ValueError(f"{f('tail')} must be one of {TAIL_POLICIES}, got {self.tail!r}")
        if self.max_pixels < 1:
            raise ValueError(f"{f('max_pixels')} must be >= 1, got {self.max_pixels}")
        if not self.max_duration_sec > 0:
            raise ValueError(f"{f('max_duration_sec')} must be > 0, got {self.max_duration_sec}")
        if not self.max_seconds_per_video > 0:
            raise ValueError(f"{f('max_seconds_per_video')} must be > 0, got {self.max_seconds_per_video}")
        if self.max_decoder_memory_mb < 0:
            raise ValueError(f"{f('max_decoder_memory_mb')} must be >= 0 (0: no cap), got {self.max_decoder_memory_mb}")
        if self.threads < 0:
            raise ValueError(f"{f('threads')} must be >= 0, got {self.threads}")

    @property
    def clip_stride(self) -> int:
        return self.stride if self.stride is not None else self.frames_per_clip

    @property
    def splittable(self) -> bool:
        """Whether a video can be decoded in parts: clips every --stride at a set --fps. --num_clips
        windows depend on the whole length, and native-rate samples are not known before decoding."""
        return self.fps is not None and self.num_clips is None

    @classmethod
    def from_flags(cls, flags: Any) -> DecodeOptions:
        """From the parsed flags of `add_decode_arguments` (an argparse namespace or a job's options)."""
        return cls(
            fps=flags.fps, frames_per_clip=flags.frames_per_clip, stride=flags.stride, num_clips=flags.num_clips,
            size=flags.size, crop=flags.crop, tail=flags.tail, max_pixels=flags.max_pixels,
            max_duration_sec=flags.max_duration_sec, max_seconds_per_video=flags.max_seconds_per_video,
            max_decoder_memory_mb=flags.max_decoder_memory_mb, threads=flags.decode_threads,
        )

    def preprocessing(self) -> dict[str, Any]:
        """What decides the features: the fingerprint in the tables' metadata, used by --skip_done and search."""
        return {
            "fps": self.fps,
            "frames_per_clip": self.frames_per_clip,
            "stride": self.clip_stride if self.num_clips is None else None,
            "num_clips": self.num_clips,
            "size": self.size,
            "crop": self.crop,
            "tail": self.tail,
        }


def fps_flag(value: str) -> float | None:
    """--fps's value: a number, or 'native' (None)."""
    if value.lower() == "native":
        return None
    try:
        return float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--fps takes a number or 'native', got {value!r}") from e


fps_flag.template_regex = r"^([0-9]+(\.[0-9]+)?|native)$"  # what a Flex Template parameter accepts (make_metadata)


def add_decode_arguments(parser: argparse.ArgumentParser) -> Any:
    """The decoding flags, the same for the extraction job and `pipeline.frames`; returns the last group."""
    d = DecodeOptions()
    group = parser.add_argument_group("sampling and windowing")
    group.add_argument("--fps", type=fps_flag, default=d.fps,
                       help=f"frames sampled per second, or 'native' (default: {d.fps:g})")
    group.add_argument("--frames_per_clip", type=int, default=d.frames_per_clip,
                       help=f"frames in a clip (default: {d.frames_per_clip}; must be even)")
    group.add_argument("--stride", type=int, default=None,
                       help="sampled frames between clip starts (default: --frames_per_clip, no overlap)")
    group.add_argument("--num_clips", type=int, default=None,
                       help="instead of --stride: this many clips spread evenly over each video, as in the "
                       "authors' evaluation (default: off)")
    group.add_argument("--tail", choices=TAIL_POLICIES, default=d.tail,
                       help=f"a short last clip: pad (repeat the last frame, flagged) or drop (default: {d.tail})")
    group = parser.add_argument_group("spatial preprocessing")
    group.add_argument("--size", type=int, default=d.size, help=f"output frame side in pixels (default: {d.size}; even)")
    group.add_argument("--crop", choices=CROP_MODES, default=d.crop,
                       help="center: centre square then resize (the authors'); resize: whole frame; "
                       f"short_side: resize short side then centre crop (default: {d.crop})")
    group = parser.add_argument_group("limits per video")
    group.add_argument("--max_pixels", type=int, default=d.max_pixels,
                       help=f"largest frame in pixels (default: {d.max_pixels}, 8K)")
    group.add_argument("--max_duration_sec", type=float, default=d.max_duration_sec,
                       help=f"longest video decoded, seconds (default: {d.max_duration_sec:g})")
    group.add_argument("--max_seconds_per_video", type=float, default=d.max_seconds_per_video,
                       help="wall-clock budget to decode one video; the decoder process is killed when "
                       f"it makes no progress for that long (default: {d.max_seconds_per_video:g})")
    group.add_argument("--max_decoder_memory_mb", type=int, default=d.max_decoder_memory_mb,
                       help="address space of the decoder process, in MiB: a video that needs more fails "
                       f"alone (default: {d.max_decoder_memory_mb}; 0: no cap)")
    group = parser.add_argument_group("decoding")
    group.add_argument("--decode_threads", type=int, default=d.threads,
                       help="decoder threads per video, 0 = one per core (default: 0)")
    return group
