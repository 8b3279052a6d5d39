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
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import BENCH_CACHE, run_json

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


def converted_checkpoint(directory: str) -> str | None:
    """A random PyTorch S3D saved in the authors' checkpoint layout and converted (s3d.convert); None without torch."""
    output = os.path.join(directory, "converted")
    if os.path.exists(os.path.join(output, "saved_model.pb")):
        return output
    try:
        import torch
    except ImportError:
        return None
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from torch_reference import S3D, randomized

    from s3d.convert import convert
    from s3d.vocab import synthetic_vocabulary

    words = synthetic_vocabulary(600)
    torch.manual_seed(0)
    os.makedirs(directory, exist_ok=True)
    checkpoint, vocab = os.path.join(directory, "s3d_howto100m.pth"), os.path.join(directory, "s3d_dict.npy")
    torch.save(randomized(S3D(words), seed=0).state_dict(), checkpoint)
    np.save(vocab, np.array(words, dtype=object), allow_pickle=True)
    convert(checkpoint, vocab, output)
    return output


def precision_section(model: str, log: Callable[[str], None]) -> str:
    log("precision: stand-in, every variant alternated in one process")
    r = run_json(["benchmarks.precision", "--model", model])
    others = {}
    for seed in (2000, 3000):  # other corpora: the top-10 agreement of 24 queries over 48 clips is noisy
        log(f"precision: stand-in, corpus of seed {seed}, deviation only")
        others[seed] = run_json(["benchmarks.precision", "--model", model, "--no_speed", "--seed", str(seed)])
    log("precision: converted checkpoint (random weights, authors' layout), deviation only")
    converted = converted_checkpoint(os.path.join(BENCH_CACHE, "checkpoint"))
    c = run_json(["benchmarks.precision", "--model", converted, "--no_speed"]) if converted else None

    def dev(row, key):
        d = row["deviation"][key]
        return f"{d['mean']:.4f} / {d['min']:.4f}"

    lines = [
        "## Precision (video tower, T=32, 224x224, batch 4, CPU)",
        "",
        "`python -m benchmarks.precision`: every variant loaded in one process and timed in alternation "
        f"(3 rounds, median). Deviation on {r['clips']} natural-looking clips (smooth moving patterns) fed as "
        "uint8, as the job feeds them: cosine to float32's, mean / min. Top-10: for "
        f"{r['queries']} text queries over {r['corpus']} clips, the share of each query's top-10 clips that "
        "float32 also ranks in its top-10, averaged over the queries, on three corpora (seeds 1000, 2000, "
        "3000; the speed run uses the first). `bfloat16` is what `--precision bfloat16` runs; the other rows "
        "keep another number of convolutions from the images in float32 (`s3d.precision.keep_float32`).",
        "",
        "| variant | ops lowered | clips/s | vs float32 | video_embedding cosine | mixed_5c cosine "
        "| top-10 (3 corpora) | top-10 mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in r["variants"].items():
        tops = [row["top10_overlap"]["mean"]] + [o["variants"][name]["top10_overlap"]["mean"] for o in others.values()]
        lines.append(f"| {name} | {row['lowered_ops']} | {row['clips_per_s']:.2f} | {row['ratio']:.2f}x | "
                     f"{dev(row, 'video_embedding')} | {dev(row, 'mixed_5c')} | "
                     f"{' / '.join(f'{t:.3f}' for t in tops)} | {sum(tops) / len(tops):.3f} |")
    lines += [
        "",
        f"The text tower stays float32: it embeds {r['text_sentences_per_s']:.0f} sentences/s here, against "
        f"{r['variants']['float32']['clips_per_s']:.2f} clips/s for the video tower, so lowering it would save "
        "nothing measurable.",
        "",
        "float16 is for GPUs; on this CPU the float16 rewrite changes nothing (it only rewrites ops placed "
        "on a GPU with tensor cores), so it is not in the table. See docs/scale.md.",
    ]
    if c:
        b = c["variants"]["bfloat16"]
        spread = c["clip_to_clip_cosine"]["mean"]
        lines += [
            "",
            "A converted checkpoint in the authors' layout with random weights and BatchNorm statistics (not "
            "calibrated like the stand-in's), `--precision bfloat16` as shipped: video_embedding cosine to "
            f"float32 {dev(b, 'video_embedding')}, mixed_5c {dev(b, 'mixed_5c')}; top-10 agreement "
            f"{b['top10_overlap']['mean']:.3f} (worst query {b['top10_overlap']['min']:.1f}). Random BatchNorm "
            "statistics map every clip to nearly the same embedding (different clips' float32 embeddings are at "
            f"cosine {spread:.5f} to each other), so the cosine to float32 says little and the top-10 order is "
            "decided by differences of the size of the rounding. It is the hard case, reported without a bar; "
            "a trained checkpoint cannot be measured here (no trained weights on these machines).",
        ]
    else:
        lines += ["", "The converted-checkpoint row needs PyTorch (`pip install -e '.[convert]'`); it was not run."]
    return "\n".join(lines)


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
