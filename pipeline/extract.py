"""The extraction job: videos -> per-clip and per-video S3D features in Parquet, and failure records.

    python -m pipeline.extract --input 'videos/*.mp4' --output_prefix out/run1 [--model DIR] [options]

Read the input -> split long videos -> Reshuffle -> decode into clips -> batch -> inference -> rows -> write.
Every input video ends up in exactly one of `videos` or `failures`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from decoder import DecodeOptions
from pipeline.chunks import ChunkedLaunch, Chunking, ChunksFailedError, PlanMismatchError
from pipeline.console import configure_logging
from pipeline.options import (
    EXTRACT_INPUT_HELP,
    EXTRACT_OUTPUT_HELP,
    ExtractOptions,
    IOOptions,
    ModelOptions,
    lease_settle_sec,
    plan_metadata,
    runs_locally,
)
from pipeline.preflight import check_model_handle
from pipeline.report import failure_reasons, print_summary
from pipeline.runner import (
    announce,
    check_worker_packaging,
    dataflow_job_state,
    launch,
    parse_job_args,
)
from s3d.export import package_version
from s3d.precision import PrecisionPlan
from storage.layout import ATTEMPTS_DIR, any_layout_glob, chunk_prefix, summary_path, table_files
from storage.lease import LeaseHeldError, acquire, release
from storage.objects import object_exists
from storage.runs import split_list
from transforms.assemble import AssembleVideos
from transforms.captions import CAPTION_FILES, CAPTION_TABLES, AlignCaptions
from transforms.decode import DecodeClips
from transforms.incremental import ReadFailuresAsInput, SkipDone, matching_table_files
from transforms.inference import Embed, S3DModelHandler
from transforms.inputs import ReadVideoRequests, check_input, count_inputs
from transforms.progress import CountToDo, ProgressLog
from transforms.records import python_version
from transforms.split import SplitLongVideos
from transforms.tables import WriteTables

TABLES = ("clips", "videos", "failures")
CAPTIONS_BATCH = 256  # captions a batch of the text tower (whole shards)

log = logging.getLogger("pipeline.extract")


def run_metadata(decode: DecodeOptions, model: ModelOptions, plan: PrecisionPlan,
                 opts: ExtractOptions) -> dict[str, Any]:
    """What produced the features: written into every file and the run summary."""
    captions = opts.captions_settings()
    return {
        "job": "extract",
        "model": model.model,
        "preprocessing": decode.preprocessing(),
        **plan_metadata(plan),
        **({"captions": captions} if captions else {}),  # absent without: earlier runs' files stay alike
        "python": python_version(),  # the launcher's: workers must run the same (transforms.records)
        "package_version": package_version(),
    }


def build_pipeline(
    p: beam.Pipeline, input_spec: str | None, output_prefix: str, opts: ExtractOptions, model: ModelOptions,
    decode: DecodeOptions, progress: ProgressLog | None = None, plan: PrecisionPlan | None = None,
    skip_done: list[str] | None = None,
) -> dict[str, beam.PCollection]:
    """Adds the extraction graph to `p` (tests pass a TestPipeline); returns the rows of each table.

    Reads `input_spec` (None: the failures of --retry_failures) and writes under `output_prefix`.
    The steps report videos, clips and failures to `progress` (the launcher's live line).
    `plan` is the launch's ModelOptions.precision_plan (computed here when not given). `skip_done`,
    the earlier runs whose videos are done, defaults to --skip_done's (a chunk's input has them out already).
    """
    progress = progress or ProgressLog()
    plan = plan or model.precision_plan()
    metadata = run_metadata(decode, model, plan, opts)
    handler = model.handler("video", progress, plan)
    retry = None
    if opts.retry_failures:
        retry = ReadFailuresAsInput(opts.retry_failures, split_list(opts.retry_stages), split_list(opts.retry_errors))
    inputs = p | "ReadInput" >> ReadVideoRequests(None if retry else input_spec, retry=retry, columns=opts.columns())
    skip_done = split_list(opts.skip_done) if skip_done is None else skip_done
    done_files = matching_table_files(skip_done, "videos", metadata)
    todo = inputs["requests"] | "SkipDone" >> SkipDone(done_files)
    _ = todo | "CountToDo" >> CountToDo(progress)
    decoded = (
        todo
        | "SplitLongVideos" >> SplitLongVideos(decode, opts.split_sec)
        | "Reshuffle" >> beam.Reshuffle()  # spread decoding (videos and parts of long ones) over workers
        | "DecodeClips" >> DecodeClips(decode, opts.decode_prefetch, opts.io_retries,
                                       opts.io_retry_backoff_sec, progress)
    )
    clips = decoded["clips"]
    embed = Embed(handler)
    if model.inference_accelerator:
        # The GPU hint goes on the inference step only, and a fusion break comes before it:
        # Dataflow fuses consecutive steps into one stage that runs on a worker meeting the
        # union of their hints, so without the break decoding would run on the GPU workers
        # too. The cost is a shuffle of the uint8 clips (about 4.8 MB each at 32x224x224).
        clips = clips | "ToGpuWorkers" >> beam.Reshuffle()
        embed = embed.with_resource_hints(accelerator=model.inference_accelerator)
    embedded = clips | "EmbedClips" >> embed
    assembled = {
        "clip_rows": embedded["rows"], "info": decoded["info"], "inference_failures": embedded["failures"],
    } | "AssembleVideos" >> AssembleVideos()
    failures = (inputs["failures"], decoded["failures"], assembled["failures"]) | "AllFailures" >> beam.Flatten()
    _ = failures | "ReportFailures" >> beam.Map(lambda row: progress.add("failed"))
    tables = {"clips": embedded["rows"], "videos": assembled["videos"], "failures": failures}
    counts = {"videos_ok": "videos", "videos_failed": "failures", "clips": "clips"}
    if opts.captions:
        # The text tower, float32 and with no accelerator hint: on GPU jobs it runs on the CPU workers.
        text_handler = S3DModelHandler(model.model, "captions", max_batch_size=CAPTIONS_BATCH)
        narrated = {"requests": todo, "clip_rows": embedded["rows"], "videos": assembled["videos"]} | \
            "Captions" >> AlignCaptions(opts.captions, text_handler, opts.align_window_sec)
        tables.update(videos=narrated["videos"], captions=narrated["captions"], captions_failures=narrated["failures"])
        counts.update(captions="captions", captions_failed="captions_failures")
    _ = tables | "WriteTables" >> WriteTables(output_prefix, metadata, counts)
    return tables


def tables_of(opts: ExtractOptions) -> tuple[str, ...]:
    """The tables a run writes: with --captions, the captions tables too."""
    return TABLES + CAPTION_TABLES if opts.captions else TABLES


# Every table a run may write: an earlier run's are cleared from the prefix whatever this run writes
# (a run without --captions leaves no captions of an earlier run beside its own tables).
ALL_TABLES = TABLES + CAPTION_TABLES


# The job's command line: prog, description, --input/--output_prefix help, option classes (also
# what deploy/dataflow/make_metadata.py turns into the Flex Template's parameters).
JOB_ARGS = (
    "python -m pipeline.extract",
    "Extract S3D MIL-NCE features (mixed_5c 1024-d, video_embedding 512-d) from videos "
    "into Parquet tables: clips, videos, failures.",
    (EXTRACT_INPUT_HELP, EXTRACT_OUTPUT_HELP),
    [(ExtractOptions, None), (ModelOptions, "model")],
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_job_args(argv, *JOB_ARGS)
    configure_logging(options.view_as(IOOptions).log_level)  # before TensorFlow loads
    FileSystems.set_options(options)  # what the launcher reads (the input, a plan) reads as the job does: http(s) flags
    io, opts, model = options.view_as(IOOptions), options.view_as(ExtractOptions), options.view_as(ModelOptions)
    try:
        decode = _check_launch(options, io, opts, model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = model.precision_plan()
    if plan.reason:
        log.warning("%s", plan.reason)
    metadata, extra = run_metadata(decode, model, plan, opts), summary_extra(io.input)
    try:
        if opts.chunk_videos and not options.view_as(TestOptions).dry_run:
            announced = _run_in_chunks(options, io, opts, model, decode, plan, metadata, extra)
            if announced is None:
                return 0
            summary, path = announced
        else:
            summary, path = launch(
                options, io.output_prefix, tables_of(opts),
                lambda p, progress: build_pipeline(p, io.input if not opts.retry_failures else None, io.output_prefix,
                                                   opts, model, decode, progress, plan),
                metadata, extra, show_progress=True,
                expected=None if opts.retry_failures else lambda: count_inputs(io.input), stale=ALL_TABLES)
    except (LeaseHeldError, PlanMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ChunksFailedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    announce(summary, path, options, print_summary)
    return 0


def _check_launch(options, io: IOOptions, opts: ExtractOptions, model: ModelOptions) -> DecodeOptions:
    """Every check that can be made before anything under the output prefix is touched; the decoding
    options. --retry_failures sets io.input to what the summary says was read.

    Raises:
        ValueError: naming the flag and what is wrong.
    """
    decode = opts.decode_options()
    opts.validate_extract()
    model.validate_model()
    if opts.retry_failures:
        if io.input:
            raise ValueError("--input and --retry_failures exclude each other: the failures are the input")
        if not table_files(opts.retry_failures, "failures"):
            raise ValueError(f"--retry_failures {opts.retry_failures!r}: no failures table there "
                             f"({any_layout_glob(opts.retry_failures, 'failures')} matches nothing)")
        io.input = f"failures of {opts.retry_failures}"
    else:
        io.validate_io("a glob of videos or a manifest (or --retry_failures PREFIX)")
        check_input(io.input, column=opts.uri_column)
    if not io.output_prefix:
        raise ValueError("--output_prefix is required: where the tables are written")
    if opts.chunk_videos and not runs_locally(options) and not io.wait:
        raise ValueError("--chunk_videos runs one job per chunk from the launcher, which waits for each: "
                         "it cannot go with --wait=false")
    if opts.captions and opts.captions not in CAPTION_FILES and not object_exists(opts.captions):
        raise ValueError(f"--captions {opts.captions!r}: no such captions table")
    check_worker_packaging(options)
    if not options.view_as(TestOptions).dry_run:  # a dry run touches no output and needs no model
        check_model_handle(model.model)  # before anything under the output prefix is touched
    return decode


# The job's counters a summary reports (videos_ok, videos_failed and clips come from the tables' files).
SUMMARY_COUNTERS = ("frames_decoded", "videos_split", "video_parts", "input_duplicates", "videos_skipped_done",
                    "failures_retried", "io_retries")


def summary_extra(input_spec: str):
    """What the launcher adds to a run's summary: the input, the job's counters, the failure reasons."""

    def extra(counts: dict[str, int], output_prefix: str) -> dict:
        return {
            "input": input_spec,
            "counts": {name: counts.get(name, 0) for name in SUMMARY_COUNTERS},
            "failure_reasons": failure_reasons(output_prefix),
        }

    return extra


def _run_in_chunks(options, io: IOOptions, opts: ExtractOptions, model: ModelOptions, decode: DecodeOptions,
                   plan: PrecisionPlan, metadata: dict[str, Any], extra) -> tuple[dict[str, Any], str] | None:
    """--chunk_videos: the run as chunks (pipeline.chunks), the step --chunk_step names.

    Every step but a single chunk's holds the prefix's lease; a chunk's attempt holds its chunk's.
    Returns the summary to announce (None when the step printed what it has to say).
    """
    chunking = Chunking(io.input, opts.chunk_videos, tuple(split_list(opts.skip_done)), opts.split_sec, metadata,
                        opts.columns())
    job_state = None if runs_locally(options) else dataflow_job_state(options)
    launch_ = ChunkedLaunch(
        options, io.output_prefix, tables_of(opts),
        lambda p, progress, input_spec, prefix: build_pipeline(p, input_spec, prefix, opts, model, decode, progress,
                                                               plan, skip_done=[]),
        metadata, extra, parallel=opts.parallel_chunks, job_state=job_state, stale=ALL_TABLES)
    step = opts.chunk_step
    if step not in ("all", "plan", "aggregate"):
        summary = launch_.run_chunk(chunking, step)
        attempts = f"{chunk_prefix(io.output_prefix, step)}/{ATTEMPTS_DIR}/*"
        if summary is None:
            return {**metadata, "status": "submitted"}, summary_path(attempts)
        print(f"chunk {step}: {summary['counts']} -> {summary_path(summary['output_prefix'])}")
        return None
    lease = acquire(io.output_prefix, job_state, lease_settle_sec(options))
    try:
        if step == "plan":
            names = [entry["name"] for entry in launch_.plan(chunking, opts.overwrite)["chunks"]]
            print(json.dumps(names))  # the last line: a scheduler maps over it
            return None
        if step == "aggregate":
            return launch_.aggregate(chunking)
        return launch_.run(chunking, opts.overwrite)
    finally:
        release(lease)


if __name__ == "__main__":
    sys.exit(main())
