"""http:// and https:// as a Beam filesystem: videos on the web are read the way a bucket's are.

Importing this module registers the two schemes with Beam (`storage.objects` imports it, so every
process that reads anything has them): the manifest reader, the header read of long videos, the
decoder, `pipeline.frames`, the search page's thumbnails and `--retry_failures` all open a URL
through `FileSystems.open`, as they open `gs://`.

Reading
- `open` gives a seekable file built on HTTP range requests: blocks from 1 MiB, doubling while the
  reads go forward, up to 16 MiB, and back to 1 MiB after a seek (the decoder seeks: an MP4 whose
  index, the `moov` box, is at the end is read there first). A connection is reused between blocks.
- A server that ignores `Range` (it answers 200 with the whole body), or gives no length, is read
  through once into a temporary file on disk, up to `--http_spool_limit_mb`; the file is deleted
  when the reader is closed.
- `match`, `size`, `exists` and `last_updated` ask HEAD, or a one-byte ranged GET where HEAD is
  refused. A URL names one object: there is no listing, and a glob says so.

Errors
- Transient, retried up to `--io_retries` times with exponential backoff from
  `--io_retry_backoff_sec` and jitter: 5xx, 408, 429 (its `Retry-After` is honoured, up to
  MAX_RETRY_AFTER_SEC), refused or reset connections, timeouts, and a body shorter than its
  `Content-Length`. When the retries run out the error is still transient (a later
  `--retry_failures` run may succeed), and says it was retried so the job does not retry it again.
- Permanent, never retried: 404 and 410 (HttpNotFoundError, a FileNotFoundError), 401 and 403
  (HttpForbiddenError, a PermissionError), other 4xx (HttpStatusError), an HTML page where media
  was expected (HtmlNotMediaError: an expired signed URL, a login page), too many redirects.
  Each message names the status and the URL that answered, after redirects.

Politeness
- One pool of connections per host and process (`urllib3.PoolManager`), at most
  `--http_max_per_host` connections to a host at once: a request waits for a free one. Every
  request names this project and its version in `User-Agent` (`--http_user_agent` replaces it).
- Redirects are followed, up to MAX_REDIRECTS; a reader keeps the URL they led to.

The client is urllib3, which Beam already installs: per-host pools that block at a size are the
per-host limit itself, timeouts are separate for connect and read, and bodies stream. `requests`
adds sessions and cookies this does not need on top of the same library; `httpx` would add a
dependency for HTTP/2 and async, which a reader of one object at a time does not use.
"""

from __future__ import annotations

import dataclasses
import email.utils
import io
import logging
import random
import re
import tempfile
import threading
import time
import urllib.parse
from typing import Any

import urllib3
from apache_beam.io.filesystem import (
    BeamIOError,
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
    MatchResult,
)

from s3d import package_version
from storage.paths import UnusableObjectError
from storage.seekable import SeekableReader

log = logging.getLogger(__name__)

MIN_BLOCK = 1 << 20
MAX_BLOCK = 16 << 20
MAX_REDIRECTS = 10
MAX_RETRY_AFTER_SEC = 300.0  # a server asking for a longer wait fails the read (transient) rather than stall a worker
_REDIRECTS = {301, 302, 303, 307, 308}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_HTML_START = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body)", re.IGNORECASE)
# What urllib3 raises for a request that may succeed when made again (ProtocolError covers resets and
# a body shorter than its Content-Length; TimeoutError both connect and read timeouts).
_TRANSIENT_ERRORS = (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError,
                     urllib3.exceptions.NewConnectionError, urllib3.exceptions.SSLError, ConnectionError)


