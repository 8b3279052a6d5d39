"""Runs in chunks that commit on their own (--chunk_videos N): a run that dies loses only its running chunk.

The launcher reads the input itself, drops the videos --skip_done names, keys every row by the
video_id it ends up under, and cuts the ids, sorted, into chunks of at most N videos (rows that
share an id stay together, so duplicates are found within a chunk). Each chunk has its input in
PREFIX/chunks/NNNNN/input.jsonl, and each attempt at it is a run of its own in
PREFIX/chunks/NNNNN/attempts/ATTEMPT/ (storage.layout: tables, then run_summary.json). The plan
(PREFIX/chunks/plan.json, written after every chunk's input) names the parameters; the same command
again resumes, running only the chunks no attempt completed. Once every chunk is complete,
PREFIX/run_summary.json aggregates them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.runners.runner import PipelineState

from pipeline.options import IOOptions, lease_settle_sec, runs_locally
from pipeline.runner import Stopwatch, clear_previous_run, finish_summary, run_graph
from storage.layout import (
    CHUNK_INPUT_NAME,
    any_layout_glob,
    attempt_of,
    attempt_prefix,
    chunk_name,
    chunk_paths,
    chunk_prefix,
    chunk_summary,
    committed_attempt,
    committed_attempts,
    committed_of,
    new_attempt,
    plan_path,
    read_json,
    read_summary,
    table_files,
)
from storage.lease import Lease, acquire, release
from storage.objects import write_object
from storage.paths import is_local, local_path
from storage.runs import differences, done_identity
from transforms.incremental import matching_table_files
from transforms.inputs import (
    CARRIED,
    DEFAULT_COLUMNS,
    Columns,
    input_key,
    keep_first,
    read_input_rows,
    request_or_failure,
)
from transforms.records import VideoRequest
from transforms.tables import utc_now, write_summary

log = logging.getLogger(__name__)

# Counts that are not sums over chunks: this launch's, or the plan's.
_NOT_SUMMED = {"chunks_total", "chunks_resumed", "videos_skipped_done"}


class PlanMismatchError(ValueError):
    """The prefix holds a chunked run made with other parameters; the message names them."""


@dataclass(frozen=True)
class Chunking:
    """What decides a run's chunks: equal ones resume each other's chunks."""

    input: str
    chunk_videos: int
    skip_done: tuple[str, ...]
    split_sec: float
    metadata: dict[str, Any]
    columns: Columns = DEFAULT_COLUMNS

    def identity(self) -> dict[str, Any]:
        """The plan's parameters: the input and its cut (with the manifest's columns when not the
        default ones), and what makes a run's videos done for it (storage.runs.done_identity)."""
        columns = {} if self.columns == DEFAULT_COLUMNS else {"columns": dataclasses.asdict(self.columns)}
        return {"input": self.input, "chunk_videos": self.chunk_videos, "skip_done": list(self.skip_done),
                "split_sec": self.split_sec, **columns, **done_identity(self.metadata, self.metadata)}


def done_ids(chunking: Chunking) -> set[str]:
    """The video_ids --skip_done's earlier runs finished with interchangeable features."""
    import pyarrow.parquet as pq

    from storage.objects import open_object

    ids: set[str] = set()
    for path in matching_table_files(list(chunking.skip_done), "videos", chunking.metadata):
        with open_object(path) as f, pq.ParquetFile(f) as parquet:
            ids.update(parquet.read(columns=["video_id"]).column(0).to_pylist())
    return ids


def cut(rows: Iterable[dict[str, Any]], chunk_videos: int, done: set[str]) -> tuple[list[list[dict]], int]:
    """Rows -> chunks of at most `chunk_videos` video ids, in id order; also how many videos were done.

    The same rows give the same chunks whatever order they come in (a listing's, a manifest's).
    """
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(input_key(row), []).append(row)
    skipped = 0
    for key in done.intersection(by_id):
        left, was_done = _left_when_done(key, by_id[key])
        skipped += was_done
        if left:
            by_id[key] = left
        else:
            del by_id[key]
    ids = sorted(by_id)
    return [[row for key in ids[i:i + chunk_videos] for row in by_id[key]]
            for i in range(0, len(ids), chunk_videos)], skipped


