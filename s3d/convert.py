"""Convert the authors' PyTorch release into a hub-compatible SavedModel with real weights.

    python -m s3d.convert --checkpoint s3d_howto100m.pth --vocab s3d_dict.npy --output DIR

Every tensor of the checkpoint is mapped onto the TensorFlow network by its state_dict
key (conv kernels [out, in, kT, kH, kW] -> [kT, kH, kW, in, out], linear [out, in] ->
[in, out]); a missing, unexpected or mis-shaped tensor is an error that names it.
Needs PyTorch only to read the file: `pip install .[convert]` (CPU build).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Mapping

import numpy as np

from s3d.architecture import parameter_layout, torch_shape
from s3d.quiet import add_log_level_arguments, set_up_console

OPTIONAL_SUFFIX = ".num_batches_tracked"  # BatchNorm bookkeeping; not a parameter


class ConversionError(ValueError):
    """The checkpoint or vocabulary does not fit the S3D MIL-NCE layout; the message names what."""


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """The state_dict of a .pth file as numpy arrays (a `state_dict` wrapper and `module.` prefixes are undone)."""
    try:
        import torch
    except ImportError as e:
        raise ConversionError("reading a PyTorch checkpoint needs torch: pip install '.[convert]'") from e
    if not os.path.exists(path):
        raise ConversionError(f"--checkpoint {path!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path!r} holds a {type(state).__name__}, not a state_dict")
    out = {}
    for key, tensor in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        out[name] = tensor.detach().cpu().numpy()
    return out


def to_tensorflow(state: Mapping[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
    """Maps a PyTorch state_dict onto the TensorFlow network's parameters, strictly.

    Raises:
        ConversionError: naming every missing, unexpected or mis-shaped tensor, or a vocabulary
            whose size does not match the embedding table.
    """
    table = state.get("text_module.word_embd.weight")
    if table is not None and table.shape[0] != vocab_size + 1:
        raise ConversionError(
            f"the vocabulary has {vocab_size} words but text_module.word_embd.weight has {table.shape[0]} rows "
            f"(expected {vocab_size + 1}: one per word plus padding row 0): wrong --vocab for this checkpoint?"
        )
    layout = parameter_layout(vocab_size)
    bn_prefixes = {k.rsplit(".", 1)[0] for k in layout if k.endswith(".running_mean")}
    missing = [k for k in layout if k not in state]
    unexpected = [
        k for k in state
        if k not in layout and not (k.endswith(OPTIONAL_SUFFIX) and k[: -len(OPTIONAL_SUFFIX)] in bn_prefixes)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} ({len(missing)})")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})")
    params: dict[str, np.ndarray] = {}
    for key, tf_shape in layout.items():
        if key not in state:
            continue
        value = np.asarray(state[key])
        expected = torch_shape(key, tf_shape)
        if tuple(value.shape) != expected:
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {expected}")
            continue
        if value.ndim == 5:  # conv [out, in, kT, kH, kW] -> [kT, kH, kW, in, out]
            value = value.transpose(2, 3, 4, 1, 0)
        elif value.ndim == 2 and not key.endswith("word_embd.weight"):  # linear [out, in] -> [in, out]
            value = value.T
        params[key] = np.ascontiguousarray(value, dtype=np.float32)
    if problems:
        raise ConversionError("checkpoint does not match the S3D MIL-NCE layout: " + "; ".join(problems))
    return params


def convert(checkpoint: str, vocab_path: str, output: str) -> dict:
    """Converts and exports; returns the provenance written next to the model."""
    from s3d.export import save_model
    from s3d.vocab import load_vocabulary

    try:
        words = load_vocabulary(vocab_path)
    except (OSError, ValueError) as e:
        raise ConversionError(f"--vocab: {e}") from e
    params = to_tensorflow(read_checkpoint(checkpoint), len(words))
    return save_model(output, params, words, {
        "kind": "converted",
        "trained": True,
        "source_checkpoint": os.path.basename(checkpoint),
        "checkpoint_sha256": sha256(checkpoint),
        "vocab_file": os.path.basename(vocab_path),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s3d.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the authors' s3d_howto100m.pth (a PyTorch state_dict)")
    parser.add_argument("--vocab", required=True, help="the authors' s3d_dict.npy (66,249 words)")
    parser.add_argument("--output", required=True, help="directory for the SavedModel (created)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty --output")
    add_log_level_arguments(parser)
    args = parser.parse_args(argv)
    set_up_console(args.log_level)  # before TensorFlow loads
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.force:
        parser.error(f"--output {args.output!r} exists and is not empty; pass --force to overwrite it")
    try:
        provenance = convert(args.checkpoint, args.vocab, args.output)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: converted from {provenance['source_checkpoint']} "
          f"(sha256 {provenance['checkpoint_sha256'][:12]}...), {provenance['vocab_size']} words", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
