"""The launcher's live progress line for local runs: videos N/M, clips and clips/s, failures, ETA.

On a terminal one line is redrawn every couple of seconds; otherwise (CI, Airflow logs)
a plain line is printed at most every `plain_every_sec`. The numbers come from the
events the steps append under a directory (transforms/progress.py).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from transforms.progress import ProgressReader

WINDOW_SEC = 60.0  # rates are over the last minute


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class _Rate:
    """A count's growth per second over the last WINDOW_SEC seconds."""

    def __init__(self):
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, value: int) -> float | None:
        self._samples.append((now, value))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_SEC:
            self._samples.popleft()
        t0, v0 = self._samples[0]
        return (value - v0) / (now - t0) if now - t0 >= 1.0 else None


def progress_line(counts: dict[str, int], clips_per_s: float | None, videos_per_s: float | None,
                  final: bool = False) -> str:
    """One line: videos done of the total (or 'counting'), clips and their rate, failures, ETA.

    Until the graph has counted the videos to do (`total`), the launcher's count of the inputs
    (`expected`, an upper bound: duplicates and --skip_done come off) stands in, shown as ~N.
    """
    done, total = counts.get("video", 0), counts.get("total")
    shown = str(total)
    if total is None and counts.get("expected") is not None:
        total = counts["expected"]
        shown = f"~{total}"
    parts = [f"videos {done}/{shown}" if total is not None else f"videos {done}/counting"]
    rate = f" ({clips_per_s:.2f}/s)" if clips_per_s is not None else ""
    parts.append(f"clips {counts.get('clips', 0)}{rate}")
    parts.append(f"failures {counts.get('failed', 0)}")
    if final:
        parts.append("done")
    elif total is not None and done >= total:
        parts.append("finishing")
    elif total is not None and videos_per_s:
        parts.append(f"ETA {_duration((total - done) / videos_per_s)}")
    else:
        parts.append("ETA -")
    return " | ".join(parts)


class ProgressDisplay:
    """Polls the progress directory in a thread and shows the line until stopped."""

    def __init__(self, directory: str, out: TextIO | None = None, interval_sec: float = 2.0,
                 plain_every_sec: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._reader = ProgressReader(directory)
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._interval = interval_sec
        self._plain_every = plain_every_sec
        self._clips, self._videos = _Rate(), _Rate()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._clock = clock
        self._last_plain: float | None = None
        self._lock = threading.RLock()
        self._shown = False  # the line is on the terminal, without its newline
        self._handlers: list[tuple[logging.StreamHandler, TextIO]] = []
        self.last_line = ""

    def __enter__(self) -> ProgressDisplay:
        if self._tty:  # log records clear the line, print, and the line comes back below them
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is self._out:
                    self._handlers.append((handler, handler.setStream(_AboveTheLine(self))))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.refresh(final=True)
        for handler, stream in self._handlers:
            handler.setStream(stream)

    def write_above(self, text: str) -> None:
        """Writes `text` where the progress line is, then shows the line again after a full line."""
        with self._lock:
            if self._shown:
                self._out.write("\r\x1b[K")
            self._out.write(text)
            self._shown = text.endswith("\n") and bool(self.last_line)
            if self._shown:
                self._out.write(self.last_line)
            self._out.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

    def refresh(self, final: bool = False) -> None:
        """Reads the new events and shows the line (without a terminal: if a plain line is due)."""
        now = self._clock()
        counts = self._reader.poll()
        line = progress_line(counts, self._clips.update(now, counts.get("clips", 0)),
                             self._videos.update(now, counts.get("video", 0)), final)
        with self._lock:
            self.last_line = line
            if self._tty:
                self._out.write("\r\x1b[K" + line + ("\n" if final else ""))
                self._shown = not final
            elif final or self._last_plain is None or now - self._last_plain >= self._plain_every:
                self._out.write(f"progress: {line}\n")
                self._last_plain = now
            self._out.flush()


class _AboveTheLine:
    """The stream a log handler writes to while a progress line is on the terminal."""

    def __init__(self, display: ProgressDisplay):
        self._display = display

    def write(self, text: str) -> None:
        self._display.write_above(text)

    def flush(self) -> None:
        pass
