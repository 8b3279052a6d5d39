"""The text job: sentences -> 512-d `text_embedding`s in the same space as the video embeddings.

    python -m pipeline.embed_text --input queries.txt --output_prefix out/texts [--model DIR]

Same options style, model handler and failure handling as the extraction job. A
sentence with no word the vocabulary knows is embedded all the same (the model maps
it to its padding-only vector) and flagged `no_known_words`.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import apache_beam as beam

from pipeline.options import TEXT_INPUT_HELP, TEXT_OUTPUT_HELP, IOOptions, ModelOptions
from pipeline.runner import (
    WriteTables,
    announce,
    check_worker_packaging,
    configure_logging,
    launch,
    package_version,
    parse_job_args,
)
from transforms.inference import Embed
from transforms.inputs import BAD_LINES, ReadManifestRows, check_input
from transforms.records import TextItem

TABLES = ("texts", "text_failures")
FAILURES = "failures"


def derive_text_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def text_failure(text_id: str, text: str, stage: str, error_type: str, message: str) -> dict[str, Any]:
    return {"text_id": text_id, "text": text, "stage": stage, "error_type": error_type, "message": message}


class ToTextItemFn(beam.DoFn):
    def process(self, row: dict[str, Any]):
        text = row.get("text")
        given = row.get("text_id")
        given = str(given).strip() if given not in (None, "") else None
        if not isinstance(text, str):
            yield beam.pvalue.TaggedOutput(FAILURES, text_failure(
                given or derive_text_id(repr(row)), "" if text is None else str(text), "input", "ValueError",
                f"row has no text string: {row!r}"[:500]))
        else:
            yield TextItem(given or derive_text_id(text), text)


def run_metadata(model: ModelOptions) -> dict[str, Any]:
    return {"job": "embed_text", "model": model.model, "package_version": package_version()}


def build_pipeline(p: beam.Pipeline, opts: IOOptions, model: ModelOptions) -> dict[str, beam.PCollection]:
    metadata = run_metadata(model)
    rows = p | "ReadSentences" >> ReadManifestRows(opts.input, "text")
    items = rows["rows"] | "ToTextItems" >> beam.ParDo(ToTextItemFn()).with_outputs(FAILURES, main="items")
    embedded = items.items | "EmbedTexts" >> Embed(model.handler("text"))
    inference_failures = embedded["failures"] | "InferenceFailures" >> beam.Map(
        lambda kv: text_failure(kv[0], "", "inference", kv[1]["error_type"], kv[1]["message"]))
    bad_lines = rows[BAD_LINES] | "BadLines" >> beam.Map(
        lambda b: text_failure(derive_text_id(b["line"]), b["line"][:500], "input", b["error_type"], b["message"]))
    failures = (items[FAILURES], inference_failures, bad_lines) | "AllFailures" >> beam.Flatten()
    tables = {"texts": embedded["rows"], "text_failures": failures}
    _ = tables | "WriteTables" >> WriteTables(opts.output_prefix, metadata, {"texts": "texts", "failed": "text_failures"})
    return tables


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    configure_logging()
    options = parse_job_args(
        argv, "python -m pipeline.embed_text",
        "Embed sentences with the S3D MIL-NCE text tower into a Parquet table (texts), in the same space as "
        "the video embeddings of pipeline.extract.",
        (TEXT_INPUT_HELP, TEXT_OUTPUT_HELP),
        [(ModelOptions, "model")],
    )
    opts, model = options.view_as(IOOptions), options.view_as(ModelOptions)
    try:
        opts.validate_io("a file of sentences")
        model.validate_model()
        check_input(opts.input, column="text")
        check_worker_packaging(options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def extra(counts: dict[str, int]) -> dict:
        return {"input": opts.input}  # texts and failed are counted from the tables' files (WriteTables)

    def print_local(summary: dict, path: str) -> None:
        c = summary["counts"]
        print(f"\nS3D text embeddings: {c['texts']} sentences embedded, {c['failed']} failed, "
              f"in {summary['wall_seconds']:.1f}s\n  texts     {summary['tables']['texts']}\n  summary   {path}")

    summary, path = launch(options, opts.output_prefix, TABLES, lambda p: build_pipeline(p, opts, model),
                           run_metadata(model), extra)
    announce(summary, path, options, print_local)
    return 0


if __name__ == "__main__":
    sys.exit(main())
