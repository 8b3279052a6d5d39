"""Generated clip embeddings shaped like a real run's, for the index's tests and benchmarks.

Independent Gaussian vectors have no neighbourhoods (every vector is about as far from a
query as every other), which no real embedding table looks like and on which an approximate
index cannot be measured. Here each video sits near one of a set of topics, and its clips
drift from the video's centre in a random walk, with noise of their own.
"""

from __future__ import annotations

import numpy as np

DIM = 512
CLIPS_PER_VIDEO = 20


def topics(count: int = 2000, seed: int = 0) -> np.ndarray:
    """`count` random unit vectors: what the videos are about."""
    vectors = np.random.default_rng(seed).standard_normal((count, DIM), np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clip_embeddings(centres: np.ndarray, videos: int, rng: np.random.Generator,
                    clips_per_video: int = CLIPS_PER_VIDEO) -> np.ndarray:
    """float32 [videos * clips_per_video, DIM], video by video, clips in order."""
    scale = 1 / np.sqrt(DIM)
    centre = centres[rng.integers(0, len(centres), videos)] + 0.6 * scale * rng.standard_normal((videos, DIM), np.float32)
    steps = 0.12 * scale * rng.standard_normal((videos, clips_per_video, DIM), np.float32)
    noise = 0.35 * scale * rng.standard_normal((videos, clips_per_video, DIM), np.float32)
    return (centre[:, None] + np.cumsum(steps, axis=1) + noise).reshape(-1, DIM).astype(np.float32)


def queries_near(vectors: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Queries near the data, as a sentence lands near the clips it shows: a random clip plus noise."""
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), count, replace=False)]
    return (picked + 0.3 / np.sqrt(DIM) * rng.standard_normal(picked.shape, np.float32)).astype(np.float32)
