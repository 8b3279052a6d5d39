"""Export the S3D MIL-NCE network as a SavedModel with the TF Hub module's interface.

    python -m s3d.export --output DIR [--seed N] [--vocab FILE | --vocab_size N]

With no weights given this writes the untrained, seeded stand-in used by the tests,
benchmarks and demo; its provenance file says so. `s3d.convert` (real weights)
calls `save_model` with the authors' parameters.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np

from s3d import package_version
from s3d.quiet import add_log_level_arguments, set_up_console

PROVENANCE_FILE = os.path.join("assets.extra", "s3d_provenance.json")
# The text tower's vocabulary, one word a line (the graph has its own copy): lets callers
# count the words of a sentence the model knows without running TensorFlow.
VOCAB_FILE = os.path.join("assets.extra", "s3d_vocab.txt")


def save_model(
    output: str, params: dict[str, np.ndarray], vocabulary: list[str], provenance: dict
) -> dict:
    """Writes the SavedModel and its provenance file; returns the provenance as written."""
    import tensorflow as tf

    from s3d.network import S3DNetwork, reusable, signatures

    network = S3DNetwork(params, vocabulary)
    # The signatures are the hub module's two, in inference mode; the saved object itself
    # follows TF Hub's Reusable SavedModel API, so the export can be fine-tuned (s3d.network.reusable).
    tf.saved_model.save(reusable(network), output, signatures=signatures(network))
    vocab_digest = hashlib.sha256("\n".join(vocabulary).encode("utf-8")).hexdigest()
    provenance = {
        "model": "S3D-G MIL-NCE (deepmind/mil-nce/s3d/1 interface)",
        **provenance,
        "vocab_size": len(vocabulary),
        "vocab_sha256": vocab_digest,
        "package_version": package_version(),
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path = os.path.join(output, PROVENANCE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(provenance, indent=2, sort_keys=True))
    with tf.io.gfile.GFile(os.path.join(output, VOCAB_FILE), "w") as f:
        f.write("\n".join(vocabulary) + "\n")
    return provenance


def export_standin(output: str, seed: int = 0, vocabulary: list[str] | None = None, vocab_source: str = "bundled") -> dict:
    """Exports the untrained stand-in: random weights from `seed`, the given or bundled vocabulary."""
    from s3d.network import calibrated_parameters, init_parameters
    from s3d.vocab import standin_vocabulary

    vocabulary = vocabulary if vocabulary is not None else standin_vocabulary()
    params = calibrated_parameters(init_parameters(len(vocabulary), seed), vocabulary, seed)
    return save_model(
        output,
        params,
        vocabulary,
        {"kind": "standin", "trained": False, "seed": seed, "vocab_source": vocab_source,
         "batchnorm": "running statistics calibrated on synthetic clips, so outputs depend on the input",
         "note": "untrained stand-in with the real module's architecture and interface; "
                 "its embeddings carry no meaning"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s3d.export",
        description="Write the untrained S3D MIL-NCE stand-in as a SavedModel with the hub module's "
        "`video` and `text` signatures.",
    )
    parser.add_argument("--output", required=True, help="directory to write the SavedModel to (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", help="vocabulary file: the authors' s3d_dict.npy or a .txt, one word a line "
                       "(default: the bundled stand-in list)")
    vocab.add_argument("--vocab_size", type=int, help="pad the bundled list with made-up words to this size "
                       "(66249 gives the real table size)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty --output directory")
    add_log_level_arguments(parser)
    args = parser.parse_args(argv)
    set_up_console(args.log_level)  # before TensorFlow loads

    from s3d.vocab import load_vocabulary, synthetic_vocabulary

    if args.vocab_size is not None and args.vocab_size < 1:
        parser.error(f"--vocab_size must be >= 1, got {args.vocab_size}")
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.force:
        parser.error(f"--output {args.output!r} exists and is not empty; pass --force to overwrite it")
    if args.vocab:
        try:
            words, source = load_vocabulary(args.vocab), os.path.abspath(args.vocab)
        except (OSError, ValueError) as e:
            parser.error(f"--vocab: {e}")
    elif args.vocab_size:
        words, source = synthetic_vocabulary(args.vocab_size), f"synthetic:{args.vocab_size}"
    else:
        words, source = None, "bundled"
    start = time.perf_counter()
    provenance = export_standin(args.output, seed=args.seed, vocabulary=words, vocab_source=source)
    print(
        f"wrote untrained stand-in (seed {args.seed}, {provenance['vocab_size']} words) to {args.output} "
        f"in {time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
