"""Fine-tuning the video tower through hub.KerasLayer: a classifier on top, every layer trained.

    python examples/fine_tune.py --model DIR_OR_HANDLE

Works on this project's exports (`s3d.export`, `s3d.convert`), which follow TF Hub's
Reusable SavedModel API; the published module is in the TF1 Hub format, which TF2 cannot
fine-tune. In training mode BatchNorm uses the batch's statistics, like the published
module's "train" graph variant. Here a few steps on random clips show the mechanics;
feed your own clips (float32 [B, T, H, W, 3] in [0, 1]) and labels instead.
"""

from __future__ import annotations

import argparse

import numpy as np


def build(model: str, classes: int, seed: int = 0, learning_rate: float = 0.001):
    import tensorflow_hub as hub
    import tf_keras

    tf_keras.utils.set_random_seed(seed)  # the new layer's initial weights

    encoder = hub.KerasLayer(model, trainable=True, output_key="video_embedding")
    inputs = tf_keras.Input(shape=(None, None, None, 3))
    classifier = tf_keras.Model(inputs, tf_keras.layers.Dense(classes)(encoder(inputs)))
    classifier.compile(optimizer=tf_keras.optimizers.SGD(learning_rate),
                       loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=3, help="epochs over the 4 random clips (default 3)")
    parser.add_argument("--learning_rate", type=float, default=0.001, help="plain SGD's step (default 0.001)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    clips = rng.uniform(0, 1, (4, 8, 64, 64, 3)).astype(np.float32)
    labels = np.array([0, 1, 0, 1])
    classifier = build(args.model, classes=2, learning_rate=args.learning_rate)
    history = classifier.fit(clips, labels, batch_size=2, epochs=args.steps, verbose=0)
    print("loss per epoch:", [round(v, 4) for v in history.history["loss"]])


if __name__ == "__main__":
    main()