def _left_when_done(key: str, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """What a done video's rows still owe, as a run's graph would give it: the failures of unusable rows
    and of rows asking for something else under the same id; and whether a request of it was done."""
    outcomes = [(row, request_or_failure(row)) for row in rows]
    requests = [outcome for _, outcome in outcomes if isinstance(outcome, VideoRequest)]
    left = [row for row, outcome in outcomes if not isinstance(outcome, VideoRequest)]
    if not requests:
        return left, False
    _, _, conflicts = keep_first(key, requests)
    return left + [{CARRIED: failure} for failure in conflicts], True


def write_plan(output_prefix: str, chunking: Chunking) -> dict[str, Any]:
    """Reads the input, cuts it, writes every chunk's input and then the plan (the plan last: a plan
    that exists names chunks whose inputs all exist). Returns the plan."""
    chunks, skipped = cut(read_input_rows(chunking.input, chunking.columns), chunking.chunk_videos, done_ids(chunking))
    entries = []
    for index, rows in enumerate(chunks):
        name = chunk_name(index)
        data = "".join(json.dumps(row, default=str, sort_keys=True) + "\n" for row in rows).encode("utf-8")
        write_object(chunk_input(output_prefix, name), data, "application/jsonl")
        entries.append({"name": name, "videos": len({input_key(row) for row in rows}), "rows": len(rows)})
    plan = {"identity": chunking.identity(), "chunks": entries, "videos_skipped_done": skipped, "created": utc_now()}
    write_object(plan_path(output_prefix), json.dumps(plan, indent=1, sort_keys=True).encode("utf-8"),
                 "application/json")
    log.info("planned %d chunks of at most %d videos under %s (%d done before, skipped)",
             len(entries), chunking.chunk_videos, output_prefix, skipped)
    return plan


def chunk_input(output_prefix: str, name: str) -> str:
    return f"{chunk_prefix(output_prefix, name)}/{CHUNK_INPUT_NAME}"


def existing_plan(output_prefix: str, chunking: Chunking, overwrite: bool) -> dict[str, Any] | None:
    """The plan of a run to resume under the prefix, or None (no plan, or --overwrite).

    Raises:
        PlanMismatchError: a plan made with other parameters.
    """
    plan = read_json(plan_path(output_prefix))
    if plan is None or overwrite:
        return None
    wanted, found = chunking.identity(), plan["identity"]
    if found != wanted:
        raise PlanMismatchError(
            f"{output_prefix} holds a run in chunks made with other parameters ({differences(found, wanted)}): "
            "run the same command to resume it, or pass --overwrite to start over")
    return plan


class ChunksFailedError(RuntimeError):
    """Some chunks' jobs failed; the others are complete and kept. The message names them."""


@dataclass
class _Attempt:
    """A chunk's graph that is running or done: its entry, where it writes, the runner's result, when it
    started, its lease."""

    entry: dict[str, Any]
    prefix: str
    result: Any
    started: str
    watch: Stopwatch
    lease: Lease | None


STEPS_HELP = "all, plan, aggregate, or a chunk's name (NNNNN)"


@dataclass
class ChunkedLaunch:
    """One launch of a run in chunks: what each chunk's graph needs, and how the summary is made.

    `run` does every step; a scheduler may do them apart (the Airflow DAG maps over chunks):
    `plan`, then `run_chunk` once per chunk (any order, side by side), then `aggregate`.
    """

    options: PipelineOptions
    output_prefix: str
    tables: tuple[str, ...]
    build: Callable[..., Any]  # build(p, progress, input_spec, chunk_prefix)
    metadata: dict[str, Any]
    extra: Callable[[dict[str, int], str], dict[str, Any]]
    parallel: int = 1  # chunks' jobs at once on a remote runner (locally one at a time)
    poll_sec: float = 30.0  # how often running remote jobs are looked at
    job_state: Callable | None = None  # a Dataflow job's state, to tell a stale lease (runner.dataflow_job_state)
    stale: tuple[str, ...] = ()  # tables the job writes only with other flags: an earlier run's are cleared too

    def run(self, chunking: Chunking, overwrite: bool) -> tuple[dict[str, Any], str]:
        """Plans (or resumes) and runs every chunk not yet complete, then writes the aggregate summary.

        The caller holds the prefix's lease; each chunk's attempt holds its chunk's. Locally the chunks
        run one after another and the first failure stops the launch (it is this machine's or this
        code's); on Dataflow each chunk is a job (named JOB-cNNNNN), at most `parallel` at once, and a
        failed job costs its chunk only.

        Raises:
            PlanMismatchError: the prefix holds a chunked run made with other parameters.
            ChunksFailedError: some chunks' jobs failed (the others are kept; the same command retries them).
        """
        watch, started = Stopwatch(), utc_now()
        plan = self.plan(chunking, overwrite)
        names = [entry["name"] for entry in plan["chunks"]]
        committed = committed_attempts(self.output_prefix)  # one listing for every chunk
        todo = [entry for entry in plan["chunks"] if entry["name"] not in committed]
        if len(todo) < len(names):
            log.info("resuming %s: %d of %d chunks are complete and kept", self.output_prefix,
                     len(names) - len(todo), len(names))
        failed = self._run_all(todo, len(names))
        if failed:
            raise ChunksFailedError(
                f"{len(failed)} of {len(names)} chunks failed ({', '.join(failed)}); the others are complete under "
                f"{self.output_prefix}: run the same command again to run only the failed ones")
        return self._aggregate(plan, len(names) - len(todo), started, watch)

    def plan(self, chunking: Chunking, overwrite: bool) -> dict[str, Any]:
        """The plan to run: the prefix's own when its parameters match (a resume), else a new one.

        The caller holds the prefix's lease. A stale top-level summary is removed while chunks are to do.
        """
        plan = existing_plan(self.output_prefix, chunking, overwrite)
        if plan is None:
            clear_previous_run(self.output_prefix, self.tables, self.stale)
            plan = write_plan(self.output_prefix, chunking)
        committed = committed_attempts(self.output_prefix)
        if read_summary(self.output_prefix) is not None and not all(e["name"] in committed for e in plan["chunks"]):
            clear_previous_run(self.output_prefix, ())  # it would say complete
        return plan

    def run_chunk(self, chunking: Chunking, name: str) -> dict[str, Any] | None:
        """One chunk of the prefix's plan, unless complete; its summary (None: a job submitted, not waited for).

        Raises:
            PlanMismatchError: no plan under the prefix, or one made with other parameters.
            ChunksFailedError: the chunk's job failed.
        """
        entry = self._entry(chunking, name)
        if committed_attempt(self.output_prefix, name) is not None:
            log.info("chunk %s of %s is complete: kept", name, self.output_prefix)
            return chunk_summary(self.output_prefix, name)
        wait = runs_locally(self.options) or self.options.view_as(IOOptions).wait
        attempt = self._start(entry, hand_over=not wait)
        if not wait:
            return None  # the job writes its attempt's summary when its tables are final; it holds the chunk's lease
        if not self._finish(attempt):
            raise ChunksFailedError(f"chunk {name} of {self.output_prefix} failed: its job did not complete")
        return chunk_summary(self.output_prefix, name)

    def aggregate(self, chunking: Chunking) -> tuple[dict[str, Any], str]:
        """The top-level summary of a plan whose chunks are all complete.

        Raises:
            PlanMismatchError: no plan under the prefix, or one made with other parameters.
            ChunksFailedError: chunks that are not complete, named.
        """
        watch, started = Stopwatch(), utc_now()
        plan = self._plan_or_refuse(chunking)
        committed = committed_attempts(self.output_prefix)
        missing = [e["name"] for e in plan["chunks"] if e["name"] not in committed]
        if missing:
            raise ChunksFailedError(f"{len(missing)} of {len(plan['chunks'])} chunks of {self.output_prefix} are not "
                                    f"complete ({', '.join(missing)}): run them first")
        return self._aggregate(plan, len(plan["chunks"]), started, watch)

    def _plan_or_refuse(self, chunking: Chunking) -> dict[str, Any]:
        plan = existing_plan(self.output_prefix, chunking, overwrite=False)
        if plan is None:
            raise PlanMismatchError(f"{self.output_prefix} has no plan of a run in chunks: run the plan step first "
                                    "(--chunk_step plan), with the same parameters")
        return plan

    def _entry(self, chunking: Chunking, name: str) -> dict[str, Any]:
        plan = self._plan_or_refuse(chunking)
        entry = next((e for e in plan["chunks"] if e["name"] == name), None)
        if entry is None:
            raise PlanMismatchError(f"the plan under {self.output_prefix} has no chunk {name!r} "
                                    f"(it has {len(plan['chunks'])}: {chunk_name(0)} to {chunk_name(len(plan['chunks']) - 1)})")
        return entry

    def _run_all(self, todo: list[dict[str, Any]], total: int) -> list[str]:
        """Runs the chunks, at most `parallel` at once on a remote runner; returns the names of those that failed."""
        parallel = 1 if runs_locally(self.options) else self.parallel
        queue, running, failed = list(todo), [], []
        while queue or running:
            while queue and len(running) < parallel:
                entry = queue.pop(0)
                number = total - len(queue)  # chunks before this one are complete, running or queued before
                log.info("chunk %s (%d of %d): %d videos", entry["name"], number, total, entry["videos"])
                running.append(self._start(entry))
            finished = self._wait_any(running)
            for attempt in finished:
                running.remove(attempt)
                if not self._finish(attempt):
                    failed.append(attempt.entry["name"])
        return sorted(failed)

    def _start(self, entry: dict[str, Any], hand_over: bool = False) -> _Attempt:
        """Takes the chunk's lease and starts its graph in a new attempt's directory (locally: runs it to
        the end); `hand_over`: a submitted Dataflow job holds the chunk's lease from then on."""
        name = entry["name"]
        lease = acquire(chunk_prefix(self.output_prefix, name), self.job_state, lease_settle_sec(self.options))
        prefix = attempt_prefix(self.output_prefix, name, new_attempt())  # no earlier attempt's file is there
        try:
            google = self.options.view_as(GoogleCloudOptions)
            base_name = google.job_name
            if base_name and not runs_locally(self.options) and f"-c{name}" not in base_name:
                google.job_name = f"{base_name}-c{name}"  # a fixed name per chunk (a scheduler may have named it)
            watch, started = Stopwatch(), utc_now()
            try:
                result, handed = run_graph(
                    self.options,
                    lambda p, progress: self.build(p, progress, chunk_input(self.output_prefix, name), prefix),
                    lease if hand_over else None, show_progress=True, expected=lambda: entry["videos"], wait=False)
            finally:
                google.job_name = base_name
        except BaseException:
            release(lease)
            raise
        return _Attempt(entry, prefix, result, started, watch, None if hand_over and handed is not None else lease)

    def _wait_any(self, running: list[_Attempt]) -> list[_Attempt]:
        """The attempts that are done (a remote job in a terminal state), waiting until there is one."""
        while True:
            done = [a for a in running if PipelineState.is_terminal(a.result.state)]
            if done or not running:
                return done
            time.sleep(self.poll_sec)

    def _finish(self, attempt: _Attempt) -> bool:
        """Completes a chunk's summary with the launcher's part and gives its lease back; False when its
        job did not succeed."""
        name, prefix = attempt.entry["name"], attempt.prefix
        try:
            state = attempt.result.state
            if state != PipelineState.DONE or read_summary(prefix) is None:
                log.error("chunk %s failed: its job ended %s%s", name, state,
                          "" if state != PipelineState.DONE else " without writing its summary")
                return False
            summary = finish_summary(prefix, self.tables, self.metadata, self.extra, attempt.result, attempt.started,
                                     attempt.watch)
            write_summary(prefix, {**summary, "input": chunk_input(self.output_prefix, name)})
            return True
        finally:
            if attempt.lease is not None:
                release(attempt.lease)

    def _aggregate(self, plan: dict[str, Any], resumed: int, started: str, watch: Stopwatch) -> tuple[dict, str]:
        """The top-level summary: every chunk's counts summed, with the chunks' own counts."""
        committed = committed_attempts(self.output_prefix)  # one listing, then a summary read per chunk
        summaries = [read_summary(attempt_prefix(self.output_prefix, e["name"], committed[e["name"]]))
                     if e["name"] in committed else None for e in plan["chunks"]]
        missing = [e["name"] for e, s in zip(plan["chunks"], summaries, strict=True) if s is None]
        if missing:
            raise RuntimeError(f"chunks {missing} of {self.output_prefix} have no summary after their jobs ended")
        counts = _sum(s.get("counts", {}) for s in summaries)
        counts.update({"videos_skipped_done": plan["videos_skipped_done"],
                       "chunks_total": len(summaries), "chunks_resumed": resumed})
        extras = self.extra({}, self.output_prefix)
        summary = {
            **self.metadata, "status": "complete", "output_prefix": self.output_prefix,
            "started": started, "finished": utc_now(), "wall_seconds": round(watch.seconds, 2),
            "rows": _sum(s.get("rows", {}) for s in summaries),
            "counters": _sum(s.get("counters", {}) for s in summaries),
            **{k: v for k, v in extras.items() if k != "counts"},
            "counts": counts,
            "tables": {t: any_layout_glob(self.output_prefix, t) for t in self.tables},
            "files": {t: table_files(self.output_prefix, t) for t in self.tables},
        }
        path = write_summary(self.output_prefix, summary)
        self._drop_other_attempts()
        return summary, path

    def _drop_other_attempts(self) -> None:
        """Deletes every attempt but each chunk's committed one (a dead attempt's leftovers, a zombie's
        late files), so that the one glob reads exactly the run; readers never saw them anyway."""
        paths = chunk_paths(self.output_prefix)
        committed = committed_of(paths)
        others = {(found[0], found[1]) for found in map(attempt_of, paths)
                  if found and committed.get(found[0]) != found[1]}
        for name, attempt in sorted(others):
            prefix = attempt_prefix(self.output_prefix, name, attempt)
            clear_previous_run(prefix, self.tables, self.stale)
            if is_local(prefix):
                shutil.rmtree(local_path(prefix), ignore_errors=True)


def _sum(dicts: Iterable[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in _NOT_SUMMED:
                total[key] = total.get(key, 0) + value
    return total
