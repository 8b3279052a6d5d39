"""Live progress of a local run: the steps append events to files, the launcher adds them up.

Beam's local runner gives no metrics until the job ends, and in multi-process mode the
steps run in other processes. So each step that makes progress appends one short line
per event (`video 1`, `clips 4`, `failed 1`, `total 120`) to a file of its own process
and thread under a directory the launcher chose; `ProgressReader` sums what the files
hold so far. On Dataflow there is no directory: the same numbers are the job's counters
(`videos_to_do`, `videos_decoded`, `clips_decoded`, `videos_failed_<stage>`).
"""

from __future__ import annotations

import os
import threading
from typing import IO

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.records import NAMESPACE


def count_failed_video(stage: str, error_type: str | None = None) -> None:
    """A video's failure in the job's counters: `videos_failed_<stage>`, and `error_<type>` when given.
    Counted once per video, by the step that writes its failure row."""
    Metrics.counter(NAMESPACE, f"videos_failed_{stage}").inc()
    if error_type:
        Metrics.counter(NAMESPACE, f"error_{error_type}").inc()


class ProgressLog:
    """Where steps report progress; picklable (it ships to workers), a no-op without a directory."""

    def __init__(self, directory: str | None = None):
        self.directory = directory
        self._files: dict[tuple[int, int], IO[str]] = {}

    def __getstate__(self):
        return {"directory": self.directory}

    def __setstate__(self, state):
        self.__init__(state["directory"])

    def add(self, kind: str, n: int = 1) -> None:
        if not self.directory or (n == 0 and kind != "total"):  # a total of 0 is news: nothing to do
            return
        key = (os.getpid(), threading.get_ident())
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = open(os.path.join(self.directory, f"{key[0]}-{key[1]}.log"), "a")  # noqa: SIM115
        f.write(f"{kind} {n}\n")
        f.flush()

    def total(self, count: int) -> int:
        """Reports how many videos the run has to do; returns the count (for use in beam.Map)."""
        self.add("total", count)
        return count


class ProgressReader:
    """Adds up the events of every file under the directory, reading each file from where it left off."""

    def __init__(self, directory: str):
        self.directory = directory
        self.counts: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, str] = {}

    def poll(self) -> dict[str, int]:
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            with open(path) as f:
                f.seek(self._offsets.get(name, 0))
                text = self._partial.pop(name, "") + f.read()
                self._offsets[name] = f.tell()
            lines = text.split("\n")
            if lines[-1]:
                self._partial[name] = lines[-1]  # a line still being written
            for line in lines[:-1]:
                kind, _, n = line.partition(" ")
                self.counts[kind] = self.counts.get(kind, 0) + int(n)
        return dict(self.counts)


class CountToDo(beam.PTransform):
    """Counts the videos a run has to do (after de-duplication and --skip_done) once the input is read.

    Reported to the progress line and as the counter `videos_to_do` (Dataflow's Job metrics).
    """

    def __init__(self, progress: ProgressLog):
        super().__init__()
        self._progress = progress

    def expand(self, requests):
        progress = self._progress

        def report(count: int) -> int:
            Metrics.counter(NAMESPACE, "videos_to_do").inc(count)
            return progress.total(count)

        return requests | "Count" >> beam.combiners.Count.Globally() | "Report" >> beam.Map(report)