def default_user_agent() -> str:
    return f"s3d-features/{package_version()} (batch video feature extraction; urllib3/{urllib3.__version__})"


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """How the http(s) filesystem behaves; read from the job's pipeline options (`from_options`)."""

    retries: int = 3
    backoff_sec: float = 1.0
    connect_timeout_sec: float = 10.0
    timeout_sec: float = 60.0  # read: the longest silence within a response
    max_per_host: int = 4
    user_agent: str = ""
    spool_limit_mb: int = 4096

    @staticmethod
    def from_options(options: Any) -> HttpSettings:
        """From pipeline options (a PipelineOptions, or the dict Beam's workers hold), else the defaults."""
        if options is None:
            return HttpSettings()
        if not isinstance(options, dict):
            cached = _SETTINGS_OF.get(id(options))
            if cached is not None and cached[0] is options:
                return cached[1]
            # retain_unknown_options: a worker process may not have imported the module that defines the
            # job's flags (pipeline.options); its values then come as strings, converted below.
            values = options.get_all_options(drop_default=False, retain_unknown_options=True)
        else:
            values = options
        defaults = HttpSettings()
        pick = lambda key, name: values.get(key) if values.get(key) is not None else getattr(defaults, name)  # noqa: E731
        settings = HttpSettings(
            retries=int(pick("io_retries", "retries")),
            backoff_sec=float(pick("io_retry_backoff_sec", "backoff_sec")),
            timeout_sec=float(pick("http_timeout_sec", "timeout_sec")),
            max_per_host=int(pick("http_max_per_host", "max_per_host")),
            user_agent=str(pick("http_user_agent", "user_agent")),
            spool_limit_mb=int(pick("http_spool_limit_mb", "spool_limit_mb")),
        )
        if not isinstance(options, dict):
            _SETTINGS_OF[id(options)] = (options, settings)
        return settings


_SETTINGS_OF: dict[int, tuple[Any, HttpSettings]] = {}


# ---- errors --------------------------------------------------------------------------------------


class HttpNotFoundError(FileNotFoundError):
    """404 or 410: the URL names nothing, and will not."""

    error_type = "HttpNotFoundError"


class HttpForbiddenError(PermissionError):
    """401 or 403: the server refuses (a private object, a signed URL for another object)."""

    error_type = "HttpForbiddenError"


class HttpStatusError(UnusableObjectError):
    """Another 4xx, or too many redirects: asking again the same way will not help."""

    error_type = "HttpStatusError"


class HtmlNotMediaError(UnusableObjectError):
    """The server sent an HTML page where a video (or a manifest) was expected."""

    error_type = "HtmlNotMediaError"


class HttpTransientError(OSError):
    """A read that failed after every retry, for reasons that may pass (5xx, 429, timeouts, resets)."""

    error_type = "HttpTransientError"
    retried = True  # the job's own retry of a video does not retry it again


def _status_error(status: int, reason: str, url: str, asked: str) -> OSError:
    where = url if url == asked else f"{url} (redirected from {asked})"
    message = f"HTTP {status} {reason}".rstrip() + f" from {where}"
    if status in (404, 410):
        return HttpNotFoundError(message)
    if status in (401, 403):
        return HttpForbiddenError(message)
    return HttpStatusError(message)


# ---- the client: one pool manager per process and settings ----------------------------------------


_POOLS: dict[tuple, urllib3.PoolManager] = {}
_POOLS_LOCK = threading.Lock()


