"""A linear probe on `mixed_5c`, read straight from an extraction run's Parquet tables.

    python examples/linear_probe.py --features PREFIX --labels labels.csv [--level clips|videos]

`labels.csv` has `video_id,label`. The model card recommends `mixed_5c` (1024-d) for
linear classifiers. This trains multinomial logistic regression with numpy on a split by
video (a video's clips never sit on both sides) and prints the held-out accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pyarrow.dataset as ds


def load_features(prefix: str, level: str = "clips") -> tuple[list[str], np.ndarray]:
    """(video_id per row, mixed_5c [N, 1024]) of a completed run's `clips` or `videos` table."""
    table = ds.dataset(f"{prefix}/{level}", format="parquet").to_table(columns=["video_id", "mixed_5c"])
    return table.column("video_id").to_pylist(), np.stack(table.column("mixed_5c").to_numpy(zero_copy_only=False))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def train_probe(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 500, lr: float = 0.5) -> tuple[np.ndarray, ...]:
    """Softmax regression on L2-normalized, centred features; returns (mean, weights, bias).

    Rows are scaled to unit length and centred, not standardized per dimension: with few
    labelled videos, dividing each of the 1024 dimensions by its own spread amplifies the
    ones that are noise (measured on two synthetic scene kinds at 64 px: 0.54 held-out accuracy
    standardized, 0.88 normalized).
    """
    x = _unit(x)
    mean = x.mean(0)
    z = x - mean
    w, b = np.zeros((x.shape[1], classes)), np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(z)
        w -= lr * (z.T @ grad + 1e-3 * w)
        b -= lr * grad.sum(0)
    return mean, w, b


def predict(probe: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    mean, w, b = probe
    return np.argmax((_unit(x) - mean) @ w + b, axis=1)


def evaluate(prefix: str, labels: dict[str, str], level: str = "clips", test_share: float = 0.34, seed: int = 0) -> dict:
    """Trains on some videos, tests on the others; returns the held-out accuracy and counts."""
    ids, x = load_features(prefix, level)
    names = sorted(set(labels.values()))
    keep = [i for i, v in enumerate(ids) if v in labels]
    ids, x = [ids[i] for i in keep], x[keep]
    y = np.array([names.index(labels[v]) for v in ids])
    rng = np.random.default_rng(seed)
    test_videos = set()
    for name in names:  # a share of each class's videos is held out
        videos = sorted({v for v in ids if labels[v] == name})
        rng.shuffle(videos)
        test_videos.update(videos[: max(1, round(test_share * len(videos)))])
    test = np.array([v in test_videos for v in ids])
    probe = train_probe(x[~test], y[~test], len(names))
    accuracy = float((predict(probe, x[test]) == y[test]).mean())
    return {"classes": names, "train_rows": int((~test).sum()), "test_rows": int(test.sum()), "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="output prefix of a completed extraction run")
    parser.add_argument("--labels", required=True, help="CSV with video_id,label")
    parser.add_argument("--level", choices=["clips", "videos"], default="clips")
    args = parser.parse_args()
    with open(args.labels, newline="") as f:
        labels = {row["video_id"]: row["label"] for row in csv.DictReader(f)}
    print(json.dumps(evaluate(args.features, labels, args.level)))


if __name__ == "__main__":
    main()
