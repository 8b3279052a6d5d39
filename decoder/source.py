"""Where a video's bytes come from: a local path, or a remote URI through an opener; the container opened on them.

    with open_container(uri, opener) as container:
        stream = container.streams.video[0]

The container and the remote file object under it are closed together when the block ends,
however it ends. Errors are the decoder's OpenError, permanent or transient as the cause says.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

import av

from decoder.errors import OpenError, VideoError
from storage.paths import UnusableObjectError, is_local, local_path

# Opens a remote URI for reading (the jobs pass storage.objects.open_object). It raises
# FileNotFoundError for a missing object, PermissionError for a forbidden one and
# storage.paths.UnusableObjectError for one that will never read as asked (all permanent); other
# errors count as transient (timeouts, 5xx) and may be retried, unless they say they were already
# (`retried`, as the http(s) filesystem's do). An error's `error_type`, when it has one, is the
# failure record's.
Opener = Callable[[str], IO[bytes]]


def _local_source(uri: str) -> str:
    path = local_path(uri)
    if not os.path.exists(path):
        raise OpenError(uri, "no such file")
    if os.path.isdir(path):
        raise OpenError(uri, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise OpenError(uri, "empty file (0 bytes)")
    return path


def open_remote(uri: str, opener: Opener | None) -> IO[bytes]:
    """`opener(uri)`, its errors made the decoder's OpenError (permanent or transient as the cause says)."""
    if opener is None:
        raise OpenError(uri, "a remote URI needs an opener (the jobs pass Beam's FileSystems)")
    try:
        return opener(uri)
    except Exception as e:  # filesystem plugins raise their own types (BeamIOError, ...): retryable
        cause = e
    if isinstance(cause, FileNotFoundError):
        error = OpenError(uri, f"no such object: {cause}")
    elif isinstance(cause, PermissionError):
        error = OpenError(uri, f"access denied: {cause}")
    elif isinstance(cause, UnusableObjectError):
        error = OpenError(uri, f"cannot be read as media: {cause}")
    else:
        error = OpenError(uri, f"cannot read: {type(cause).__name__}: {cause}", transient=True)
        if getattr(cause, "retried", False):
            error.retried = True
    if getattr(cause, "error_type", None):
        error.error_type = cause.error_type
    raise error from cause


@contextlib.contextmanager
def open_container(uri: str, opener: Opener | None = None) -> Iterator[Any]:
    """The PyAV container of `uri`, open for the block; it and the file under it are closed after.

    Raises:
        OpenError: no such file or object, access denied, not a media file, a transient read error.
    """
    with contextlib.ExitStack() as stack:
        try:
            if is_local(uri):
                source: Any = _local_source(uri)
            else:
                source = open_remote(uri, opener)
                stack.callback(source.close)  # after the container (the stack closes in reverse)
            container = av.open(source, mode="r", metadata_errors="ignore")
        except VideoError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
            raise OpenError(uri, f"not a readable media file: {type(e).__name__}: {e}") from e
        with container:
            yield container


def declared_duration(container: Any, stream: Any) -> float | None:
    """The duration the stream's header declares, else the container's, in seconds; None if neither does."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None
