"""pipeline.evaluate: the retrieval metrics, the authors' window formula, and the command end to end."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import evaluate
from synthetic.videos import write_video


def _direct(scores: np.ndarray) -> dict[str, float]:
    """The metrics computed one query at a time, from their definitions."""
    n = len(scores)
    found = []
    for i in range(n):
        better = [j for j in range(n) if scores[i, j] > scores[i, i]]
        found.append(len(better) + 1)
    found = np.array(found)
    return {"R@1": 100 * np.mean(found <= 1), "R@5": 100 * np.mean(found <= 5),
            "R@10": 100 * np.mean(found <= 10), "median_rank": float(np.median(found))}


def test_metrics_equal_a_direct_computation_including_ties():
    rng = np.random.default_rng(0)
    for n in (1, 3, 12, 40):
        scores = rng.normal(size=(n, n))
        assert evaluate.retrieval_metrics(scores) == pytest.approx(_direct(scores))
    # Hand-built: query 0 right at rank 1, query 1 at rank 3, query 2 tied with one other (rank 1).
    scores = np.array([[0.9, 0.1, 0.2],
                       [0.8, 0.1, 0.5],
                       [0.3, 0.7, 0.7]])
    assert list(evaluate.ranks(scores)) == [1, 3, 1]
    m = evaluate.retrieval_metrics(scores)
    assert m["R@1"] == pytest.approx(200 / 3) and m["R@5"] == 100.0 and m["median_rank"] == 1.0
    assert evaluate.retrieval_metrics(scores.T) == pytest.approx(_direct(scores.T))
    # Everything tied: every query at rank 1, as the best of the tied ranks.
    assert evaluate.retrieval_metrics(np.zeros((5, 5)))["R@1"] == 100.0
    with pytest.raises(ValueError, match="square"):
        evaluate.ranks(np.zeros((2, 3)))


def test_chance_is_what_random_scores_give():
    rng = np.random.default_rng(1)
    n = 50
    mean = np.mean([list(evaluate.retrieval_metrics(rng.normal(size=(n, n))).values()) for _ in range(400)], axis=0)
    expected = evaluate.chance(n)
    assert expected == {"R@1": 2.0, "R@5": 10.0, "R@10": 20.0, "median_rank": 25.5}
    np.testing.assert_allclose(mean, list(expected.values()), rtol=0.08)


def test_windows_follow_the_authors_formula():
    window = evaluate.NUM_FRAMES / evaluate.FPS  # 3.2 s
    # validation_youcook.csv's first segment, [47, 60): from 47 to 60 - 3.2 - 0.4 = 56.4, 10 evenly.
    starts = evaluate.window_starts(47, 60, 10, window)
    assert starts[0] == 47 and starts[-1] == pytest.approx(56.4) and np.allclose(np.diff(starts), 9.4 / 9)
    # A segment shorter than a window and its margin: every window at its start.
    assert list(evaluate.window_starts(5, 8, 4, window)) == [5, 5, 5, 5]
    # A whole MSR-VTT video of 10 s, 4 windows: 0, 2.133, 4.267, 6.4.
    np.testing.assert_allclose(evaluate.window_starts(0, 10, 4, window), [0, 6.4 / 3, 12.8 / 3, 6.4])


def test_the_command_end_to_end_on_synthetic_pairs(standin_dir, tmp_path, capsys):
    root = tmp_path / "youcook"
    (root / "validation" / "226").mkdir(parents=True)
    write_video(str(root / "validation" / "226" / "vidA.mp4"), 60, fps=10, width=64, height=48)
    write_video(str(root / "vidB.mp4"), 50, fps=10, width=48, height=64)
    pairs = tmp_path / "validation_youcook.csv"
    with open(pairs, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["end", "start", "task", "text", "video_id"])
        writer.writerows([[4, 0, 226, "pick the ends off", "vidA"], [6, 2, 226, "cut an apple", "vidA"],
                          [5, 1, 101, "pour the oil", "vidB"], [3, 0, 101, "no such video", "missing"]])
    output = tmp_path / "eval"
    args = ["--pairs", str(pairs), "--video_root", str(root), "--output", str(output), "--model", standin_dir,
            "--num_windows", "3", "--num_frames", "8", "--size", "64"]
    assert evaluate.main(args) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["pairs"], metrics["scored"], metrics["failed"], metrics["format"]) == (4, 3, 1, "youcook2")
    assert metrics["published"]["R@1"] == 15.1 and metrics["chance"]["median_rank"] == 2.0
    assert metrics["protocol"] == {"num_windows": 3, "num_frames": 8, "fps": 5.0, "size": 64, "window_sec": 1.6,
                                   "margin_sec": 0.4, "extra_sec": 0.1, "crop": "center"}
    table = pq.read_table(output / "pairs.parquet").to_pylist()
    assert [r["video_id"] for r in table] == ["vidA", "vidA", "vidB", "missing"]
    assert table[0]["uri"].endswith(os.path.join("validation", "226", "vidA.mp4")) and table[2]["uri"].endswith("vidB.mp4")
    assert "FileNotFoundError" in table[3]["error"] and table[3]["video_embedding"] is None
    # The figures recompute from the embeddings written.
    v = np.array([r["video_embedding"] for r in table[:3]])
    t = np.array([r["text_embedding"] for r in table[:3]])
    assert evaluate.retrieval_metrics(t @ v.T) == pytest.approx(metrics["text_to_video"])
    assert evaluate.retrieval_metrics(v @ t.T) == pytest.approx(metrics["video_to_text"])
    # Two windows of different segments of one video differ: the segments were really sampled.
    assert not np.allclose(v[0], v[1])
    out = capsys.readouterr().out
    assert "chance (3 pairs)" in out and "published" in out and "untrained stand-in" in out


def test_own_pairs_and_bad_input(standin_dir, tmp_path, capsys):
    video = write_video(str(tmp_path / "v.mp4"), 40, fps=10, width=64, height=48)
    own = tmp_path / "pairs.jsonl"
    own.write_text(json.dumps({"uri": "v.mp4", "caption": "a dog"}) + "\n" +
                   json.dumps({"uri": video, "caption": "a cat", "start_sec": 1, "end_sec": 3}) + "\n")
    assert evaluate.main(["--pairs", str(own), "--video_root", str(tmp_path), "--output", str(tmp_path / "o"),
                          "--model", standin_dir, "--num_windows", "2", "--num_frames", "8", "--size", "64"]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (metrics["format"], metrics["scored"], metrics["published"]) == ("own", 2, None)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert evaluate.main(["--pairs", str(bad), "--output", str(tmp_path / "x")]) == 2
    assert "none of the formats" in capsys.readouterr().err
