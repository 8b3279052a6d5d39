"""The launcher's --skip_done work over many earlier runs on an object store (the GCS emulator).

    python -m benchmarks.launch_skip_done [--runs 30] [--shards 100] [--rounds 3]

Writes RUNS earlier runs of SHARDS `videos` files each (with the run metadata every file carries)
to the GCS emulator the tests use (tests/object_stores.py, on 127.0.0.1), then times, alternated
round by round, what a launch does with `--skip_done` over all of them:
- `matching_table_files`, as the launcher does it: a listing and one footer per run;
- every shard's footer read one by one, as before.
Prints one JSON line: seconds and HTTP requests of each (median), and the ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable

from benchmarks.common import run_json


def launch_section(model: str, log: Callable[[str], None]) -> str:
    """--skip_done over 30 earlier runs of 100 shards each, on the GCS emulator."""
    del model
    log("launch: 30 earlier runs of 100 shards on the GCS emulator, --skip_done")
    r = run_json(["benchmarks.launch_skip_done", "--runs", "30", "--shards", "100", "--rounds", "3"])
    per_run, every = r["one footer per run"], r["every shard's footer"]
    return "\n".join([
        "## A launch with --skip_done over many earlier runs (GCS emulator)",
        "",
        f"`python -m benchmarks.launch_skip_done`: {r['runs']} earlier runs of {r['shards']} `videos` files each "
        "on the GCS emulator the tests use (127.0.0.1, behind their front door, which counts the HTTP requests). "
        "What the launcher does with `--skip_done` over all of them: a listing and one footer per run "
        "(`matching_table_files`), against every shard's footer read one by one; alternated, median of 3.",
        "",
        "| launcher work | seconds | HTTP requests |",
        "| --- | --- | --- |",
        f"| a listing and one footer per run (the launcher) | {per_run['seconds']:.2f} | {per_run['requests']} |",
        f"| every shard's footer | {every['seconds']:.2f} | {every['requests']} |",
        "",
        f"Every shard's footer / one per run: {r['ratio']:.1f}x the time. The launcher's cost grows with the "
        "number of earlier runs, not of their files (one listing page covers 1,000 names).",
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from object_stores import start_gcs

    store, stop = start_gcs()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        from storage.layout import table_files
        from storage.runs import file_run_metadata, interchangeable
        from transforms.incremental import matching_table_files
        from transforms.tables import VIDEOS_SCHEMA, with_run_metadata, write_summary

        metadata = {"model": "m", "preprocessing": {"fps": 10.0, "size": 224}, "precision": "float32"}
        schema = with_run_metadata(VIDEOS_SCHEMA, metadata)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([], schema=VIDEOS_SCHEMA).cast(schema), buffer)
        shard = buffer.getvalue()
        prefixes = []
        started = time.perf_counter()
        for r in range(args.runs):
            prefix = store.root(f"earlier{r:02d}")
            for s in range(args.shards):
                with FileSystems.create(f"{prefix}/videos/videos-{s:05d}-of-{args.shards:05d}.parquet") as f:
                    f.write(shard)
            write_summary(prefix, {"status": "complete", **metadata})
            prefixes.append(prefix)
        setup = time.perf_counter() - started

        def by_listing() -> int:
            return len(matching_table_files(prefixes, "videos", metadata))

        def every_footer() -> int:
            wanted, kept = interchangeable(metadata), 0
            for prefix in prefixes:
                for path in table_files(prefix, "videos"):
                    kept += interchangeable(file_run_metadata(path)) == wanted
            return kept

        timings: dict[str, list[tuple[float, int]]] = {"one footer per run": [], "every shard's footer": []}
        for _ in range(args.rounds):
            for label, fn in (("one footer per run", by_listing), ("every shard's footer", every_footer)):
                store.faults.clear()
                before = store.faults.requests
                t = time.perf_counter()
                files = fn()
                timings[label].append((time.perf_counter() - t, store.faults.requests - before))
                assert files == args.runs * args.shards, (label, files)
        median = {k: sorted(v)[len(v) // 2] for k, v in timings.items()}
        print(json.dumps({
            "runs": args.runs, "shards": args.shards, "setup_seconds": setup,
            **{label: {"seconds": s, "requests": n} for label, (s, n) in median.items()},
            "ratio": median["every shard's footer"][0] / median["one footer per run"][0],
        }))
    finally:
        stop()


if __name__ == "__main__":
    main()
