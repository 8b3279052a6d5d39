"""Typed errors for everything that can go wrong with one video.

Each names the URI and the cause. `stage` says where in the job it happened and
`transient` whether retrying the same input could succeed (I/O timeouts, object
store 5xx), so failure records can be filtered and retried.
"""

from __future__ import annotations

from typing import Any


class VideoError(Exception):
    """A problem with one input video. Never a bug in this project's code."""

    stage = "decode"
    transient = False

    def __init__(self, uri: str, message: str):
        super().__init__(f"{uri}: {message}")
        self.uri = uri
        self.detail = message

    def to_record(self) -> dict[str, Any]:
        """The error as plain data, to cross a process boundary (`from_record` rebuilds it)."""
        record = {"type": type(self).__name__, "uri": self.uri, "detail": self.detail}
        record.update({k: v for k, v in vars(self).items() if k not in ("uri", "detail")})
        record.update(stage=self.stage, transient=self.transient)
        return record

    @staticmethod
    def from_record(record: dict[str, Any]) -> VideoError:
        """The error `to_record` gave, of the same class, message and attributes."""
        fields = dict(record)
        cls = _ERRORS.get(fields.pop("type"), VideoError)
        error = cls.__new__(cls)
        VideoError.__init__(error, fields.pop("uri"), fields.pop("detail"))
        for name, value in fields.items():
            setattr(error, name, value)
        return error


class OpenError(VideoError):
    """The file cannot be opened as a media container (missing, empty, not a video, unreadable)."""

    stage = "open"

    def __init__(self, uri: str, message: str, transient: bool = False):
        super().__init__(uri, message)
        self.transient = transient


class NoVideoStreamError(VideoError):
    """The container has no video stream (e.g. audio only)."""

    stage = "open"


class UnsupportedCodecError(VideoError):
    """The video stream's codec has no decoder in this FFmpeg build."""

    stage = "open"


class NoFramesError(VideoError):
    """Nothing decodable in the stream, or in the requested segment."""


class TooShortError(VideoError):
    """Fewer sampled frames than one clip, and the tail policy is `drop`: no clip to emit."""


class CorruptStreamError(VideoError):
    """The stream broke after some frames; the clips decoded before the break were emitted."""

    def __init__(self, uri: str, message: str, clips_emitted: int):
        super().__init__(uri, message)
        self.clips_emitted = clips_emitted


class LimitExceededError(VideoError):
    """A protective limit (pixels per frame, duration, wall-clock time) was exceeded."""

    def __init__(self, uri: str, limit: str, message: str):
        super().__init__(uri, message)
        self.limit = limit


class DecoderCrashError(VideoError):
    """The decoder process died on this video (a signal such as SIGSEGV, or an exit): FFmpeg crashed.

    Clips decoded before the crash were emitted (`clips_emitted`); `signal` is the signal's
    number, or None when the process exited instead.
    """

    def __init__(self, uri: str, message: str, stage: str, clips_emitted: int = 0, signal: int | None = None):
        super().__init__(uri, message)
        self.stage = stage
        self.clips_emitted = clips_emitted
        self.signal = signal


_ERRORS = {cls.__name__: cls for cls in (
    VideoError, OpenError, NoVideoStreamError, UnsupportedCodecError, NoFramesError, TooShortError,
    CorruptStreamError, LimitExceededError, DecoderCrashError)}