def _pool(settings: HttpSettings) -> urllib3.PoolManager:
    key = (settings.max_per_host, settings.connect_timeout_sec, settings.timeout_sec, settings.user_agent)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            # block=True with maxsize: a host never has more than max_per_host connections from this
            # process; a request waits for one to come free.
            pool = _POOLS[key] = urllib3.PoolManager(
                num_pools=256, maxsize=settings.max_per_host, block=True, retries=False,
                timeout=urllib3.Timeout(connect=settings.connect_timeout_sec, read=settings.timeout_sec))
        return pool


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Client:
    """Requests with redirects followed, transient failures retried and permanent ones typed."""

    def __init__(self, settings: HttpSettings):
        self.settings = settings
        self.pool = _pool(settings)
        # A request's own headers replace the pool's, so each request carries these itself.
        self.headers = {"User-Agent": settings.user_agent or default_user_agent(), "Accept-Encoding": "identity"}

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, stream: bool = False,
                accept: tuple[int, ...] = (200, 206)) -> tuple[urllib3.BaseHTTPResponse, str]:
        """The response (body read unless `stream`) and the URL that gave it, after redirects.

        Raises:
            HttpNotFoundError, HttpForbiddenError, HttpStatusError: permanent.
            HttpTransientError: still failing after the retries.
        """
        attempt = 0
        while True:
            try:
                response, final = self._follow(method, url, headers, stream, accept)
            except _Retry as retry:
                if attempt >= self.settings.retries:
                    raise HttpTransientError(f"{retry.reason} (after {attempt + 1} attempts)") from retry.__cause__
                delay = retry.wait if retry.wait is not None else _backoff(self.settings, attempt)
                if delay > MAX_RETRY_AFTER_SEC:
                    raise HttpTransientError(f"{retry.reason}: the server asks to wait {delay:.0f} s, longer than "
                                             f"{MAX_RETRY_AFTER_SEC:.0f} s") from retry.__cause__
                attempt += 1
                log.warning("%s; retrying in %.1f s (%d of %d)", retry.reason, delay, attempt, self.settings.retries)
                _count_retry()
                time.sleep(delay)
                continue
            return response, final

    def _follow(self, method, url, headers, stream, accept):
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self.pool.request(method, current, headers={**self.headers, **(headers or {})},
                                             redirect=False, preload_content=False)
            except _TRANSIENT_ERRORS as e:
                raise _Retry(f"{type(e).__name__} from {current}: {e}") from e
            status = response.status
            if status in _REDIRECTS and response.headers.get("Location"):
                response.drain_conn()
                response.release_conn()
                current = urllib.parse.urljoin(current, response.headers["Location"])
                continue
            if status in accept:
                if not stream:
                    try:
                        response._body = response.read()  # noqa: SLF001 - read whole, so .data has it
                    except _TRANSIENT_ERRORS as e:
                        raise _Retry(f"{type(e).__name__} reading the body from {current}: {e}") from e
                    finally:
                        response.release_conn()
                return response, current
            response.drain_conn()
            response.release_conn()
            if status in _TRANSIENT_STATUS or status >= 500:
                wait = _retry_after(response) if status in (429, 503) else None
                raise _Retry(f"HTTP {status} {response.reason or ''} from {current}".replace("  ", " "), wait)
            raise _status_error(status, response.reason or "", current, url)
        raise HttpStatusError(f"more than {MAX_REDIRECTS} redirects from {url} (the last to {current})")


def _backoff(settings: HttpSettings, attempt: int) -> float:
    """Seconds before retry `attempt` + 1: exponential, with jitter so that workers do not retry in step."""
    return settings.backoff_sec * 2 ** attempt * random.uniform(0.5, 1.5)


class _Retry(Exception):  # noqa: N818 - control flow inside _Client
    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


def _count_retry() -> None:
    try:
        from apache_beam.metrics import Metrics

        Metrics.counter("s3d", "http_retries").inc()
    except Exception:  # noqa: BLE001 - outside a Beam bundle there is nothing to count into
        pass


def _content_range_total(response: urllib3.BaseHTTPResponse) -> int | None:
    match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match or match.group(3) == "*":
        return None
    return int(match.group(3))


def _check_not_html(response: urllib3.BaseHTTPResponse, head: bytes, url: str) -> None:
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type in ("text/html", "application/xhtml+xml") or _HTML_START.match(head[:512]):
        raise HtmlNotMediaError(
            f"{url} sent an HTML page (Content-Type {content_type or 'none'}), not media: an expired signed URL, "
            "a login or error page, or a web page about the video rather than the file")


# ---- the reader ------------------------------------------------------------------------------------


