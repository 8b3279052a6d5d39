"""What the fusion break before GPU inference costs per clip, in its own process.

    python -m benchmarks.shuffle_cost --model DIR [--rounds 5]

With `--inference_accelerator`, clips cross a Reshuffle between the CPU workers that
decode them and the GPU workers that embed them. Per clip that is the encoded bytes
Dataflow's shuffle moves, and one encode plus one decode with the coder Beam uses for
the clip PCollection. Both are measured here beside the model's own time per clip on
this CPU, alternated round by round. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import run_json


def shuffle_section(model: str, log: Callable[[str], None]) -> str:
    log("shuffle: coder round trip vs model time per clip")
    r = run_json(["benchmarks.shuffle_cost", "--model", model])
    clips_per_1000_hours = 1000 * 3600 * 10 / 32  # 10 fps, 32-frame clips
    terabytes = r["bytes_per_clip"] * clips_per_1000_hours / 1e12
    return "\n".join([
        "## The fusion break before GPU inference (`--inference_accelerator`)",
        "",
        "Clips cross a Reshuffle from the CPU workers that decode to the GPU workers that embed "
        "(T=32, 224x224 uint8). Per clip, in one process, alternated round by round (median of 5):",
        "",
        "| what | per clip |",
        "| --- | --- |",
        f"| bytes shuffled ({r['coder']}) | {r['bytes_per_clip'] / 1e6:.2f} MB (raw frames {r['raw_bytes_per_clip'] / 1e6:.2f} MB) |",
        f"| encode + decode, CPU | {r['coder_ms_per_clip']:.1f} ms |",
        f"| model on this CPU, batch {r['batch']} | {r['model_ms_per_clip']:.0f} ms |",
        "",
        f"Serialization is {r['coder_ms_per_clip'] / r['model_ms_per_clip']:.3f} of the CPU model time per clip; "
        f"the real cost is the volume: {terabytes:.1f} TB shuffled per 1,000 hours of video at 10 fps "
        f"({clips_per_1000_hours:,.0f} clips). See docs/scale.md.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    import apache_beam as beam

    from decoder import Clip
    from s3d.loader import load_s3d
    from transforms.records import ClipItem

    rng = np.random.default_rng(0)
    items = [
        ClipItem("v", "gs://b/v.mp4", Clip(i, i * 3.2, (i + 1) * 3.2, 32, False,
                                           rng.integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)))
        for i in range(args.batch)
    ]
    # The clip PCollection is untyped: Beam encodes it with the coder it infers for Any.
    coder = beam.coders.registry.get_coder(beam.typehints.Any)
    model = load_s3d(args.model)
    model.embed_video(np.stack([it.frames for it in items]))  # warm-up
    shuffle_ms, model_ms = [], []
    encoded_bytes = 0
    for _ in range(args.rounds):
        start = time.perf_counter()
        for item in items:
            data = coder.encode(item)
            encoded_bytes = len(data)
            back = coder.decode(data)
            assert back.frames.shape == item.frames.shape
        shuffle_ms.append((time.perf_counter() - start) * 1000 / len(items))
        start = time.perf_counter()
        model.embed_video(np.stack([it.frames for it in items]))
        model_ms.append((time.perf_counter() - start) * 1000 / len(items))
    print(json.dumps({
        "coder": type(coder).__name__,
        "bytes_per_clip": encoded_bytes,
        "raw_bytes_per_clip": items[0].frames.nbytes,
        "coder_ms_per_clip": statistics.median(shuffle_ms),
        "model_ms_per_clip": statistics.median(model_ms),
        "batch": args.batch,
    }))


if __name__ == "__main__":
    main()
