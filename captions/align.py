"""Which narration is grounded in what is on screen: captions scored against a video's clips.

Scores are the model card's: the dot product of a caption's `text_embedding` with a clip's
`video_embedding`. For each caption:
- `overlap_score`: the mean score over the clips whose span overlaps the caption's (None when no
  clip does: the caption lies past the last clip, or between clips of a sparse sampling);
- the best clip within `window_sec` of the caption's span (ASR narration is often a few seconds
  off what it describes): `best_clip_index`, `best_clip_score`, and `best_clip_offset_sec`, the
  clip's centre minus the caption's centre;
- `grounded`: the caption's best clip over the whole video lies within that window, that is, the
  model finds what the caption says on screen near when it is said, and nowhere better. None when
  the window holds no clip, or the video has fewer than MIN_CLIPS clips (a rule that any caption
  of a one-clip video meets says nothing).
A video's `grounded_fraction` is its grounded captions over those with a verdict.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MIN_CLIPS = 3


@dataclasses.dataclass(frozen=True)
class Alignment:
    overlap_score: float | None
    best_clip_index: int | None
    best_clip_score: float | None
    best_clip_offset_sec: float | None
    grounded: bool | None


def align(caption_spans: np.ndarray, text_embeddings: np.ndarray, clip_spans: np.ndarray,
          clip_indices: np.ndarray, video_embeddings: np.ndarray, window_sec: float) -> list[Alignment]:
    """Alignments of N captions with M clips of one video.

    caption_spans [N, 2] and clip_spans [M, 2]: (start_sec, end_sec); text_embeddings [N, D];
    video_embeddings [M, D]; clip_indices [M]: each clip's clip_index.
    """
    caption_spans = np.asarray(caption_spans, np.float64).reshape(-1, 2)
    clip_spans = np.asarray(clip_spans, np.float64).reshape(-1, 2)
    if not len(clip_spans):
        return [Alignment(None, None, None, None, None) for _ in caption_spans]
    scores = np.asarray(text_embeddings, np.float32) @ np.asarray(video_embeddings, np.float32).T  # [N, M]
    clip_centres = clip_spans.mean(axis=1)
    best_overall = scores.argmax(axis=1)
    out = []
    for i, (start, end) in enumerate(caption_spans):
        overlap = (clip_spans[:, 0] < end) & (clip_spans[:, 1] > start)
        near = (clip_spans[:, 0] < end + window_sec) & (clip_spans[:, 1] > start - window_sec)
        overlap_score = float(scores[i, overlap].mean()) if overlap.any() else None
        if not near.any():
            out.append(Alignment(overlap_score, None, None, None, None))
            continue
        candidates = np.flatnonzero(near)
        best = candidates[scores[i, candidates].argmax()]
        grounded = bool(near[best_overall[i]]) if len(clip_spans) >= MIN_CLIPS else None
        out.append(Alignment(overlap_score, int(clip_indices[best]), float(scores[i, best]),
                             float(clip_centres[best] - (start + end) / 2), grounded))
    return out


def grounded_fraction(alignments: list[Alignment]) -> float | None:
    """Grounded captions over captions with a verdict; None when none has one."""
    verdicts = [a.grounded for a in alignments if a.grounded is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None
