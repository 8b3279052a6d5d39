"""A real HTTP server on 127.0.0.1 for the tests and benchmarks: files from a directory, with full
Range support, and switches that make it misbehave the ways web servers do.

`server.url(name)` is a well-behaved URL; `server.url(name, Trouble(...))` one whose requests meet
the trouble asked for (each such URL counts its own requests, so "the first N times" is per URL).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclasses.dataclass
class Trouble:
    fail_first: int = 0  # answer fail_status to the first N requests
    fail_status: int = 500
    retry_after: str | None = None  # the Retry-After header sent with those answers
    reset_first: int = 0  # the first N bodies are cut: the connection is reset after reset_after bytes
    reset_after: int = 1000
    short_first: int = 0  # the first N bodies end early, the connection closed cleanly (shorter than Content-Length)
    slow_first: int = 0  # the first N responses wait slow_sec between their headers and their body
    slow_sec: float = 0.0
    ignore_range: bool = False  # 200 with the whole body, whatever Range asks
    no_length: bool = False  # no Content-Length (and no Range): the body ends when the connection closes
    no_head: bool = False  # HEAD answers 405
    redirects: int = 0  # a chain of this many 302s before the file
    status: int | None = None  # always this status (404, 410, 403)
    html: bool = False  # an HTML page instead of the file
    delay_sec: float = 0.0  # every response waits this long first (to see concurrency)


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}  # per token (or "" for plain URLs): GETs and HEADs seen
        self.times: dict[str, list[float]] = {}  # per token: when each came
        self.ranges: list[str] = []
        self.user_agents: set[str] = set()
        self.active = 0
        self.max_active = 0


_HTML_PAGE = b"<!DOCTYPE html><html><body>Access denied: link expired</body></html>"


class _Handler(BaseHTTPRequestHandler):
    """One request; `root`, `troubles` and `state` are set on a subclass per server (VideoServer)."""

    protocol_version = "HTTP/1.1"
    root: str
    troubles: dict[str, Trouble]
    state: _State

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        self._serve(head=True)

    def do_GET(self):  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        state = self.state
        with state.lock:
            state.active += 1
            state.max_active = max(state.max_active, state.active)
            state.user_agents.add(self.headers.get("User-Agent", ""))
        try:
            self._answer(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with state.lock:
                state.active -= 1

    def _count(self, token: str) -> int:
        """This request's number among its URL's (1 for the first)."""
        with self.state.lock:
            seen = self.state.requests[token] = self.state.requests.get(token, 0) + 1
            self.state.times.setdefault(token, []).append(time.monotonic())
            if self.headers.get("Range"):
                self.state.ranges.append(self.headers["Range"])
        return seen

    def _answer(self, head: bool) -> None:
        token, name, hop = "", self.path.lstrip("/").split("?")[0], 0
        match = re.fullmatch(r"t/([0-9a-f]+)/(\d+)/(.+)", name)
        if match:
            token, hop, name = match.group(1), int(match.group(2)), match.group(3)
        trouble = self.troubles.get(token, Trouble())
        seen = self._count(token)
        if trouble.delay_sec:
            time.sleep(trouble.delay_sec)
        if hop < trouble.redirects:
            self._empty(302, Location=f"/t/{token}/{hop + 1}/{name}")
        elif trouble.status or seen <= trouble.fail_first:
            self._error(trouble.status or trouble.fail_status, trouble.retry_after, head)
        elif head and trouble.no_head:
            self._empty(405)
        else:
            self._file(name, trouble, seen, head)

    def _empty(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error(self, status: int, retry_after: str | None, head: bool) -> None:
        body = f"error {status}".encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _range(self, size: int, trouble: Trouble) -> tuple[int, int, int] | None:
        """(start, end, status) of the bytes to send; None when the range starts past the end."""
        wanted = self.headers.get("Range")
        if not wanted or trouble.ignore_range or trouble.no_length:
            return 0, size - 1, 200
        start, end = 0, size - 1
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
        if m and m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        elif m and m.group(2):
            start = max(0, size - int(m.group(2)))
        return None if start >= size else (start, end, 206)

    def _file(self, name: str, trouble: Trouble, seen: int, head: bool) -> None:
        if trouble.html:
            data, content_type = _HTML_PAGE, "text/html"
        else:
            path = os.path.join(self.root, name)
            if not os.path.isfile(path):
                self.send_error(404)
                return
            with open(path, "rb") as f:
                data = f.read()
            content_type = "video/mp4" if name.endswith(".mp4") else "application/octet-stream"
        span = self._range(len(data), trouble)
        if span is None:
            self._empty(416, Content_Range=f"bytes */{len(data)}")
            return
        start, end, status = span
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Last-Modified", "Wed, 02 Dec 2026 10:00:00 GMT")
        if not trouble.ignore_range and not trouble.no_length:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if trouble.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self._body(body, trouble, seen)

    def _body(self, body: bytes, trouble: Trouble, seen: int) -> None:
        if seen <= trouble.slow_first:
            self.wfile.flush()
            time.sleep(trouble.slow_sec)
        if seen <= trouble.reset_first:
            self.wfile.write(body[:trouble.reset_after])
            self.wfile.flush()
            # SO_LINGER with a zero timeout: close() sends RST, a reset connection mid-body.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif seen <= trouble.short_first:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.wfile.write(body)


class VideoServer:
    """Serves `root` on 127.0.0.1 (a free port) until `stop()`."""

    def __init__(self, root: str):
        self.root = root
        self.troubles: dict[str, Trouble] = {}
        self.state = _State()
        handler = type("Handler", (_Handler,), {"root": root, "troubles": self.troubles, "state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="test-http-server")
        self._thread.start()

    def url(self, name: str, trouble: Trouble | None = None) -> str:
        if trouble is None:
            return f"{self.base}/{name}"
        token = uuid.uuid4().hex[:12]
        self.troubles[token] = trouble
        return f"{self.base}/t/{token}/0/{name}"

    def requests(self, url: str) -> int:
        match = re.search(r"/t/([0-9a-f]+)/", url)
        return self.state.requests.get(match.group(1) if match else "", 0)

    def times(self, url: str) -> list[float]:
        match = re.search(r"/t/([0-9a-f]+)/", url)
        return self.state.times.get(match.group(1) if match else "", [])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
