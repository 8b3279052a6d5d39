"""End-to-end throughput of the extraction job on the local runner, in its own process.

    python -m benchmarks.pipeline_throughput --model DIR --input GLOB --output_prefix DIR [beam args]

Prints one JSON line: clips, wall seconds, clips/s (with and without the one-off
model load), peak RSS of the process and of its largest child (the decoder process).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output_prefix", required=True)
    args, rest = parser.parse_known_args()

    from pipeline import extract
    from storage.layout import read_summary

    start = time.perf_counter()
    status = extract.main(["--input", args.input, "--output_prefix", args.output_prefix, "--model", args.model, *rest])
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(status)
    summary = read_summary(args.output_prefix)
    clips = summary["counts"]["clips"]
    load = summary["distributions"].get("load_model_latency_milli_secs", {}).get("max", 0) / 1000
    print(json.dumps({
        "clips": clips,
        "videos": summary["counts"]["videos_ok"],
        "failed": summary["counts"]["videos_failed"],
        "captions": summary["counts"].get("captions", 0),
        "wall_seconds": wall,
        "model_load_seconds": load,
        "clips_per_s": clips / wall,
        "clips_per_s_after_load": clips / max(wall - load, 1e-9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # the largest child's: the decoder process (or a runner's worker process)
        "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
