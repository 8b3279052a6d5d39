"""The project's index on the 1M-clip benchmark table: query latency, recall and memory after load.

    python -m benchmarks.index_throughput --index DIR --table DIR --vectors V.npy [--queries 256]

Loads the index with `vector_index.searcher.IndexSearcher` (what `pipeline.search --index`
does) and measures, in this process: resident memory added by loading it; recall@10 against
exact inner-product search over the same vectors; the latency of one query (one thread) and
of a batch of 16 (all cores), each including the locator reads that give uri and times; and,
alternated with the index, a few exact streaming searches (`pipeline.search.search`) of one
query. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import psutil

from synthetic.embeddings import queries_near

K = 10


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--table", required=True, help="the features the index was built from")
    parser.add_argument("--vectors", required=True, help=".npy of the table's embeddings, in file order")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--streaming_rounds", type=int, default=3)
    args = parser.parse_args()

    from pipeline.search import search
    from storage.runs import level_files
    from vector_index import library
    from vector_index.searcher import IndexSearcher

    vectors = np.load(args.vectors, mmap_mode="r")
    queries = queries_near(np.asarray(vectors[:50_000]), args.queries)
    scores = queries @ np.asarray(vectors).T
    truth = np.argpartition(-scores, K, axis=1)[:, :K]
    del scores, vectors
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    searcher = IndexSearcher(args.index)
    load_s = time.perf_counter() - start
    memory = process.memory_info().rss - before

    hits = searcher.search(queries, K)
    # Benchmark rows: clip i of the table is video i // 20, clip i % 20 (benchmarks.search_throughput).
    found = [{int(r["video_id"][1:]) * 20 + r["clip_index"] for r in rows} for rows in hits.rows]
    recall = float(np.mean([len(f & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))

    files = level_files(args.table, "clip")
    one, batch, streaming = [], [], []
    library.set_threads(1)
    searcher.search(queries[:2], K)  # warm
    for i, q in enumerate(queries):
        t = time.perf_counter()
        searcher.search(q[None], K)
        one.append(time.perf_counter() - t)
        if i % (len(queries) // args.streaming_rounds) == 0 and len(streaming) < args.streaming_rounds:
            t = time.perf_counter()
            search(files, q[None], "clip", K)
            streaming.append(time.perf_counter() - t)
    library.set_threads(None)
    for i in range(0, len(queries), 16):
        t = time.perf_counter()
        searcher.search(queries[i:i + 16], K)
        batch.append(time.perf_counter() - t)
    manifest = searcher.manifest
    index_bytes = sum(s["files"][".faiss"]["bytes"] for s in manifest.shards)
    locator_bytes = sum(s["files"][".locators.parquet"]["bytes"] for s in manifest.shards)
    print(json.dumps({
        "rows": manifest.rows, "shards": len(manifest.shards), "quantization": manifest.quantization,
        "ef_search": manifest.params["ef_search"], "recall_at_10": recall, "load_s": load_s,
        "memory_bytes": memory, "raw_f16_bytes": manifest.rows * manifest.dim * 2,
        "index_file_bytes": index_bytes, "locator_file_bytes": locator_bytes,
        "one_p50_ms": float(np.percentile(one, 50) * 1e3), "one_p99_ms": float(np.percentile(one, 99) * 1e3),
        "batch16_p50_ms": float(np.percentile(batch, 50) * 1e3), "batch16_p99_ms": float(np.percentile(batch, 99) * 1e3),
        "streaming_one_s": float(np.median(streaming)), "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
