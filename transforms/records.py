"""The elements that travel between the job's steps, the rows they become, and the failure record.

Plain, picklable values: a `VideoRequest` per input video, a `ClipItem` per clip
(the decoder's `Clip`, frames as uint8; they become float32 only at the model), and
failure rows that say which video failed, at which stage, and why. Also the one
failure output tag and the one metrics namespace every step uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from typing import Any, NamedTuple

import numpy as np

from decoder import Clip, VideoInfo
from decoder.split import Part

FAILURES = "failures"  # the failure output of every step that can fail
NAMESPACE = "s3d"  # the job's Beam metrics (counters in the Dataflow UI's Job metrics)


def python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def check_worker_python(launcher: str) -> None:
    """Fails a worker whose Python is not the launcher's, naming both.

    cloudpickle ships the job's functions as bytecode, which one Python minor version cannot run
    for another: without this the worker fails later, deep in unpickling, with no word of versions.
    Steps built at launch carry `launcher` (python_version() there) and call this in setup().
    """
    here = python_version()
    if here != launcher:
        raise RuntimeError(
            f"this worker runs Python {here} but the job was launched with Python {launcher}: build the "
            f"worker image for the launcher's version (docker build --build-arg PYTHON_VERSION={launcher} ...) "
            f"or launch with Python {here}")


class VideoRequest(NamedTuple):
    """A video to decode: the segment [start_sec, end_sec) asked for, or all of it.

    A long video split over workers becomes one request per part (transforms.split), with
    the same video_id and segment and its `part` (decoder.split.Part; None: the whole video).
    """

    video_id: str
    uri: str
    start_sec: float | None = None
    end_sec: float | None = None
    part: Part | None = None  # one part of a long video split over workers
    captions: str | None = None  # the manifest's captions file for the video (--captions column)


def stable_id(key: str) -> str:
    """The ids of videos and sentences: the same key always gets the same 20 hex digits."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def derive_video_id(uri: str, start_sec: float | None = None, end_sec: float | None = None) -> str:
    """A stable id from the URI (and segment): the same input always gets the same id."""
    key = uri if start_sec is None and end_sec is None else f"{uri}#t={start_sec or 0:g},{'' if end_sec is None else f'{end_sec:g}'}"
    return stable_id(key)


@dataclasses.dataclass
class ClipItem:
    """One clip on its way to the model: which video it belongs to, and the decoder's clip."""

    video_id: str
    uri: str
    clip: Clip

    @property
    def frames(self) -> np.ndarray:
        return self.clip.frames  # uint8 [T, H, W, 3]

    @property
    def clip_index(self) -> int:
        return self.clip.clip_index

    def metadata(self) -> dict[str, Any]:
        """The clip's row without its features."""
        fields = {f.name: getattr(self.clip, f.name) for f in dataclasses.fields(Clip)
                  if f.name != "frames" and f.metadata.get("column", True)}
        return {"video_id": self.video_id, "uri": self.uri, **fields}


def video_row(request: VideoRequest, info: VideoInfo) -> dict[str, Any]:
    """A video's row without its features: the request's id and segment, then all the decoder knows."""
    return {
        "video_id": request.video_id,
        "segment_start_sec": request.start_sec,
        "segment_end_sec": request.end_sec,
        **dataclasses.asdict(info),
    }


class TextItem(NamedTuple):
    text_id: str
    text: str


class CaptionShard(NamedTuple):
    """Up to a shard's worth of one video's captions, embedded and aligned together (transforms.captions):
    one element for a few hundred captions, not one a caption."""

    video_id: str
    uri: str
    shard: int
    first_index: int  # the first caption's index in the video's captions
    captions: tuple  # captions.parse.Caption: start_sec, end_sec, text


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
