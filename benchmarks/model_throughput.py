"""Model-only throughput of one configuration, run in its own process so its peak memory is its own.

    python -m benchmarks.model_throughput --model DIR --batch 4 --variant loaded

Prints one JSON line: clips per second, GFLOP/s at 72.7 GFLOP per 32x224x224 clip, peak RSS.
Variants are set before TensorFlow is imported (threads, oneDNN) or choose how the
graph is built (the loaded SavedModel, in-process, XLA).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import s3d  # noqa: F401  (the project's TensorFlow defaults, oneDNN on, set before main imports TensorFlow)
from benchmarks.common import peak_rss_mb, run_json

GFLOP_PER_CLIP = 72.7  # docs/model.md, "Compute": TensorFlow's profiler on the video signature, 1x32x224x224

VARIANTS = {
    "loaded": "exported SavedModel via load_s3d (what the pipeline runs)",
    "loaded_xla": "the same signature wrapped in tf.function(jit_compile=True)",
    "loaded_onednn_off": "the same with TF_ENABLE_ONEDNN_OPTS=0",
    "loaded_avx2": "the same with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2): an AVX2-only CPU, oneDNN on as the "
                   "project sets it",
    "loaded_avx2_onednn_off": "AVX2 and oneDNN off: what TensorFlow chose by itself on AVX2-only CPUs (Eigen's Conv3D)",
    "loaded_1_thread_pools": "the same with inter_op=1, intra_op=2 threads",
    "inproc": "network built in-process from the same parameters, not through a SavedModel",
}


PEER_CLIPS_PER_S = 0.88  # the authors' PyTorch port, batch 1, on a 2-core machine of this kind


def model_section(model: str, log: Callable[[str], None]) -> str:
    rows = []
    for batch in (1, 4, 8):
        log(f"model: loaded, batch {batch}")
        rows.append(run_json(["benchmarks.model_throughput", "--model", model, "--batch", str(batch)]))
    variants = []
    for variant in sorted(VARIANTS):
        log(f"model: variant {variant}, batch 1")
        variants.append(run_json(["benchmarks.model_throughput", "--model", model, "--batch", "1", "--variant", variant]))
    base = next(v for v in variants if v["variant"] == "loaded")["clips_per_s"]

    lines = [
        "## Model only (S3D video tower, T=32, 224x224, float32, CPU)",
        "",
        "| batch | clips/s | GFLOP/s (72.7 GFLOP/clip) | peak RSS (MB) | vs PyTorch port (0.88 clips/s at batch 1) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['clips_per_s']:.2f} | {r['gflop_per_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['clips_per_s'] / PEER_CLIPS_PER_S:.2f}x |"
        )
    lines += [
        "",
        "What TensorFlow offers, at batch 1, each in its own process (ratio to `loaded` in the same run):",
        "",
        "| variant | what | clips/s | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for v in variants:
        lines.append(f"| {v['variant']} | {VARIANTS[v['variant']]} | {v['clips_per_s']:.2f} | {v['clips_per_s'] / base:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="loaded")
    parser.add_argument("--seconds", type=float, default=8.0, help="time spent measuring (after one warm-up call)")
    args = parser.parse_args()

    if args.variant in ("loaded_onednn_off", "loaded_avx2_onednn_off"):
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    if args.variant.startswith("loaded_avx2"):
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    import numpy as np
    import tensorflow as tf

    if args.variant == "loaded_1_thread_pools":
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(2)

    if args.variant.startswith("loaded"):
        from s3d.loader import load_s3d

        model = load_s3d(args.model)

        def call(x):
            return model._video(images=x)

        fn = tf.function(call, jit_compile=True) if args.variant == "loaded_xla" else call
    else:
        from s3d.network import S3DNetwork, init_parameters
        from s3d.vocab import standin_vocabulary

        words = standin_vocabulary()
        network = S3DNetwork(init_parameters(len(words), 0), words)
        fn = tf.function(network.embed_video)

    images = tf.constant(
        np.random.default_rng(0).uniform(0, 1, (args.batch, args.frames, args.size, args.size, 3)).astype(np.float32)
    )
    fn(images)["video_embedding"].numpy()  # warm-up: tracing, oneDNN primitive creation
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < args.seconds:
        fn(images)["video_embedding"].numpy()
        calls += 1
    elapsed = time.perf_counter() - start
    clips_per_s = calls * args.batch / elapsed
    scale = args.frames * args.size * args.size / (32 * 224 * 224)
    print(
        json.dumps(
            {
                "variant": args.variant,
                "batch": args.batch,
                "clips_per_s": clips_per_s,
                "gflop_per_s": clips_per_s * GFLOP_PER_CLIP * scale,
                "peak_rss_mb": peak_rss_mb(),
                "calls": calls,
            }
        )
    )


if __name__ == "__main__":
    main()
