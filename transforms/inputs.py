"""Reading the list of videos: a glob of video files, or a manifest (.txt, .csv, .jsonl, .parquet).

`ReadVideoRequests` yields one `VideoRequest` per input video, with a stable
`video_id`, and a failure row for every manifest row it cannot use. Requests are
de-duplicated by video_id: the same video listed twice is decoded once.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import urllib.parse
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import PTransform
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from storage.objects import open_object
from transforms.records import FAILURES, NAMESPACE, VideoRequest, derive_video_id, failure_row

MANIFEST_KINDS = {".txt": "txt", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BAD_LINES = "bad_lines"
CARRIED = "_input_failure"  # a row that carries its failure row (read_input_rows, the chunk planner)


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which manifest columns hold the uri, the video_id and the segment (`--uri_column` and its kin).

    `canonical` renames a row's columns to the names the job uses (uri, video_id, start_sec,
    end_sec), once, where rows are read; everything after sees those names only.
    """

    uri: str = "uri"
    video_id: str = "video_id"
    start_sec: str = "start_sec"
    end_sec: str = "end_sec"

    def canonical(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with the chosen columns under the job's names (a row with them already stays as it is)."""
        mapping = {c: name for name, c in dataclasses.asdict(self).items() if c != name and c in row}
        if not mapping:
            return row
        out = {k: v for k, v in row.items() if k not in mapping}
        out.update({name: row[c] for c, name in mapping.items()})
        return out


DEFAULT_COLUMNS = Columns()

# Pages of video sites: a downloader (yt-dlp and its kind) turns them into files; this job reads files.
_VIDEO_PAGES = ("youtube.com", "youtu.be", "youtube-nocookie.com", "vimeo.com", "tiktok.com")


@functools.lru_cache(maxsize=1)
def readable_schemes() -> frozenset[str]:
    """The URI schemes a Beam filesystem here reads (gs needs the gcp extra, s3 the aws one; http and
    https are registered by storage.objects, imported above)."""
    return frozenset(fs.scheme() for fs in FileSystem.get_all_subclasses() if fs.scheme())


def check_uri(uri: str) -> None:
    """Raises ValueError, saying why, for a URI no filesystem here reads or that names a web page."""
    if "://" not in uri:
        return  # a local path
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        return
    if scheme in ("http", "https"):
        host = (urllib.parse.urlsplit(uri).hostname or "").lower()
        if not host:
            raise ValueError(f"{uri!r} has no host")
        if any(host == site or host.endswith("." + site) for site in _VIDEO_PAGES):
            raise ValueError(f"{uri!r} is a video site's page, not a video file: it needs a downloader (such as "
                             "yt-dlp) that this job does not run; download the videos and list the files or their "
                             "direct URLs")
    if scheme not in readable_schemes():
        raise ValueError(f"{uri!r}: no filesystem here reads {scheme}:// (readable: "
                         f"{', '.join(sorted(readable_schemes()))} and local paths; gs:// needs the gcp extra, "
                         "s3:// the aws extra)")


def input_kind(spec: str) -> str:
    """'glob' for video files, else the manifest kind from the extension (of a URL's path: a signed
    URL's query comes after it)."""
    path = urllib.parse.urlsplit(spec).path if spec.startswith(("http://", "https://")) else spec
    for suffix, kind in MANIFEST_KINDS.items():
        if path.lower().endswith(suffix):
            return kind
    return "glob"


def check_input(spec: str, column: str = "uri") -> None:
    """Fails at launch if --input matches nothing or a manifest lacks the required column.

    Raises:
        ValueError: naming --input and what is wrong.
    """
    try:
        matches = FileSystems.match([spec], limits=[1])[0].metadata_list  # one is enough: the listing stops there
        if not matches:
            raise ValueError(f"--input {spec!r} matches no files")
        kind = input_kind(spec)
        if kind == "csv":
            names = csv_header(matches[0].path)
        elif kind == "parquet":
            import pyarrow.parquet as pq

            with open_object(matches[0].path) as f:
                names = pq.read_schema(f).names
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - BeamIOError, each store's and the web's own: said in one line
        raise ValueError(f"--input {spec!r} cannot be read: {_reason(e)}") from e
    if kind in ("csv", "parquet") and column not in names:
        raise ValueError(f"--input {spec!r}: {kind.upper() if kind == 'csv' else 'Parquet'} file {matches[0].path} "
                         f"has no {column!r} column (columns: {names})")


def _reason(error: BaseException) -> str:
    """An error in one line: a BeamIOError's wrapped errors rather than its dict of them."""
    details = getattr(error, "exception_details", None)
    if isinstance(details, dict) and details:
        return "; ".join(f"{type(e).__name__}: {e}" for e in details.values())
    return f"{type(error).__name__}: {error}"


def count_inputs(spec: str) -> int:
    """How many inputs --input names, read at launch: files a glob matches, rows of the manifests.

    An upper bound of the videos to do (duplicates and --skip_done come off later, in the graph),
    so the progress line has a total and an ETA from the start. Costs a listing for a glob; a
    manifest is read once, line by line (a million lines: about a second).
    """
    matches = FileSystems.match([spec])[0].metadata_list
    kind = input_kind(spec)
    if kind == "glob":
        return len(matches)
    total = 0
    for match in matches:
        if kind == "parquet":
            import pyarrow.parquet as pq

            with open_object(match.path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
            continue
        with open_object(match.path) as f:
            lines = sum(1 for line in f if line.strip() and not (kind == "txt" and line.lstrip().startswith(b"#")))
        total += lines - 1 if kind == "csv" and lines else lines
    return total


def csv_header(path: str) -> list[str]:
    with open_object(path) as f:
        first = io.TextIOWrapper(f, encoding="utf-8").readline()
    return [c.strip() for c in next(csv.reader([first]), [])]


def _optional_float(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    if math.isnan(number):
        return None
    if number < 0 or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def to_request(row: dict[str, Any]) -> VideoRequest:
    """A manifest row -> VideoRequest (its video_id given, or derived from uri and segment).

    Raises:
        ValueError, TypeError: the row has no usable uri or segment; the message says what is wrong.
    """
    uri = row.get("uri")
    uri = uri.strip() if isinstance(uri, str) else uri
    if not uri or not isinstance(uri, str):
        raise ValueError(f"row has no uri: {row!r}")
    check_uri(uri)
    start, end = _optional_float(row, "start_sec"), _optional_float(row, "end_sec")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end_sec must be > start_sec, got [{start}, {end})")
    captions = row.get("captions")
    captions = captions.strip() or None if isinstance(captions, str) else None
    return VideoRequest(_given_id(row) or derive_video_id(uri, start, end), uri, start, end, captions=captions)


def _given_id(row: dict[str, Any]) -> str | None:
    given = row.get("video_id")
    return str(given).strip() if given not in (None, "") else None


def input_failure(row: dict[str, Any], error: Exception) -> dict[str, Any]:
    """The failure row of a manifest row that is not a usable request."""
    uri = row.get("uri")
    bad_uri = str(uri.strip() if isinstance(uri, str) else uri or "")
    video_id = _given_id(row) or derive_video_id(bad_uri or json.dumps(row, default=str, sort_keys=True))
    return failure_row(video_id, bad_uri, "input", type(error).__name__, str(error))


def request_or_failure(row: dict[str, Any]) -> VideoRequest | dict[str, Any]:
    """A row's VideoRequest, or its failure row: the one it carries (CARRIED), or why it is unusable."""
    if CARRIED in row:
        return row[CARRIED]
    try:
        return to_request(row)
    except (TypeError, ValueError) as e:
        return input_failure(row, e)


def input_key(row: dict[str, Any]) -> str:
    """The video_id a row ends up under: its request's, or its failure's. Rows that share one are one video."""
    return _key(request_or_failure(row))


def _key(outcome: VideoRequest | dict[str, Any]) -> str:
    return outcome.video_id if isinstance(outcome, VideoRequest) else outcome["video_id"]


class ToVideoRequestFn(beam.DoFn):
    """A manifest row (dict) -> VideoRequest, or a failure row naming what is wrong with it.

    A row that carries a failure (CARRIED: a line that did not parse, as the chunk planner writes
    one) is that failure.
    """

    def __init__(self):
        self._bad = Metrics.counter(NAMESPACE, "input_rows_invalid")

    def process(self, row: dict[str, Any]):
        outcome = request_or_failure(row)
        if isinstance(outcome, VideoRequest):
            yield outcome
            return
        if CARRIED not in row:  # a carried failure was counted where it was found
            self._bad.inc()
        yield beam.pvalue.TaggedOutput(FAILURES, outcome)


def parse_line(line: str, kind: str, header: list[str] | None, line_column: str, comments: bool) -> dict | None:
    """A manifest line -> row dict (None for a blank or comment line).

    Raises:
        ValueError: the line does not parse; the message says why.
    """
    if not line.strip() or (comments and line.lstrip().startswith("#")):
        return None
    if kind == "txt":
        return {line_column: line.strip()}
    if kind == "jsonl":
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError(f"a JSON Lines row must be an object, got {type(row).__name__}")
        return row
    values = next(csv.reader([line]))
    if len(values) != len(header):
        raise ValueError(f"{len(values)} fields where the header has {len(header)}")
    return dict(zip(header, values, strict=True))


class _ParseLineFn(beam.DoFn):
    """A manifest line -> row dict; a line that does not parse goes to `bad_lines` with the reason."""

    def __init__(self, kind: str, header: list[str] | None, line_column: str, comments: bool):
        self._kind = kind
        self._header = header
        self._column = line_column
        self._comments = comments

    def process(self, line: str):
        try:
            row = parse_line(line, self._kind, self._header, self._column, self._comments)
        except ValueError as e:
            Metrics.counter(NAMESPACE, "input_rows_invalid").inc()
            yield beam.pvalue.TaggedOutput(BAD_LINES, bad_line(line, e))
            return
        if row is not None:
            yield row


def bad_line(line: str, error: Exception) -> dict[str, str]:
    return {"line": line, "error_type": type(error).__name__, "message": str(error)}


def read_input_rows(spec: str, columns: Columns = DEFAULT_COLUMNS) -> Iterator[dict[str, Any]]:
    """The rows --input names, read here rather than in a graph (the chunk planner's reading of it).

    The same rows the graph's ReadVideoRequests reads: a glob's files as {"uri": path}, a manifest's
    rows (`columns` renamed); a line that does not parse is a row carrying (CARRIED) the failure the
    graph gives it, which ToVideoRequestFn passes on. One pass, line by line.
    """
    matches = sorted(m.path for m in FileSystems.match([spec])[0].metadata_list)
    kind = input_kind(spec)
    if kind == "glob":
        yield from ({"uri": path} for path in matches)
        return
    yield from map(columns.canonical, _manifest_rows(matches, kind))


def _manifest_rows(matches: list[str], kind: str) -> Iterator[dict[str, Any]]:
    for path in matches:
        if kind == "parquet":
            import pyarrow.parquet as pq

            with open_object(path) as f, pq.ParquetFile(f) as parquet:
                for batch in parquet.iter_batches():
                    yield from batch.to_pylist()
            continue
        with open_object(path) as f:
            lines = io.TextIOWrapper(f, encoding="utf-8", newline="")
            header = None
            if kind == "csv":
                first = lines.readline()
                header = [c.strip() for c in next(csv.reader([first]), [])]
            for line in lines:
                line = line.rstrip("\r\n")
                try:
                    row = parse_line(line, kind, header, "uri", comments=True)  # a .txt line is the uri
                except ValueError as e:
                    yield {CARRIED: _bad_line_failure(bad_line(line, e))}
                    continue
                if row is not None:
                    yield row


class ReadManifestRows(beam.PTransform):
    """A manifest (.txt, .csv, .jsonl, .parquet) -> {rows: dicts, bad_lines: {line, error_type, message}}.

    A .txt manifest has one value a line, which becomes the row's `line_column`.
    """

    def __init__(self, spec: str, line_column: str, comments: bool = False, columns: Columns = DEFAULT_COLUMNS):
        super().__init__()
        self._spec = spec
        self._columns = columns
        self._kind = input_kind(spec)
        if self._kind == "glob":
            raise ValueError(f"{spec!r} is not a manifest (.txt, .csv, .jsonl or .parquet)")
        self._column = line_column
        self._comments = comments
        # A CSV header is read when the graph is built, so a bad manifest fails at launch.
        self._header = csv_header(FileSystems.match([spec])[0].metadata_list[0].path) if self._kind == "csv" else None

    def expand(self, pbegin):
        if self._kind == "parquet":
            rows = pbegin | "ReadParquet" >> beam.io.ReadFromParquet(self._spec)
            bad = pbegin | "NoBadLines" >> beam.Create([])
        else:
            lines = pbegin | "ReadLines" >> beam.io.ReadFromText(
                self._spec, skip_header_lines=1 if self._kind == "csv" else 0)
            parsed = lines | "ParseRows" >> beam.ParDo(_ParseLineFn(
                self._kind, self._header, self._column, self._comments)).with_outputs(BAD_LINES, main="rows")
            rows, bad = parsed.rows, parsed[BAD_LINES]
        if self._columns != DEFAULT_COLUMNS:
            rows = rows | "RenameColumns" >> beam.Map(self._columns.canonical)
        return {"rows": rows, BAD_LINES: bad}


def _bad_line_failure(bad: dict[str, str]) -> dict[str, Any]:
    return failure_row(derive_video_id(bad["line"]), "", "input", bad["error_type"], f"{bad['message']}: {bad['line'][:200]!r}")


def keep_first(video_id: str, requests: list[VideoRequest]) -> tuple[VideoRequest, int, list[dict[str, Any]]]:
    """Of requests sharing a video_id: the one that goes on, how many were exact repeats, and a
    DuplicateVideoId failure for each that asks for something else."""
    distinct = sorted(set(requests), key=lambda r: (r.uri, r.start_sec or 0.0, r.end_sec or math.inf))
    conflicts = [
        failure_row(video_id, other.uri, "input", "DuplicateVideoId",
                    f"video_id {video_id!r} is already used by {distinct[0].uri!r}",
                    segment=(other.start_sec, other.end_sec))
        for other in distinct[1:]
    ]
    return distinct[0], len(requests) - len(distinct), conflicts


class _KeepFirstFn(beam.DoFn):
    """Of requests sharing a video_id: one goes on; exact repeats are counted, conflicting ones fail."""

    def __init__(self):
        self._repeats = Metrics.counter(NAMESPACE, "input_duplicates")

    def process(self, keyed):
        video_id, requests = keyed
        first, repeats, conflicts = keep_first(video_id, list(requests))
        self._repeats.inc(repeats)
        yield first
        for failure in conflicts:
            yield beam.pvalue.TaggedOutput(FAILURES, failure)


class ReadVideoRequests(beam.PTransform):
    """--input -> PCollection[VideoRequest] (main) and failure rows (tag `failures`)."""

    def __init__(self, spec: str | None, retry: PTransform | None = None, columns: Columns = DEFAULT_COLUMNS):
        """Reads `spec` (a glob or a manifest, its `columns` renamed), or, given `retry`, the rows it yields."""
        super().__init__()
        if (spec is None) == (retry is None):
            raise ValueError("give an input spec or a retry source, not both")
        self._spec = spec
        self._retry = retry
        self._manifest = None if retry or input_kind(spec) == "glob" else \
            ReadManifestRows(spec, "uri", comments=True, columns=columns)

    def expand(self, pbegin):
        failures = []
        if self._retry is not None:
            rows = pbegin | "RetryFailures" >> self._retry
        elif self._manifest is None:
            rows = (
                pbegin
                | "MatchVideos" >> fileio.MatchFiles(self._spec)
                | "FileToRow" >> beam.Map(lambda m: {"uri": m.path})
            )
        else:
            manifest = pbegin | "ReadManifest" >> self._manifest
            rows = manifest["rows"]
            failures.append(manifest[BAD_LINES] | "BadLineFailures" >> beam.Map(_bad_line_failure))
        requests = rows | "ToRequests" >> beam.ParDo(ToVideoRequestFn()).with_outputs(FAILURES, main="requests")
        failures.append(requests[FAILURES])
        unique = (
            requests.requests
            | "KeyById" >> beam.Map(lambda r: (r.video_id, r))
            | "GroupById" >> beam.GroupByKey()
            | "KeepFirst" >> beam.ParDo(_KeepFirstFn()).with_outputs(FAILURES, main="requests")
        )
        failures.append(unique[FAILURES])
        return {
            "requests": unique.requests,
            FAILURES: tuple(failures) | "FlattenInputFailures" >> beam.Flatten(),
        }
