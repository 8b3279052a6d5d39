"""Where a video's captions come from: a file the manifest names, a sidecar file beside the video,
or a table of timed sentences for many videos.

A file is read through storage.objects (any filesystem the jobs read, http(s) included).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from captions.parse import Caption, CaptionsError, caption_kind, parse_captions
from storage.objects import object_exists, read_object
from storage.paths import is_local, local_path

SIDECAR_SUFFIXES = (".vtt", ".srt")  # then .<lang>.vtt, English first


def read_captions_file(uri: str) -> list[Caption]:
    """The captions in one .vtt, .srt or .json file.

    Raises:
        CaptionsError: not a captions file, or not readable as one.
        OSError: the file cannot be read (FileNotFoundError when it is not there).
    """
    return parse_captions(read_object(uri), caption_kind(uri))


def _base(video_uri: str) -> str:
    head, slash, name = video_uri.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return head + slash + stem


def find_sidecar(video_uri: str) -> str | None:
    """The captions file beside a video, same base name: .vtt, .srt, else a .<lang>.vtt (en first); None if none."""
    base = _base(video_uri)
    if is_local(video_uri):
        for suffix in SIDECAR_SUFFIXES:
            if os.path.isfile(local_path(base + suffix)):
                return base + suffix
        folder = os.path.dirname(local_path(base)) or "."
        stem = os.path.basename(base) + "."
        langs = sorted(n for n in os.listdir(folder) if n.startswith(stem) and n.endswith(".vtt")
                       and n.count(".") == stem.count(".") + 1) if os.path.isdir(folder) else []
    else:
        from apache_beam.io.filesystems import FileSystems

        for suffix in SIDECAR_SUFFIXES:
            if object_exists(base + suffix):
                return base + suffix
        if video_uri.startswith(("http://", "https://")):
            return None  # no listing on the web: only the fixed names
        found = FileSystems.match([base + ".*.vtt"])[0].metadata_list
        langs = sorted(m.path.rsplit("/", 1)[-1] for m in found)
        folder = base.rpartition("/")[0]
    if not langs:
        return None
    langs.sort(key=lambda n: (not n.endswith(".en.vtt"), n))
    return os.path.join(folder, langs[0]) if is_local(video_uri) else f"{folder}/{langs[0]}"


def read_captions_table(path: str) -> dict[str, list[Caption]]:
    """A table of timed sentences (Parquet, CSV or JSON Lines: video_id or uri, start_sec, end_sec,
    text) -> captions by video_id (or by uri when the table has no video_id), in time order.

    Raises:
        CaptionsError: a column missing or a row unusable, naming it.
    """
    data = read_object(path)
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(io.BytesIO(data)).to_pylist()
    elif lower.endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in data.decode("utf-8-sig").splitlines() if line.strip()]
    elif lower.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    else:
        raise CaptionsError(f"--captions {path}: a captions table is .parquet, .csv or .jsonl")
    if not rows:
        return {}
    key = "video_id" if "video_id" in rows[0] else "uri" if "uri" in rows[0] else None
    missing = [c for c in ("start_sec", "end_sec", "text") if c not in rows[0]]
    if key is None or missing:
        raise CaptionsError(f"--captions {path}: needs video_id (or uri), start_sec, end_sec and text; "
                            f"missing {missing or ['video_id or uri']}")
    out: dict[str, list[Caption]] = {}
    for i, row in enumerate(rows):
        try:
            caption = Caption(float(row["start_sec"]), float(row["end_sec"]), " ".join(str(row["text"]).split()))
        except (TypeError, ValueError) as e:
            raise CaptionsError(f"--captions {path}: row {i + 1}: {e}") from e
        if caption.text and caption.end_sec > caption.start_sec:
            out.setdefault(str(row[key]), []).append(caption)
    for captions in out.values():
        captions.sort(key=lambda c: (c.start_sec, c.end_sec))
    return out
