"""The text job: sentences -> 512-d `text_embedding`s in the same space as the video embeddings.

    python -m pipeline.embed_text --input queries.txt --output_prefix out/texts [--model DIR]

Same options style, model handler and failure handling as the extraction job. A
sentence with no word the vocabulary knows is embedded all the same (the model maps
it to its padding-only vector) and flagged `no_known_words`.
"""

from __future__ import annotations

import sys
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import TestOptions

from pipeline.console import configure_logging
from pipeline.options import TEXT_INPUT_HELP, TEXT_OUTPUT_HELP, IOOptions, ModelOptions, plan_metadata
from pipeline.preflight import check_model_handle
from pipeline.runner import (
    announce,
    check_worker_packaging,
    launch,
    parse_job_args,
)
from s3d.export import package_version
from storage.lease import LeaseHeldError
from transforms.inputs import ReadManifestRows, check_input
from transforms.tables import WriteTables
from transforms.text import EmbedTexts

TABLES = ("texts", "text_failures")


def run_metadata(model: ModelOptions) -> dict[str, Any]:
    return {"job": "embed_text", "model": model.model, **plan_metadata(model.precision_plan("text")),
            "package_version": package_version()}


def build_pipeline(p: beam.Pipeline, opts: IOOptions, model: ModelOptions) -> dict[str, beam.PCollection]:
    """Adds the text graph to `p`; returns the rows of each table."""
    metadata = run_metadata(model)
    embedded = (p | "ReadSentences" >> ReadManifestRows(opts.input, "text")
                | "EmbedTexts" >> EmbedTexts(model.handler("text")))
    tables = {"texts": embedded["rows"], "text_failures": embedded["failures"]}
    _ = tables | "WriteTables" >> WriteTables(opts.output_prefix, metadata, {"texts": "texts", "failed": "text_failures"})
    return tables


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_job_args(
        argv, "python -m pipeline.embed_text",
        "Embed sentences with the S3D MIL-NCE text tower into a Parquet table (texts), in the same space as "
        "the video embeddings of pipeline.extract.",
        (TEXT_INPUT_HELP, TEXT_OUTPUT_HELP),
        [(ModelOptions, "model")],
    )
    configure_logging(options.view_as(IOOptions).log_level)  # before TensorFlow loads
    opts, model = options.view_as(IOOptions), options.view_as(ModelOptions)
    try:
        opts.validate_io("a file of sentences")
        model.validate_model()
        check_input(opts.input, column="text")
        check_worker_packaging(options)
        if not options.view_as(TestOptions).dry_run:  # a dry run touches no output and needs no model
            check_model_handle(model.model)  # before anything under the output prefix is touched
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def extra(counts: dict[str, int], output_prefix: str) -> dict:
        return {"input": opts.input}  # texts and failed are counted from the tables' files (WriteTables)

    def print_local(summary: dict, path: str) -> None:
        c = summary["counts"]
        print(f"\nS3D text embeddings: {c['texts']} sentences embedded, {c['failed']} failed, "
              f"in {summary['wall_seconds']:.1f}s\n  texts     {summary['tables']['texts']}\n  summary   {path}")

    try:
        summary, path = launch(options, opts.output_prefix, TABLES,
                               lambda p, progress: build_pipeline(p, opts, model), run_metadata(model), extra)
    except LeaseHeldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    announce(summary, path, options, print_local)
    return 0


if __name__ == "__main__":
    sys.exit(main())
