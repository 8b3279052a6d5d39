"""The elements that travel between the job's steps, and the failure record.

Plain, picklable values: a `VideoRequest` per input video, a `ClipItem` per clip
(frames as uint8; they become float32 only at the model), and failure rows that
say which video failed, at which stage, and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, NamedTuple

import numpy as np


class VideoRequest(NamedTuple):
    video_id: str
    uri: str
    start_sec: float | None = None
    end_sec: float | None = None


def derive_video_id(uri: str, start_sec: float | None = None, end_sec: float | None = None) -> str:
    """A stable id from the URI (and segment): the same input always gets the same id."""
    key = uri if start_sec is None and end_sec is None else f"{uri}#t={start_sec or 0:g},{'' if end_sec is None else f'{end_sec:g}'}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


@dataclasses.dataclass
class ClipItem:
    """One clip on its way to the model."""

    video_id: str
    uri: str
    clip_index: int
    start_sec: float
    end_sec: float
    num_frames: int
    padded: bool
    frames: np.ndarray  # uint8 [T, H, W, 3]

    def metadata(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "frames"}


class TextItem(NamedTuple):
    text_id: str
    text: str


def failure_row(
    video_id: str,
    uri: str,
    stage: str,
    error_type: str,
    message: str,
    transient: bool = False,
    clips_kept: int = 0,
    segment: tuple[float | None, float | None] = (None, None),
) -> dict[str, Any]:
    """A row of the failures table; `segment` is the (start_sec, end_sec) asked for, so a retry asks again."""
    return {
        "video_id": video_id,
        "uri": uri,
        "segment_start_sec": segment[0],
        "segment_end_sec": segment[1],
        "stage": stage,
        "error_type": error_type,
        "message": message,
        "transient": transient,
        "clips_kept": clips_kept,
    }
