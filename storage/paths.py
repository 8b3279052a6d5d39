"""Local or remote: the one test, without Beam (the decoder opens local paths itself)."""

from __future__ import annotations


class UnusableObjectError(OSError):
    """The object is there and answers, but will never read as asked: an HTML page where a video was
    expected, an HTTP status that asking again will not change. Permanent, as FileNotFoundError and
    PermissionError are (the decoder's opener contract, decoder/reader.py)."""


def is_local(uri: str) -> bool:
    """A path on this machine (or a file:// URI), as opposed to an object store URI."""
    return "://" not in uri or uri.startswith("file://")


def opener_for(uri: str):
    """None for a local path (the decoder opens it itself); else storage.objects.open_object (which imports Beam)."""
    if is_local(uri):
        return None
    from storage.objects import open_object

    return open_object


def local_path(uri: str) -> str:
    """The path of a local URI (a file:// URI loses its scheme; a plain path stays as it is)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri
