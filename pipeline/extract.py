"""The extraction job: videos -> per-clip and per-video S3D features in Parquet, and failure records.

    python -m pipeline.extract --input 'videos/*.mp4' --output_prefix out/run1 [--model DIR] [options]

Read the input -> Reshuffle -> decode into clips -> batch -> inference -> rows -> write.
Every input video ends up in exactly one of `videos` or `failures`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import ExtractOptions, ModelOptions
from pipeline.runner import (
    Stopwatch,
    clear_previous_run,
    configure_logging,
    counters,
    create_pipeline,
    distributions,
    is_local,
    package_version,
    utc_now,
    write_summary,
)
from transforms.assemble import AssembleVideos
from transforms.decode import DecodeClips
from transforms.inference import Embed, S3DModelHandler
from transforms.inputs import ReadVideoRequests, check_input
from transforms.tables import WriteTable, table_glob

TABLES = ("clips", "videos", "failures")

log = logging.getLogger("pipeline.extract")


def run_metadata(opts: ExtractOptions, model: ModelOptions) -> dict[str, Any]:
    """What produced the features: written into every file and the run summary."""
    d = opts.decode_options()
    return {
        "job": "extract",
        "model": model.model,
        "preprocessing": {
            "fps": d.fps, "frames_per_clip": d.frames_per_clip, "stride": d.clip_stride if d.num_clips is None else None,
            "num_clips": d.num_clips, "size": d.size, "crop": d.crop, "tail": d.tail,
        },
        "package_version": package_version(),
    }


class CountRows(beam.PTransform):
    """Counts the rows that reach a table (metric `rows_<table>`), passing them through."""

    def __init__(self, table: str):
        super().__init__()
        self._name = f"rows_{table}"

    def expand(self, rows):
        name = self._name

        def count(row):
            beam.metrics.Metrics.counter("s3d", name).inc()
            return row

        return rows | beam.Map(count)


def build_pipeline(p: beam.Pipeline, opts: ExtractOptions, model: ModelOptions) -> dict[str, beam.PCollection]:
    """Adds the extraction graph to `p` (tests pass a TestPipeline); returns the rows of each table."""
    metadata = run_metadata(opts, model)
    handler = S3DModelHandler(
        model.model, "video", min_batch_size=model.min_batch_size, max_batch_size=model.batch_size,
        large_model=model.large_model, model_copies=model.model_copies,
    )
    inputs = p | "ReadInput" >> ReadVideoRequests(opts.input)
    decoded = (
        inputs["requests"]
        | "Reshuffle" >> beam.Reshuffle()  # spread decoding over workers
        | "DecodeClips" >> DecodeClips(opts.decode_options(), opts.decode_prefetch)
    )
    embedded = decoded["clips"] | "EmbedClips" >> Embed(handler)
    assembled = {
        "clip_rows": embedded["rows"], "info": decoded["info"], "inference_failures": embedded["failures"],
    } | "AssembleVideos" >> AssembleVideos()
    failures = (inputs["failures"], decoded["failures"], assembled["failures"]) | "AllFailures" >> beam.Flatten()
    tables = {"clips": embedded["rows"], "videos": assembled["videos"], "failures": failures}
    for name, rows in tables.items():
        title = name.capitalize()
        _ = rows | f"Count{title}" >> CountRows(name) | f"Write{title}" >> WriteTable(opts.output_prefix, name, metadata)
    return tables


def parse_args(argv: list[str] | None) -> tuple[ExtractOptions, ModelOptions, PipelineOptions]:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.extract",
        description="Extract S3D MIL-NCE features (mixed_5c 1024-d, video_embedding 512-d) from videos "
        "into Parquet tables: clips, videos, failures.",
        epilog="Any Apache Beam option is accepted as well, e.g. --runner DataflowRunner, --direct_num_workers 2, "
        "--direct_running_mode multi_processing. Without --runner the job runs locally.",
    )
    ExtractOptions._add_argparse_args(parser)
    ModelOptions._add_argparse_args(parser.add_argument_group("model"))
    parser.parse_known_args(argv)  # --help and type errors, with this job's own help text
    options = PipelineOptions(argv)
    return options.view_as(ExtractOptions), options.view_as(ModelOptions), options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    configure_logging()
    opts, model, options = parse_args(argv)
    try:
        opts.validate_extract()
        model.validate_model()
        check_input(opts.input)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    watch, started = Stopwatch(), utc_now()
    clear_previous_run(opts.output_prefix, TABLES)
    p = create_pipeline(options)
    build_pipeline(p, opts, model)
    result = p.run()
    result.wait_until_finish()
    counts = counters(result)
    summary = {
        **run_metadata(opts, model),
        "status": "complete",
        "input": opts.input,
        "output_prefix": opts.output_prefix,
        "started": started,
        "finished": utc_now(),
        "wall_seconds": round(watch.seconds, 2),
        "counts": {
            "videos_ok": counts.get("rows_videos", 0),
            "videos_failed": counts.get("rows_failures", 0),
            "clips": counts.get("rows_clips", 0),
            "frames_decoded": counts.get("frames_decoded", 0),
            "input_duplicates": counts.get("input_duplicates", 0),
        },
        "counters": counts,
        "distributions": distributions(result),
        "tables": {t: table_glob(opts.output_prefix, t) for t in TABLES},
    }
    from pipeline.report import failure_reasons, print_summary

    summary["failure_reasons"] = failure_reasons(opts.output_prefix)
    path = write_summary(opts.output_prefix, summary)
    if is_local(options):
        print_summary(summary, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