class HttpReader(SeekableReader):
    """A seekable read-only file over one URL, with range requests (see the module's docstring)."""

    def __init__(self, url: str, settings: HttpSettings):
        super().__init__()
        self.url = url  # as asked; `final_url` once redirects are followed
        self._client = _Client(settings)
        self._settings = settings
        self._block_start, self._block = 0, b""
        self._next_block = MIN_BLOCK
        self._spool: Any = None  # a temporary file holding the whole body, when ranges cannot be used
        self.size: int | None = None
        self.final_url = url
        self._first()

    # The first request tells whether ranges work, the size, and whether this is media at all.
    def _first(self) -> None:
        response, self.final_url = self._client.request(
            "GET", self.url, {"Range": f"bytes=0-{MIN_BLOCK - 1}"}, stream=True, accept=(200, 206, 416))
        try:
            if response.status == 416:  # nothing to read: an empty object
                self.size = 0
                return
            if response.status == 206:
                data = self._read_body(response)
                _check_not_html(response, data, self.final_url)
                self.size = _content_range_total(response)
                self._block_start, self._block = 0, data
                if self.size is None and len(data) < MIN_BLOCK:
                    self.size = len(data)  # the whole object came; its length is known now
                return
            head = response.read(512)
            _check_not_html(response, head, self.final_url)
            self._spool_body(response, head)
        finally:
            response.release_conn()

    def _read_body(self, response) -> bytes:
        try:
            return response.read()
        except _TRANSIENT_ERRORS as e:
            # The first block failed mid-body: fetch it again the ordinary way.
            log.warning("reading %s: %s; asking again", self.final_url, e)
            return self._fetch_range(0, MIN_BLOCK)

    def _spool_body(self, response, head: bytes) -> None:
        """The whole body into a temporary file: the server ignores Range, or a seek needs the end."""
        limit = self._settings.spool_limit_mb << 20
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HttpStatusError(
                f"{self.final_url} ignores Range requests and is {int(length) >> 20} MiB, more than "
                f"--http_spool_limit_mb={self._settings.spool_limit_mb} to hold on disk")
        for attempt in range(self._settings.retries + 1):
            spool = tempfile.TemporaryFile(prefix="s3d-http-")
            try:
                spool.write(head)
                while chunk := response.read(1 << 20):
                    spool.write(chunk)
                    if spool.tell() > limit:
                        raise HttpStatusError(
                            f"{self.final_url} ignores Range requests and is more than "
                            f"--http_spool_limit_mb={self._settings.spool_limit_mb} MiB to hold on disk")
                self._spool, self.size = spool, spool.tell()
                return
            except _TRANSIENT_ERRORS as e:
                spool.close()
                response.release_conn()
                if attempt == self._settings.retries:
                    raise HttpTransientError(f"reading {self.final_url} whole: {type(e).__name__}: {e}") from e
                log.warning("reading %s whole: %s; starting again", self.final_url, e)
                time.sleep(_backoff(self._settings, attempt))
                response, _ = self._client.request("GET", self.final_url, stream=True, accept=(200,))
                head = b""
            except BaseException:
                spool.close()
                raise

    def _fetch_range(self, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer at the end), retried whole when short or cut."""
        end = start + length - 1
        if self.size is not None:
            end = min(end, self.size - 1)
        for attempt in range(self._settings.retries + 1):
            response, _ = self._client.request("GET", self.final_url, {"Range": f"bytes={start}-{end}"},
                                               accept=(206, 200, 416))
            if response.status == 416:
                return b""
            if response.status == 200:  # ranges worked for the first block and not now: read it whole
                raise _RangesStopped()
            data = response.data
            expected = end - start + 1
            if len(data) == expected or (self.size is None and len(data) < expected):
                return data
            if attempt == self._settings.retries:
                raise HttpTransientError(f"{self.final_url} sent {len(data)} bytes for a range of {expected}")
            time.sleep(_backoff(self._settings, attempt))
        raise AssertionError("unreachable")

    def _spool_now(self) -> None:
        response, _ = self._client.request("GET", self.final_url, stream=True, accept=(200,))
        try:
            self._spool_body(response, b"")
        finally:
            response.release_conn()
        self._block = b""

    def _end(self) -> int:
        if self.size is None:
            self._spool_now()
        return self.size

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._spool is not None:
            self._spool.seek(self._pos)
            n = self._spool.readinto(view)
            self._pos += n
            return n
        if self.size is not None and self._pos >= self.size:
            return 0
        at = self._pos - self._block_start
        if not 0 <= at < len(self._block):
            # Forward from the block before: the next block is larger; after a seek it starts small.
            sequential = self._pos == self._block_start + len(self._block)
            self._next_block = min(self._next_block * 2, MAX_BLOCK) if sequential else MIN_BLOCK
            try:
                data = self._fetch_range(self._pos, max(self._next_block, len(view)))
            except _RangesStopped:
                self._spool_now()
                return self.readinto(buffer)
            self._block_start, self._block = self._pos, data
            at = 0
            if not data:
                self.size = self._pos if self.size is None else self.size
                return 0
        n = min(len(view), len(self._block) - at)
        view[:n] = self._block[at:at + n]
        self._pos += n
        return n

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._block = b""
        super().close()


class _RangesStopped(Exception):  # noqa: N818 - the server answered a range with the whole body
    pass


# ---- the filesystem ---------------------------------------------------------------------------------


def _is_glob(url: str) -> bool:
    path = urllib.parse.urlsplit(url).path
    return "*" in path or "[" in path or path.endswith("/")


class HttpFileSystem(FileSystem):
    """Beam's FileSystem for http:// URLs (HttpsFileSystem for https://): read-only, one object a URL."""

    def __init__(self, pipeline_options=None):
        super().__init__(pipeline_options)
        self._settings = HttpSettings.from_options(pipeline_options)
        self._client = _Client(self._settings)

    @classmethod
    def scheme(cls) -> str:
        return "http"

    # paths
    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rpartition("/")
        return head, tail

    def has_dirs(self) -> bool:
        return False

    # reading
    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO):
        raw = HttpReader(path, self._settings)
        buffered = io.BufferedReader(raw, buffer_size=1 << 20)  # its mode is the raw file's: rb
        if compression_type == CompressionTypes.AUTO:
            compression_type = CompressionTypes.detect_compression_type(urllib.parse.urlsplit(path).path)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return buffered
        return CompressedFile(buffered, compression_type=compression_type)

    def _head(self, url: str) -> FileMetadata | None:
        """The object's metadata from HEAD (or a one-byte GET where HEAD is refused); None for a 404/410."""
        try:
            try:
                response, final = self._client.request("HEAD", url, accept=(200,))
                length = response.headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
            except HttpStatusError:  # 405 and its like: HEAD refused, ask for one byte
                response, final = self._client.request("GET", url, {"Range": "bytes=0-0"}, stream=True,
                                                       accept=(200, 206, 416))
                size = 0 if response.status == 416 else _content_range_total(response)
                if response.status == 200 and size is None:
                    length = response.headers.get("Content-Length")
                    size = int(length) if length and length.isdigit() else None
                response.drain_conn()
                response.release_conn()
        except HttpNotFoundError:
            return None
        if size is None:  # no length given anywhere: count the body (manifests, mostly; videos are not matched)
            response, final = self._client.request("GET", url, stream=True, accept=(200,))
            size = 0
            try:
                while chunk := response.read(1 << 20):
                    size += len(chunk)
            finally:
                response.release_conn()
        modified = response.headers.get("Last-Modified")
        try:
            updated = email.utils.parsedate_to_datetime(modified).timestamp() if modified else 0.0
        except (TypeError, ValueError):
            updated = 0.0
        return FileMetadata(url, size, updated)

    def match(self, patterns, limits=None):
        results, errors = [], {}
        for pattern in patterns:
            if _is_glob(pattern):
                errors[pattern] = ValueError(
                    f"{pattern}: a web server has no listing, so an http(s) glob or directory matches nothing "
                    "that can be found; list the videos' URLs in a manifest (.txt, .csv, .jsonl, .parquet)")
                continue
            try:
                found = self._head(pattern)
            except Exception as e:  # noqa: BLE001 - reported per pattern, as Beam's filesystems do
                errors[pattern] = e
                continue
            results.append(MatchResult(pattern, [found] if found else []))
        if errors:
            raise BeamIOError("Match operation failed", errors)
        return results

    def _list(self, dir_or_prefix):
        raise BeamIOError(f"{dir_or_prefix}: http(s) has no listing", {dir_or_prefix: NotImplementedError()})

    def _metadata(self, path: str) -> FileMetadata:
        found = self._head(path)
        if found is None:
            raise BeamIOError("no such object", {path: FileNotFoundError(path)})
        return found

    def exists(self, path: str) -> bool:
        return self._head(path) is not None

    def size(self, path: str) -> int:
        return self._metadata(path).size_in_bytes

    def last_updated(self, path: str) -> float:
        return self._metadata(path).last_updated_in_seconds

    def checksum(self, path: str) -> str:
        response, _ = self._client.request("HEAD", path, accept=(200,))
        return response.headers.get("ETag") or response.headers.get("Content-Length") or str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        return self._metadata(path)

    # writing: not possible over plain HTTP
    def _read_only(self, *_args, **_kwargs):
        raise BeamIOError("http(s) URLs are read-only: write --output_prefix to a local path or a bucket", {})

    mkdirs = create = copy = rename = delete = _read_only


class HttpsFileSystem(HttpFileSystem):
    """Beam's FileSystem for https:// URLs."""

    @classmethod
    def scheme(cls) -> str:
        return "https"
