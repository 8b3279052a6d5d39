"""Describe an S3D MIL-NCE model: signatures, provenance, parameter count; optionally a smoke run.

    python -m s3d.inspect DIR_OR_HANDLE [--smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from s3d.quiet import add_log_level_arguments, set_up_console

_STATISTICS = ("running_mean", "running_var", "moving_mean", "moving_variance")


def _towers(model) -> dict:
    """The towers with Reusable SavedModel attributes: the module itself (video) and `module.text`."""
    towers = {"video": model._module, "text": getattr(model._module, "text", None)}
    return {name: t for name, t in towers.items()
            if t is not None and hasattr(t, "variables") and hasattr(t, "trainable_variables")}


def parameter_count(model) -> int:
    """Learned parameters: every variable but BatchNorm statistics, by the variables' own names.

    Read from the loaded object's `variables` (and its text tower's) where it has them (this
    project's exports, TF1 Hub modules), else from the SavedModel's checkpoint keys.
    """
    import os

    import tensorflow as tf

    variables = [v for tower in _towers(model).values() for v in tower.variables]
    if variables:
        unique = {id(v): v for v in variables}.values()
        return sum(int(np.prod(v.shape)) for v in unique if not any(s in v.name for s in _STATISTICS))
    skip = (*_STATISTICS, "_CHECKPOINTABLE_OBJECT_GRAPH")
    listed = tf.train.list_variables(os.path.join(model.path, "variables", "variables"))
    return sum(int(np.prod(shape)) for name, shape in listed if not any(s in name for s in skip))


def variable_counts(model) -> dict:
    """Trainable and non-trainable variables (and their values) of the video and text towers.

    From TF Hub's Reusable SavedModel attributes (`variables`, `trainable_variables`, and
    `text` for this project's exports); a module without them (a SavedModel of signatures
    only) is reported as not fine-tunable.
    """
    counts: dict = {}
    for name, tower in _towers(model).items():
        trainable = {id(v) for v in tower.trainable_variables}
        counts[name] = {
            "trainable_variables": len(trainable),
            "non_trainable_variables": sum(id(v) not in trainable for v in tower.variables),
            "trainable_parameters": sum(int(np.prod(v.shape)) for v in tower.trainable_variables),
        }
    if not counts:
        return {"fine_tunable": False}
    return {"fine_tunable": "video" in counts, **counts}


def describe(model) -> dict:
    sigs = {}
    for name, fn in sorted(model._module.signatures.items()):
        _, inputs = fn.structured_input_signature
        sigs[name] = {
            "inputs": {k: f"{v.dtype.name}{v.shape.as_list()}" for k, v in inputs.items()},
            "outputs": {k: f"{v.dtype.name}{v.shape.as_list()}" for k, v in fn.structured_outputs.items()},
        }
    return {
        "handle": model.handle,
        "signatures": sigs,
        "provenance": model.provenance,
        "parameters": parameter_count(model),
        "variables": variable_counts(model),
    }


def smoke(model, frames: int = 32, size: int = 224) -> dict:
    """Embeds one synthetic clip (a moving gradient) and two sentences; returns shapes and timings."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(size)[None, :, None]
    x = np.arange(size)[None, None, :]
    gray = ((x + y + 8 * t) % 256).astype(np.uint8)
    clip = np.stack([gray, 255 - gray, np.full_like(gray, 128)], axis=-1)
    start = time.perf_counter()
    mixed_5c, video_embedding = model.embed_video(clip)
    video_seconds = time.perf_counter() - start
    text_embedding = model.embed_text(["cut the tomato", "a dog runs on the beach"])
    return {
        "clip": list(clip.shape),
        "mixed_5c": list(mixed_5c.shape),
        "video_embedding": list(video_embedding.shape),
        "text_embedding": list(text_embedding.shape),
        "video_seconds_first_call": round(video_seconds, 2),
        "finite": bool(np.isfinite(mixed_5c).all() and np.isfinite(video_embedding).all()),
        "score_first_sentence": float(text_embedding[0] @ video_embedding[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s3d.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("handle", help="SavedModel directory, gs:// path or TF Hub URL")
    parser.add_argument("--smoke", action="store_true", help="also embed one synthetic 32x224x224 clip and two sentences")
    add_log_level_arguments(parser)
    args = parser.parse_args(argv)
    set_up_console(args.log_level)  # before TensorFlow loads

    from s3d.loader import ModelLoadError, load_s3d

    try:
        model = load_s3d(args.handle)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = describe(model)
    if args.smoke:
        report["smoke"] = smoke(model)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
