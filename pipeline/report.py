"""The end-of-run report: failure reasons read back from the failures table, and a short printout."""

from __future__ import annotations

import collections
import sys
from typing import Any

import pyarrow.parquet as pq

from storage.layout import table_files
from storage.objects import open_object


def failure_reasons(output_prefix: str, top: int = 10) -> list[dict[str, Any]]:
    """Most common (stage, error_type) pairs of the run, with one example message each."""
    counts: collections.Counter = collections.Counter()
    example: dict[tuple[str, str], str] = {}
    for path in table_files(output_prefix, "failures"):
        # ParquetFile, not pq.read_table: read_table scans a Python file object through Arrow's
        # dataset layer, whose threads may drop the last reference to it while the interpreter
        # exits; that needs the GIL there and aborts the process ("terminate called without an
        # active exception"), after the job has finished. ParquetFile is closed here, now.
        with open_object(path) as f, pq.ParquetFile(f) as parquet:
            table = parquet.read(columns=["stage", "error_type", "message"])
        for stage, error_type, message in zip(*(table.column(c).to_pylist() for c in ("stage", "error_type", "message")), strict=True):
            counts[(stage, error_type)] += 1
            example.setdefault((stage, error_type), message)
    return [
        {"stage": s, "error_type": e, "count": n, "example": example[(s, e)][:300]}
        for (s, e), n in counts.most_common(top)
    ]


def print_summary(summary: dict[str, Any], summary_file: str, out=None) -> None:
    out = out or sys.stdout
    c = summary["counts"]
    seconds = summary["wall_seconds"]
    rate = c["clips"] / seconds if seconds else 0.0
    print("", file=out)
    print(f"S3D features: {c['videos_ok']} videos ok, {c['videos_failed']} failed, {c['clips']} clips "
          f"in {seconds:.1f}s ({rate:.2f} clips/s)", file=out)
    if c.get("input_duplicates"):
        print(f"  {c['input_duplicates']} repeated inputs were decoded once", file=out)
    if c.get("videos_skipped_done"):
        print(f"  {c['videos_skipped_done']} videos skipped: done by an earlier run (--skip_done)", file=out)
    if c.get("failures_retried"):
        print(f"  {c['failures_retried']} failures of an earlier run retried", file=out)
    for reason in summary.get("failure_reasons", []):
        print(f"  failed at {reason['stage']}: {reason['error_type']} x{reason['count']}  e.g. {reason['example']}", file=out)
    print(f"  model: {summary['model']}", file=out)
    for table, pattern in summary["tables"].items():
        print(f"  {table:9s} {pattern}", file=out)
    print(f"  summary   {summary_file}", file=out)
