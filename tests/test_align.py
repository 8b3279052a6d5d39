"""Captions aligned with clips on embeddings where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from captions.align import Alignment, align, grounded_fraction


def _unit(rng, n, d=16):
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def video():
    """Ten 3 s clips; clip k's embedding is topic k (orthogonal-ish unit vectors)."""
    rng = np.random.default_rng(0)
    topics = _unit(rng, 10)
    spans = np.array([[3.0 * k, 3.0 * k + 3.0] for k in range(10)])
    return topics, spans, np.arange(10)


def test_a_caption_said_where_it_is_shown_is_grounded_and_scores_its_clip(video):
    topics, spans, indices = video
    # Said during clip 4 (12-15 s) about clip 4; said at 10-11 s (clip 3) about clip 4: 2.5 s early.
    captions = np.array([[12.5, 14.0], [10.0, 11.0]])
    got = align(captions, topics[[4, 4]], spans, indices, topics, window_sec=5.0)
    assert got[0].best_clip_index == 4 and got[0].grounded is True and got[0].best_clip_offset_sec == pytest.approx(0.25)
    assert got[0].overlap_score == pytest.approx(1.0, abs=1e-6)  # its one overlapping clip is its own topic
    assert got[1].best_clip_index == 4 and got[1].grounded is True
    assert got[1].best_clip_offset_sec == pytest.approx(13.5 - 10.5)
    assert got[1].overlap_score == pytest.approx(float(topics[4] @ topics[3]), abs=1e-6)  # it overlaps clip 3 only


def test_a_caption_about_something_far_away_is_not_grounded(video):
    topics, spans, indices = video
    got = align(np.array([[1.0, 2.0]]), topics[[8]], spans, indices, topics, window_sec=3.0)[0]
    assert got.grounded is False and got.best_clip_index in (0, 1)  # the best within reach, not clip 8
    # A mix of topics 0 and 8 said at 1-2 s: clip 0 is within the window; topic 8 wins overall only if weighed more.
    mixed = topics[0] * 0.8 + topics[8] * 0.6
    assert align(np.array([[1.0, 2.0]]), mixed[None], spans, indices, topics, 3.0)[0].grounded is True


def test_what_has_no_clip_near_and_tiny_videos_get_no_verdict(video):
    topics, spans, indices = video
    past_the_end = align(np.array([[60.0, 62.0]]), topics[[9]], spans, indices, topics, window_sec=5.0)[0]
    assert past_the_end == Alignment(None, None, None, None, None)
    two_clips = align(np.array([[0.5, 1.0]]), topics[[0]], spans[:2], indices[:2], topics[:2], 5.0)[0]
    assert two_clips.best_clip_index == 0 and two_clips.grounded is None
    assert align(np.array([[0.0, 1.0]]), topics[[0]], np.empty((0, 2)), np.empty(0), np.empty((0, 16)), 5.0) == \
        [Alignment(None, None, None, None, None)]


def test_the_grounded_fraction_counts_verdicts_only():
    a = [Alignment(0.1, 1, 0.2, 0.0, True), Alignment(0.1, 1, 0.2, 0.0, False), Alignment(None, None, None, None, None)]
    assert grounded_fraction(a) == 0.5
    assert grounded_fraction(a[2:]) is None


def test_random_embeddings_are_grounded_about_as_often_as_the_window_covers(video):
    """With nothing to find (the stand-in's case), a caption is grounded by chance: the share of the
    video's clips its window reaches."""
    _, spans, indices = video
    rng = np.random.default_rng(1)
    clips = _unit(rng, 10, 64)
    starts = rng.uniform(0, 27, 4000)
    got = align(np.stack([starts, starts + 1.0], axis=1), _unit(rng, 4000, 64), spans, indices, clips, window_sec=3.0)
    reach = [sum(1 for s in spans if s[0] < b + 3.0 + 1.0 and s[1] > b - 3.0) / 10 for b in starts]
    assert grounded_fraction(got) == pytest.approx(np.mean(reach), abs=0.03)
