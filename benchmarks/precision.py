"""The video tower per precision: speed, and how far its features move from float32's.

    python -m benchmarks.precision --model DIR [--clips 16] [--corpus 48] [--rounds 3]

All variants are loaded in this one process and timed in alternation (round-robin, batch
4), so their ratios share the machine's state. Deviation is measured on natural-looking
32x224x224 clips (smooth moving patterns, `s3d.network.calibration_clips`) fed as uint8,
as the job feeds them. Prints one JSON line. On a machine with a GPU it compares float16
with float32 instead (the command docs/scale.md gives for measuring a GPU worker).

Variants: the module in float32; bfloat16 as shipped (the first KEEP_DEPTH convolutions from
the images in float32, see `s3d.precision.keep_float32`); and the alternatives that justify
that choice: 0 to 4 convolutions kept in float32.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

TEXT_QUERIES = [f"{who} {what}" for who in ("a person", "a dog", "the chef", "two children")
                for what in ("cutting an apple", "running on grass", "playing guitar", "driving a car",
                             "swimming in a pool", "cooking pasta")]


def natural_clips(count: int, seed: int = 1000, frames: int = 32, size: int = 224) -> np.ndarray:
    """uint8 [count, frames, size, size, 3]: moving coloured gratings over coarse blocks, clip i from seed + i.

    The kind of scene the stand-in's BatchNorm was calibrated on (`s3d.network.calibration_clips`),
    drawn with other seeds, computed in float32 and rounded to uint8 as decoded frames are.
    """
    out = np.empty((count, frames, size, size, 3), np.uint8)
    t = np.arange(frames, dtype=np.float32)[:, None, None, None]
    y = np.arange(size, dtype=np.float32)[None, :, None, None]
    x = np.arange(size, dtype=np.float32)[None, None, :, None]
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        freq = rng.uniform(0.02, 0.3, 3).astype(np.float32)
        speed = rng.uniform(-2, 2, 3).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        wave = np.sin(freq * (np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y + speed * t) + phase)
        coarse = rng.uniform(0, 1, (frames // 4 + 1, size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
        blocks = coarse.repeat(4, 0)[:frames].repeat(16, 1)[:, :size].repeat(16, 2)[:, :, :size]
        clip = 0.5 + 0.3 * wave + 0.4 * (blocks - 0.5)
        np.clip(clip * 255 + 0.5, 0, 255, out=clip)
        out[i] = clip
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embed(model, clips: np.ndarray, batch: int = 4) -> dict[str, np.ndarray]:
    parts = [model.embed_video(clips[i: i + batch]) for i in range(0, len(clips), batch)]
    return {"mixed_5c": np.concatenate([p[0] for p in parts]), "video_embedding": np.concatenate([p[1] for p in parts])}


def deviation(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ("video_embedding", "mixed_5c"):
        c = cosine(reference[key], other[key])
        out[key] = {"mean": float(c.mean()), "min": float(c.min())}
    return out


def top10_overlap(queries: np.ndarray, reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Share of each query's top-10 clips (by the model's score, the dot product) that both agree on."""
    overlaps = []
    for q in queries:
        a = set(np.argsort(-(reference @ q))[:10])
        b = set(np.argsort(-(other @ q))[:10])
        overlaps.append(len(a & b) / 10)
    return {"mean": float(np.mean(overlaps)), "min": float(np.min(overlaps))}


def load_variants(model_dir: str) -> dict[str, object]:
    """float32 and the lower precision this machine runs natively: float16 on a GPU, bfloat16 (and alternatives) on CPU."""
    import tensorflow as tf

    from s3d.loader import load_s3d
    from s3d.precision import KEEP_DEPTH, keep_float32, lower_video_signature

    if tf.config.list_physical_devices("GPU"):
        return {"float32": load_s3d(model_dir), "float16": load_s3d(model_dir, precision="float16")}
    variants = {"float32": load_s3d(model_dir), "bfloat16": load_s3d(model_dir, precision="bfloat16")}

    for depth in range(0, 5):
        if depth == KEEP_DEPTH:
            continue
        alt = load_s3d(model_dir)
        alt._video, alt.lowering = lower_video_signature(alt._video, "bfloat16",
                                                         lambda graph_def, d=depth: keep_float32(graph_def, d))
        alt.precision = "bfloat16"
        variants[f"bfloat16, {depth} convs kept in float32"] = alt
    return variants


def speeds(variants: dict[str, object], clips: np.ndarray, rounds: int, seconds: float) -> dict[str, float]:
    """Median clips/s of each variant over `rounds` alternated rounds of `seconds` each."""
    batch = clips[:4]
    for model in variants.values():
        model.embed_video(batch)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, model in variants.items():
            calls, start = 0, time.perf_counter()
            while calls < 1 or time.perf_counter() - start < seconds:
                model.embed_video(batch)
                calls += 1
            runs[name].append(calls * len(batch) / (time.perf_counter() - start))
    return {name: float(np.median(v)) for name, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SavedModel directory (the stand-in, or a converted checkpoint)")
    parser.add_argument("--clips", type=int, default=16, help="clips the deviation is measured on")
    parser.add_argument("--corpus", type=int, default=48, help="clips the text queries' top-10 is taken from (0: skip)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per variant and round")
    parser.add_argument("--no_speed", action="store_true", help="deviation only")
    parser.add_argument("--seed", type=int, default=1000, help="first seed of the clips (other seeds: other corpora)")
    args = parser.parse_args()

    variants = load_variants(args.model)
    clips = natural_clips(max(args.clips, args.corpus), seed=args.seed)
    outputs = {name: embed(model, clips) for name, model in variants.items()}
    reference = outputs["float32"]
    unit = reference["video_embedding"] / np.linalg.norm(reference["video_embedding"], axis=1, keepdims=True)
    pairs = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
    # How different the clips' float32 embeddings are from each other: rounding matters to a
    # ranking only relative to this spread.
    result = {"model": args.model, "clips": args.clips, "variants": {},
              "clip_to_clip_cosine": {"mean": float(pairs.mean()), "min": float(pairs.min())}}
    subset = {name: {k: v[: args.clips] for k, v in out.items()} for name, out in outputs.items()}
    rates = {} if args.no_speed else speeds(variants, clips, args.rounds, args.seconds)
    for name, model in variants.items():
        row = {"deviation": deviation(subset["float32"], subset[name]),
               "lowered_ops": model.lowering.lowered_ops if model.lowering else 0,
               "kept_float32": len(model.lowering.kept_float32) if model.lowering else 0}
        if rates:
            row["clips_per_s"] = rates[name]
            row["ratio"] = rates[name] / rates["float32"]
        result["variants"][name] = row
    if rates:  # why the text tower stays float32: its cost next to a clip's
        text = variants["float32"]
        sentences = TEXT_QUERIES * 4
        text.embed_text(sentences)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < 2:
            text.embed_text(sentences)
            calls += 1
        result["text_sentences_per_s"] = calls * len(sentences) / (time.perf_counter() - start)
    if args.corpus:
        lower = list(variants)[1]  # the precision as shipped
        queries = variants["float32"].embed_text(TEXT_QUERIES)
        result["corpus"] = args.corpus
        result["queries"] = len(TEXT_QUERIES)
        result["top10_overlap"] = top10_overlap(queries, reference["video_embedding"], outputs[lower]["video_embedding"])
        for name, row in result["variants"].items():
            row["top10_overlap"] = top10_overlap(queries, reference["video_embedding"], outputs[name]["video_embedding"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
