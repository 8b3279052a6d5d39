"""Caption files -> clean, timed captions.

WebVTT and SRT are parsed with webvtt-py, chosen against pysubs2 and srt on the quirks real files
have (tests/test_captions.py writes each):
- YouTube's auto-captions: each cue repeats the line before it and carries inline word timestamps
  (`so<00:00:00.480><c> today</c>`); webvtt-py drops the tags and timestamps, pysubs2 keeps the
  timestamps in the text, srt does not read WebVTT;
- a byte-order mark before `WEBVTT`: pysubs2 cannot tell the format then; webvtt-py reads it;
- styling tags (`<b>`, `<c.colorE5E5E5>`), CRLF line ends, times without hours, overlapping and
  empty cues: webvtt-py reads them all; what it leaves, HTML entities (`&amp;`) and SubStation
  codes in SRT (`{\\an8}`), is removed here.
JSON is a list of {start, end, text} (or start_sec, end_sec), or an object with such a list under
`segments` (Whisper's output).

Rolling captions become one caption per line spoken, timed by the cue that brought it: a line that
repeats one of the cue before is not counted again (a cue of repeats only extends the last
caption when it follows on at once). The lines a cue brings are one caption.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import re

CAPTION_KINDS = {".vtt": "vtt", ".srt": "srt", ".json": "json"}
_SUBSTATION = re.compile(r"\{\\[^}]*\}")
_TAGS = re.compile(r"<[^>]*>")
_FOLLOWS_ON_SEC = 0.05  # a cue of repeats starting this close after the last caption's end extends it


@dataclasses.dataclass(frozen=True)
class Caption:
    start_sec: float
    end_sec: float
    text: str


class CaptionsError(ValueError):
    """A captions file that cannot be read as captions; the message says why."""


def caption_kind(uri: str) -> str:
    """'vtt', 'srt' or 'json' from the file name. Raises CaptionsError for another."""
    path = uri.split("?", 1)[0].lower()
    for suffix, kind in CAPTION_KINDS.items():
        if path.endswith(suffix):
            return kind
    raise CaptionsError(f"{uri}: not a captions file (.vtt, .srt or .json)")


def _clean(line: str) -> str:
    line = _SUBSTATION.sub("", _TAGS.sub("", line))
    return " ".join(html.unescape(line).split())


def _seconds(timestamp) -> float:
    return timestamp.hours * 3600 + timestamp.minutes * 60 + timestamp.seconds + timestamp.milliseconds / 1000


def _cues(text: str, kind: str) -> list[tuple[float, float, list[str]]]:
    if kind == "json":
        data = json.loads(text)
        items = data.get("segments") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise CaptionsError("a JSON captions file is a list of {start, end, text}, or has one under 'segments'")
        cues = []
        for item in items:
            start, end = item.get("start", item.get("start_sec")), item.get("end", item.get("end_sec"))
            if start is None or end is None or "text" not in item:
                raise CaptionsError(f"a caption needs start, end and text: {item!r}")
            cues.append((float(start), float(end), str(item["text"]).split("\n")))
        return cues
    import webvtt
    from webvtt.errors import MalformedFileError

    try:
        parsed = webvtt.from_buffer(io.StringIO(text), format=kind)
    except (MalformedFileError, ValueError) as e:
        raise CaptionsError(f"not a readable {kind.upper()} file: {e}") from e
    return [(_seconds(c.start_time), _seconds(c.end_time), c.text.split("\n")) for c in parsed]


def parse_captions(data: bytes | str, kind: str) -> list[Caption]:
    """The captions of a file's contents, in the order spoken (see the module docstring).

    Raises:
        CaptionsError: the contents are not captions of that kind.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise CaptionsError(f"not UTF-8 text: {e}") from e
    text = data.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    try:
        cues = _cues(text, kind)
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise CaptionsError(f"not a readable {kind.upper()} file: {type(e).__name__}: {e}") from e
    out: list[Caption] = []
    previous: set[str] = set()
    for start, end, raw in cues:
        if not end > start:
            continue  # a cue that lasts nothing shows nothing
        lines = [line for line in map(_clean, raw) if line]
        if not lines:
            previous = set()
            continue
        new = [line for line in lines if line not in previous]
        if new:
            out.append(Caption(start, end, " ".join(new)))
        elif out and out[-1].text in lines and start - out[-1].end_sec <= _FOLLOWS_ON_SEC:
            out[-1] = dataclasses.replace(out[-1], end_sec=max(out[-1].end_sec, end))
        previous = set(lines)
    return out
