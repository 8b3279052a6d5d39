"""The launcher's live progress line for local runs: videos N/M, clips and clips/s, failures, ETA.

On a terminal one line is redrawn every couple of seconds; otherwise (CI, Airflow logs)
a plain line is printed at most every `plain_every_sec`. The numbers come from the
events the steps append under a directory (transforms/progress.py).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
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
    """One line: videos done of the total (or 'counting'), clips and their rate, failures, ETA."""
    done, total = counts.get("video", 0), counts.get("total")
    parts = [f"videos {done}/{total}" if total is not None else f"videos {done}/counting"]
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
                 plain_every_sec: float = 30.0):
        self._reader = ProgressReader(directory)
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._interval = interval_sec
        self._plain_every = plain_every_sec
        self._clips, self._videos = _Rate(), _Rate()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._last_plain = 0.0
        self.last_line = ""

    def __enter__(self) -> ProgressDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._show(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._show(final=False)

    def _show(self, final: bool) -> None:
        now = time.monotonic()
        counts = self._reader.poll()
        line = progress_line(counts, self._clips.update(now, counts.get("clips", 0)),
                             self._videos.update(now, counts.get("video", 0)), final)
        self.last_line = line
        if self._tty:
            self._out.write("\r\x1b[K" + line + ("\n" if final else ""))
        elif final or now - self._last_plain >= self._plain_every:
            self._out.write(f"progress: {line}\n")
            self._last_plain = now
        self._out.flush()
