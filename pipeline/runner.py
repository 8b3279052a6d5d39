"""What every job's launcher does around its graph: pick the runner, clear old output, summarise.

The local runner is chosen explicitly (Beam's FnApiRunner, which honours
--direct_num_workers and --direct_running_mode): Beam's DirectRunner would first
try to fetch the Prism runner, which fails offline before it falls back.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

from pipeline.options import IOOptions, ModelOptions, add_lease_argument, lease_settle_sec, runs_locally
from pipeline.progress import ProgressDisplay
from s3d.quiet import add_log_level_arguments
from storage.layout import (
    CHUNKS_DIR,
    PLAN_NAME,
    SUMMARY_NAME,
    any_layout_glob,
    chunk_paths,
    read_summary,
    summary_path,
)
from storage.lease import Lease, acquire, hand_to_job, release
from storage.paths import is_local, local_path
from transforms.progress import ProgressLog
from transforms.tables import utc_now, write_summary

log = logging.getLogger(__name__)

DELETE_BATCH = 1000  # paths per FileSystems.delete call (GCS batches them by 100, S3 by 1000)


def create_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A Pipeline on the runner the options name; locally, the FnApiRunner."""
    if not runs_locally(options):
        return beam.Pipeline(options=options)
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # The provision info carries the options to worker subprocesses (multi_processing mode).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision), options=options)


def clear_previous_run(output_prefix: str, tables: tuple[str, ...], stale: tuple[str, ...] = ()) -> int:
    """Deletes an earlier run's summary, tables and leftover temp files (of a run that died) under the
    prefix, in either layout (a run in chunks: its plan and every chunk), so two runs never mix.
    What marks a run or a chunk complete goes first: a half-cleared prefix never looks complete.
    `stale`: tables the job writes only with other flags, an earlier run's cleared too.
    Returns the number of paths deleted."""
    tables = tuple(dict.fromkeys(tables + stale))
    base = output_prefix.rstrip("/")
    chunks = f"{base}/{CHUNKS_DIR}"
    under_chunks = chunk_paths(output_prefix)  # a run in chunks: everything there goes
    markers = [summary_path(output_prefix), f"{chunks}/{PLAN_NAME}"]
    markers += sorted(p for p in under_chunks if p.endswith(f"/{SUMMARY_NAME}"))
    patterns = [f"{base}/{t}/beam-temp-*" for t in tables] + [f"{base}/{t}/beam-temp-*/*" for t in tables]
    patterns += [f"{base}/{t}/{t}-*.parquet" for t in tables]
    paths = {m.path for result in FileSystems.match(patterns) for m in result.metadata_list}
    paths = (paths | set(under_chunks)) - set(markers)
    deleted = 0
    for marker in markers:  # first, one by one: a half-cleared prefix never looks complete
        if FileSystems.exists(marker):
            FileSystems.delete([marker])
            deleted += 1
    deleted += _delete_all(sorted(paths, key=len, reverse=True))  # files before their temp directories
    if is_local(output_prefix):  # local disk has real directories; object stores do not
        for leftover in glob.glob(os.path.join(base, "*", "beam-temp-*")) + glob.glob(os.path.join(chunks, "*")):
            if os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
                deleted += 1
        with contextlib.suppress(OSError):  # absent, or not empty (files of another kind: left alone)
            os.rmdir(local_path(chunks))
    if deleted:
        log.info("replaced an earlier run under %s (%d paths deleted)", output_prefix, deleted)
    return deleted


def _delete_all(paths: list[str]) -> int:
    """Deletes the paths, a batch per call (stores delete a batch together); returns how many went."""
    deleted = 0
    for start in range(0, len(paths), DELETE_BATCH):
        batch = paths[start:start + DELETE_BATCH]
        try:
            FileSystems.delete(batch)
            deleted += len(batch)
        except BeamIOError as e:  # some were gone already (another cleaner, a store's eventual listing)
            still_there = [p for p in e.exception_details if FileSystems.exists(p)]
            if still_there:
                raise
            deleted += len(batch) - len(e.exception_details)
    return deleted


def _job_id(result) -> str | None:
    """A submitted remote job's id (None locally, or for a staged template)."""
    job_id = getattr(result, "job_id", None)
    try:
        return job_id() if callable(job_id) and getattr(result, "has_job", False) else None
    except Exception:  # noqa: BLE001 - no job: nothing to hand the lease to
        return None


def _project_region(options: PipelineOptions) -> tuple[str, str]:
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    gcp = options.view_as(GoogleCloudOptions)
    return gcp.project or "", gcp.region or ""


def dataflow_job_state(options: PipelineOptions):
    """A lookup of a Dataflow job's state through Dataflow's API (None when it cannot be reached)."""

    def state(project: str, region: str, job_id: str) -> str | None:
        try:
            from apache_beam.runners.dataflow.internal import apiclient

            job = apiclient.DataflowApplicationClient(options).get_job(job_id)
            return str(job.currentState).rsplit(".", 1)[-1]
        except Exception as e:  # noqa: BLE001 - offline, no credentials: the holder cannot be checked
            log.info("cannot look up Dataflow job %s: %s", job_id, e)
            return None

    return state


