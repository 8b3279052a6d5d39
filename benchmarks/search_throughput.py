"""Search throughput on a synthetic clips table, streaming vs an in-memory numpy matmul.

    python -m benchmarks.search_throughput --table DIR --queries 16 --mode streaming|in_memory

The table (made once by `make_table`) has the clips table's columns but `mixed_5c`,
which search never reads (Parquet is columnar), to spare the disk. Prints one JSON
line: clip-query dot products per second, seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.tables import CLIPS_SCHEMA, with_run_metadata


def make_table(directory: str, rows: int, files: int = 20, row_group: int = 16_384) -> str:
    """Writes `rows` random clips in `files` shards under DIRECTORY/clips (once) and a run summary."""
    clips = os.path.join(directory, "clips")
    done = os.path.join(directory, "run_summary.json")
    if os.path.exists(done):
        return directory
    os.makedirs(clips, exist_ok=True)
    schema = with_run_metadata(
        pa.schema([f for f in CLIPS_SCHEMA if f.name != "mixed_5c"]), {"model": "synthetic", "preprocessing": {}}
    )
    rng = np.random.default_rng(0)
    per_file = rows // files
    for f in range(files):
        n = per_file if f < files - 1 else rows - per_file * (files - 1)
        ids = np.arange(f * per_file, f * per_file + n)
        emb = rng.normal(size=(n, 512)).astype(np.float32)
        table = pa.table({
            "video_id": pa.array([f"v{i // 20:07d}" for i in ids]),
            "uri": pa.array([f"gs://bucket/videos/v{i // 20:07d}.mp4" for i in ids]),
            "clip_index": pa.array(ids % 20, pa.int32()),
            "start_sec": pa.array((ids % 20) * 3.2),
            "end_sec": pa.array((ids % 20) * 3.2 + 3.2),
            "num_frames": pa.array(np.full(n, 32), pa.int32()),
            "padded": pa.array(np.zeros(n, bool)),
            "video_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 512),
        }, schema=schema)
        pq.write_table(table, os.path.join(clips, f"clips-{f:05d}-of-{files:05d}.parquet"), row_group_size=row_group)
    with open(done, "w") as out:
        json.dump({"status": "complete", "synthetic": True, "rows": rows}, out)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--table", required=True)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--mode", choices=["streaming", "in_memory"], required=True)
    args = parser.parse_args()

    from pipeline.search import search, table_files

    queries = np.random.default_rng(1).normal(size=(args.queries, 512)).astype(np.float32)
    files = table_files(args.table, "clip")
    result = {"mode": args.mode, "queries": args.queries}
    if args.mode == "streaming":
        start = time.perf_counter()
        top = search(files, queries, "clip", args.top_k)
        seconds = time.perf_counter() - start
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        result["best_score"] = float(top.scores[0][0])
    else:
        start = time.perf_counter()
        parts = [pq.read_table(f, columns=["video_embedding"]).column(0).combine_chunks().values.to_numpy() for f in files]
        embeddings = np.concatenate(parts).reshape(-1, 512)
        del parts
        result["load_seconds"] = time.perf_counter() - start
        rows = len(embeddings)
        start = time.perf_counter()
        scores = embeddings @ queries.T
        best = np.argpartition(-scores, args.top_k, axis=0)[: args.top_k]
        seconds = time.perf_counter() - start
        result["best_score"] = float(scores[best[:, 0], 0].max())
    result.update(
        rows=rows, seconds=seconds, dot_products_per_s=rows * args.queries / seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
