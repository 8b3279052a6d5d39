"""The text job's steps: sentence rows -> TextItems -> text embeddings, every failure a row."""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from transforms.inference import Embed, S3DModelHandler
from transforms.inputs import BAD_LINES
from transforms.records import FAILURES, TextItem, stable_id


def text_failure(text_id: str, text: str, stage: str, error_type: str, message: str) -> dict[str, Any]:
    """A row of the text_failures table."""
    return {"text_id": text_id, "text": text, "stage": stage, "error_type": error_type, "message": message}


class ToTextItemFn(beam.DoFn):
    """A manifest row -> TextItem (id given, else a hash of the text), or a failure row."""

    def process(self, row: dict[str, Any]):
        text = row.get("text")
        given = row.get("text_id")
        given = str(given).strip() if given not in (None, "") else None
        if not isinstance(text, str):
            yield beam.pvalue.TaggedOutput(FAILURES, text_failure(
                given or stable_id(repr(row)), "" if text is None else str(text), "input", "ValueError",
                f"row has no text string: {row!r}"[:500]))
        else:
            yield TextItem(given or stable_id(text), text)


class EmbedTexts(beam.PTransform):
    """{rows, bad_lines} of ReadManifestRows -> {rows: text rows with embeddings, failures}."""

    def __init__(self, handler: S3DModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, read):
        items = read["rows"] | "ToTextItems" >> beam.ParDo(ToTextItemFn()).with_outputs(FAILURES, main="items")
        embedded = items.items | "Embed" >> Embed(self._handler)
        inference_failures = embedded["failures"] | "InferenceFailures" >> beam.Map(
            lambda kv: text_failure(kv[0], "", "inference", kv[1]["error_type"], kv[1]["message"]))
        bad_lines = read[BAD_LINES] | "BadLines" >> beam.Map(
            lambda b: text_failure(stable_id(b["line"]), b["line"][:500], "input", b["error_type"], b["message"]))
        failures = (items[FAILURES], inference_failures, bad_lines) | "AllFailures" >> beam.Flatten()
        return {"rows": embedded["rows"], "failures": failures}
