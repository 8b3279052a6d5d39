"""End-to-end throughput of the extraction job on the local runner, in its own process.

    python -m benchmarks.pipeline_throughput --model DIR --input GLOB --output_prefix DIR [beam args]

Prints one JSON line: clips, wall seconds, clips/s (with and without the one-off
model load), peak RSS of the process and of its largest child (the decoder process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable

from benchmarks.common import BENCH_CACHE, e2e_corpus, length_memory_table, peak_rss_mb, run_json


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
        "peak_rss_mb": peak_rss_mb(),
        # the largest child's: the decoder process (or a runner's worker process)
        "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def pipeline_section(model: str, log: Callable[[str], None]) -> str:
    from benchmarks.decode_throughput import make_source

    source, corpus = e2e_corpus()
    log("pipeline: decode-only and model-only references")
    decode = run_json(["benchmarks.decode_throughput", "--source", source, "--tool", "ours"])
    decode_cps = decode["sampled_fps"] / 32
    model_cps = run_json(["benchmarks.model_throughput", "--model", model, "--batch", "4"])["clips_per_s"]
    serial = 1 / (1 / decode_cps + 1 / model_cps)
    runs = {}
    configs = {
        "local, 1 worker (default)": [],
        "local, 2 threads": ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"],
        "local, 1 worker, --precision bfloat16": ["--precision", "bfloat16"],
    }
    for name, extra in configs.items():
        log(f"pipeline: job, {name}")
        try:
            runs[name] = run_json(["benchmarks.pipeline_throughput", "--model", model, "--input",
                                   os.path.join(corpus, "*.avi"), "--output_prefix", os.path.join(BENCH_CACHE, "out"),
                                   *extra])
        except RuntimeError as e:  # a crash is a result too: reported in the table, not hidden
            log(f"pipeline: {name} failed: {str(e)[-300:]}")
            runs[name] = {"error": str(e).splitlines()[0][-120:]}
    lines = [
        "## End to end (extraction job on the local runner; 6 x 30 s 480p mpeg4, 10 fps, 32-frame clips)",
        "",
        f"References in the same run: decode only {decode_cps:.2f} clips/s, model only {model_cps:.2f} clips/s (batch 4, "
        "the job's default, float32; the bfloat16 row's model is faster, so its ratios to these exceed the "
        "float32 rows'). "
        f"Decoding and inference share the same two cores, so the best a serial worker can do is "
        f"1 / (1/decode + 1/model) = {serial:.2f} clips/s.",
        "",
        "| job | clips | wall s | model load s | clips/s | clips/s after load | vs slower of the two | vs serial bound | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    slower = min(decode_cps, model_cps)
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | FAILED: {r['error']} |" + " |" * 7)
            continue
        lines.append(
            f"| {name} | {r['clips']} | {r['wall_seconds']:.1f} | {r['model_load_seconds']:.1f} | {r['clips_per_s']:.2f} | "
            f"{r['clips_per_s_after_load']:.2f} | {r['clips_per_s_after_load'] / slower:.2f} | "
            f"{r['clips_per_s_after_load'] / serial:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    log("pipeline: memory on a 1-minute and a 10-minute video")
    mem = {}
    for name in ("360p_h264_1min", "360p_h264_10min"):
        path = make_source(name, BENCH_CACHE)
        # A fixed batch size: peak memory follows the batch (activations), which BatchElements
        # would otherwise grow during a long run; here only the video's length differs.
        mem[name] = run_json(["benchmarks.pipeline_throughput", "--model", model, "--input", path,
                              "--output_prefix", os.path.join(BENCH_CACHE, "out_mem"),
                              "--min_batch_size", "4", "--batch_size", "4"])
    short, long = mem["360p_h264_1min"], mem["360p_h264_10min"]
    lines += length_memory_table(
        "Peak memory of the whole job on one long video (360p h264, 10 fps, batches of 4):", short, long,
        [("clips", "clips", "{}"), ("wall s", "wall_seconds", "{:.1f}")])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