def counters(result) -> dict[str, int]:
    """The job's counters summed over steps (committed where the runner has them)."""
    totals: dict[str, int] = defaultdict(int)
    for counter in result.metrics().query()["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += int(value or 0)
    return dict(totals)


def distributions(result) -> dict[str, dict[str, float]]:
    """The job's distributions merged over steps and namespaces, as counters are summed: a name two steps
    report (the video and the text tower's model load, with --captions) counts both."""
    merged: dict[str, list[float]] = {}  # name -> [count, sum, max]
    for dist in result.metrics().query()["distributions"]:
        value = dist.committed or dist.attempted
        if value is not None and value.count:
            count, total, top = merged.get(dist.key.metric.name, (0, 0, value.max))
            merged[dist.key.metric.name] = [count + value.count, total + value.sum, max(top, value.max)]
    return {name: {"count": count, "mean": total / count, "max": top} for name, (count, total, top) in merged.items()}


class Stopwatch:
    def __init__(self):
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start


BEAM_EPILOG = (
    "Any Apache Beam option is accepted as well, e.g. --runner DataflowRunner, --direct_num_workers 2, "
    "--direct_running_mode multi_processing. Without --runner the job runs locally."
)


def parse_job_args(
    argv: list[str],
    prog: str,
    description: str,
    io_help: tuple[str, str] | None,
    option_classes: list[tuple[type[PipelineOptions], str | None]],
) -> PipelineOptions:
    """Parses with a help text of this job's own options (Beam's are accepted and passed on).

    `io_help`: the help of --input and --output_prefix; None for a job without them (the index),
    whose help then has only the console's flags of IOOptions.
    """
    # `--option=` with nothing after it is the same as leaving the option out: schedulers and
    # templates (Airflow, Flex Templates) pass every parameter, empty ones included.
    argv = [a for a in argv if not (a.startswith("--") and a.endswith("=") and a.count("=") == 1)]
    job_parser(prog, description, io_help, option_classes).parse_known_args(argv)  # --help and type errors
    options = PipelineOptions(argv)
    # The launcher reads and writes the stores before any pipeline exists (input checks, clearing a
    # prefix, the summary): Beam's filesystems take their settings (--s3_endpoint_url, ...) from here.
    FileSystems.set_options(options)
    return options


def job_parser(prog: str, description: str, io_help: tuple[str, str] | None,
               option_classes: list[tuple[type[PipelineOptions], str | None]]) -> argparse.ArgumentParser:
    """The help and type checks of a job's own options (parse_job_args; the Flex Template's metadata)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=BEAM_EPILOG)
    if io_help is not None:
        IOOptions._add_argparse_args(parser, *io_help)
    else:
        add_lease_argument(parser.add_argument_group("output"))
        add_log_level_arguments(parser.add_argument_group("console"))
    for cls, group in option_classes:
        cls._add_argparse_args(parser.add_argument_group(group) if group else parser)
    return parser


def check_worker_packaging(options: PipelineOptions) -> None:
    """Remote workers need this package: shipped from setup.py or preinstalled in a worker image.

    Without either, a Dataflow job starts and every worker fails importing `transforms`.
    """
    if runs_locally(options):
        return
    from apache_beam.options.pipeline_options import SetupOptions, WorkerOptions

    setup = options.view_as(SetupOptions)
    image = options.view_as(WorkerOptions).sdk_container_image
    gpus = options.view_as(ModelOptions).gpu_count()
    if gpus and not image:
        # The stock Beam image installs setup.py's `tensorflow`, which on Linux carries no CUDA
        # libraries: the job would pay for idle GPUs, with a warning per worker.
        raise ValueError(
            f"GPUs are asked for ({gpus} per worker) but no worker image is given: Beam's stock image with "
            "--setup_file has no CUDA libraries, so TensorFlow would run on the CPU while the GPUs idle. Build "
            "deploy/dataflow/Dockerfile (TensorFlow with CUDA) and pass --sdk_container_image IMAGE "
            "--sdk_location container"
        )
    if setup.setup_file or setup.extra_packages or image:
        return
    raise ValueError(
        "remote workers need this package: pass --setup_file ./setup.py (workers install it at start-up) or "
        "--sdk_container_image IMAGE with it preinstalled (deploy/dataflow/Dockerfile)"
    )


def announce(summary: dict[str, Any], path: str, options: PipelineOptions, print_local: Callable) -> None:
    """Says how a launch ended: dry run, submitted, or (local runs) the job's own summary printout."""
    if summary["status"] == "dry_run":
        print("dry run: the job was built and not submitted; no output was written", file=sys.stderr)
    elif summary["status"] == "submitted":
        print(f"submitted; the job writes {path} when it completes", file=sys.stderr)
    elif runs_locally(options):
        print_local(summary, path)


@contextlib.contextmanager
def _progress(show: bool, expected: int | None = None) -> Iterator[ProgressLog]:
    """A ProgressLog the steps write to, shown live while the block runs (or a silent one);
    `expected`, the launcher's count of the inputs, is there before the first draw."""
    if not show:
        yield ProgressLog()
        return
    directory = tempfile.mkdtemp(prefix="s3d-progress-")
    try:
        log_ = ProgressLog(directory)
        if expected is not None:
            log_.add("expected", expected)
        with ProgressDisplay(directory):
            yield log_
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def launch(
    options: PipelineOptions,
    output_prefix: str,
    tables: tuple[str, ...],
    build: Callable[[beam.Pipeline, ProgressLog], Any],
    metadata: dict[str, Any],
    extra: Callable[[dict[str, int], str], dict[str, Any]],
    show_progress: bool = False,
    expected: Callable[[], int | None] | None = None,
    stale: tuple[str, ...] = (),
) -> tuple[dict[str, Any], str]:
    """Clears the prefix, runs the graph `build` adds, and writes the run summary last.

    The earlier run's `tables` go, and its `stale` ones: tables the job writes only with other flags.

    `build(p, progress)` adds the graph; its steps report to `progress`, which the launcher
    shows live on local runs when `show_progress`, with `expected()` (the inputs counted at
    launch) as the total until the graph has counted the videos to do. `extra(counters, prefix)`
    adds the job's own entries (counts, failure reasons) to the summary. Returns the summary and its path.
    """
    watch, started = Stopwatch(), utc_now()
    if options.view_as(TestOptions).dry_run:
        return dry_run(options, build, metadata), ""
    # The prefix's lease first (never two live runs on one prefix), then the earlier run's files go.
    lease = acquire(output_prefix, None if runs_locally(options) else dataflow_job_state(options),
                    lease_settle_sec(options))
    try:
        clear_previous_run(output_prefix, tables, stale)
        result, lease = run_graph(options, build, lease, show_progress, expected)
        if result is None:
            lease = None  # kept by the job (or by a staged template: its launch replaces it)
            return {**metadata, "status": "submitted"}, summary_path(output_prefix)
    finally:
        if lease is not None:
            release(lease)
    summary = finish_summary(output_prefix, tables, metadata, extra, result, started, watch)
    return summary, write_summary(output_prefix, summary)


def dry_run(options: PipelineOptions, build: Callable[[beam.Pipeline, ProgressLog], Any],
            metadata: dict[str, Any]) -> dict[str, Any]:
    """Builds the job (on Dataflow: the job request, not sent); touches no output.

    Beam's local runner does not honour TestOptions.dry_run (it would run the job), so locally the
    graph is built and translated, and not run.
    """
    p = create_pipeline(options)
    build(p, ProgressLog())
    if runs_locally(options):
        p.to_runner_api()
    else:
        p.run()
    return {**metadata, "status": "dry_run"}


def run_graph(options: PipelineOptions, build: Callable[[beam.Pipeline, ProgressLog], Any], lease: Lease | None,
              show_progress: bool = False, expected: Callable[[], int | None] | None = None, wait: bool = True):
    """Runs the graph `build` adds; returns (result, lease), the result None when a remote job was submitted
    and not waited for (--wait=false, a staged template). A submitted Dataflow job gets `lease` (None: the
    caller keeps holding its own). `wait=False` returns the result once submitted (a local job has ended)."""
    p = create_pipeline(options)
    show = show_progress and runs_locally(options)
    with _progress(show, expected() if show and expected is not None else None) as progress:
        build(p, progress)
        result = p.run()  # the local runner returns when the job is done
    job_id = _job_id(result)
    if job_id is not None and lease is not None:  # the job holds the prefix now, whatever becomes of this launcher
        lease = hand_to_job(lease, *_project_region(options), job_id)
    if not wait:
        return result, lease
    if not runs_locally(options) and (not options.view_as(IOOptions).wait or not getattr(result, "has_job", True)):
        # A Flex Template launch (or --template_location) stages the job and has no job to wait
        # for: the result's has_job is False and waiting or querying metrics would raise.
        return None, lease
    result.wait_until_finish()
    return result, lease


def finish_summary(output_prefix: str, tables: tuple[str, ...], metadata: dict[str, Any],
                   extra: Callable[[dict[str, int], str], dict[str, Any]], result, started: str,
                   watch: Stopwatch) -> dict[str, Any]:
    """The summary the graph wrote when its tables were final, with what only the launcher knows."""
    counts = counters(result)
    summary = read_summary(output_prefix) or {**metadata, "status": "complete", "output_prefix": output_prefix}
    extras = extra(counts, output_prefix)
    summary.update({
        "started": started,
        "finished": utc_now(),
        "wall_seconds": round(watch.seconds, 2),
        "counters": counts,
        "distributions": distributions(result),
        "tables": {t: any_layout_glob(output_prefix, t) for t in tables},
        **{k: v for k, v in extras.items() if k != "counts"},
    })
    summary["counts"] = {**summary.get("counts", {}), **extras.get("counts", {})}
    return summary
