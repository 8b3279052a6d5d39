"""Zero-shot text-video retrieval, the paper's evaluation: does this extraction reproduce the published numbers?

    python -m pipeline.evaluate --pairs validation_youcook.csv --video_root /data/youcook2 --output out/eval
    python -m pipeline.evaluate --pairs msrvtt_test.csv --video_root gs://bucket/msrvtt --output out/eval

The protocol of the authors' evaluation code (antoine77340/MIL-NCE_HowTo100M: eval_youcook.py,
eval_msrvtt.py, their loaders and metrics.py), with their defaults as this command's:
- each pair's segment (a YouCook2 segment; a whole MSR-VTT video) is sampled by `--num_windows`
  windows whose starts are spread evenly, `linspace(start, max(start, end - window - 0.4), N)`;
  a window is `--num_frames` frames at `--fps` (16 at 5 fps: 3.2 s), centre-cropped to a square
  and resized to `--size`;
- a pair's video embedding is the mean of its windows' `video_embedding`s; the caption's is the
  text tower's `text_embedding`; the score of caption i with video j is their dot product;
- R@1, R@5, R@10 (in percent) and the median rank of the right video for each caption
  (text-to-video), and of the right caption for each video (video-to-text).

Two departures, both only where the authors' code is undefined or needs what is not here:
- ties: a right answer tied with others takes the best of their ranks (1 + the number of strictly
  higher scores), what the authors' `compute_metrics` gives when nothing ties (with ties it counts
  a row once per tied score);
- a window that runs past the end of the video repeats its last frame, where ffmpeg's output is
  padded with black; the window formula keeps windows 0.4 s inside the segment, so this happens
  only for segments shorter than a window.

A pair whose video cannot be read is recorded with its error and left out of the figures; the
report says how many were scored.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from decoder import DecodeOptions, VideoError
from decoder.process import DecoderProcess
from pipeline.console import configure_logging
from s3d.quiet import add_log_level_arguments
from storage.paths import is_local, opener_for

log = logging.getLogger(__name__)

# The authors' evaluation defaults: args.py (num_frames 16, fps 5, video_size 224) and the README's
# commands for both benchmarks (--num_windows_test=10).
NUM_WINDOWS, NUM_FRAMES, FPS, SIZE = 10, 16, 5.0, 224
MARGIN_SEC = 0.4  # the last window ends this far before the segment's end (the loaders' formula)
EXTRA_SEC = 0.1  # each window is decoded this much longer than its frames (ffmpeg's -t num_sec + 0.1)
KS = (1, 5, 10)

# The published zero-shot figures, from the authors' README (the TPU TensorFlow implementation, the
# module this project's --model loads by default).
PUBLISHED = {
    "msrvtt": {"benchmark": "MSR-VTT (1k test pairs)", "R@1": 9.9, "R@5": 24.0, "R@10": 32.4, "median_rank": 29.5},
    "youcook2": {"benchmark": "YouCook2 (validation segments)", "R@1": 15.1, "R@5": 38.0, "R@10": 51.2,
                 "median_rank": 10.0},
}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")


# ---- the protocol ---------------------------------------------------------------------------------


def window_starts(start: float, end: float, num_windows: int, window_sec: float) -> np.ndarray:
    """Where a segment's windows start: evenly from its start to `window_sec + 0.4` before its end."""
    return np.linspace(start, max(start, end - window_sec - MARGIN_SEC), num_windows)


def ranks(scores: np.ndarray) -> np.ndarray:
    """For each row (a query) of a square score matrix whose diagonal is the right answer: its rank,
    1 + the number of answers scoring strictly higher (ties go the query's way)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or not len(scores):
        raise ValueError(f"a non-empty square score matrix is needed, got shape {scores.shape}")
    right = np.diag(scores)[:, None]
    return 1 + (scores > right).sum(axis=1)


def retrieval_metrics(scores: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 in percent and the median rank, the rows being the queries."""
    r = ranks(scores)
    out = {f"R@{k}": float(np.mean(r <= k) * 100) for k in KS}
    out["median_rank"] = float(np.median(r))
    return out


def chance(n: int) -> dict[str, float]:
    """What random scores give on average for n pairs: R@k = k/n, median rank (n + 1) / 2."""
    out = {f"R@{k}": min(k, n) / n * 100 for k in KS}
    out["median_rank"] = (n + 1) / 2
    return out


# ---- pairs ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    key: str
    video_id: str
    caption: str
    uri: str | None  # None while the video is to be found under --video_root
    start_sec: float | None = None  # None: the video's start
    end_sec: float | None = None  # None: the video's end
    candidates: tuple[str, ...] = ()  # where the video may be, first found wins


def _join(root: str, *parts: str) -> str:
    return os.path.join(root, *parts) if is_local(root) else "/".join([root.rstrip("/"), *parts])


def read_pairs(path: str, video_root: str | None) -> tuple[str, list[Pair]]:
    """The pairs of a file in one of three formats, and which: 'youcook2' (the authors'
    validation_youcook.csv: start, end, task, text, video_id), 'msrvtt' (msrvtt_test.csv: key,
    vid_key, video_id, sentence) or 'own' (uri, caption, optional start_sec, end_sec; .csv or .jsonl).

    Raises:
        ValueError: a format none of these, or a row without what it needs.
    """
    from storage.objects import read_object

    text = read_object(path).decode("utf-8-sig")
    if path.lower().endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"--pairs {path}: no pairs")
    columns = set(rows[0])
    root = video_root or ""
    pairs = []
    if {"start", "end", "task", "text", "video_id"} <= columns:
        kind = "youcook2"
        for i, r in enumerate(rows):
            vid = r["video_id"]
            places = [_join(root, "validation", str(r["task"]), vid + ext) for ext in VIDEO_EXTENSIONS]
            places += [_join(root, vid + ext) for ext in VIDEO_EXTENSIONS]
            pairs.append(Pair(str(i), vid, r["text"], None, float(r["start"]), float(r["end"]), tuple(places)))
    elif {"video_id", "sentence"} <= columns:
        kind = "msrvtt"
        for i, r in enumerate(rows):
            vid = r["video_id"]
            pairs.append(Pair(r.get("key") or str(i), vid, r["sentence"], None, candidates=(_join(root, vid + ".mp4"),)))
    elif {"uri", "caption"} <= columns:
        kind = "own"
        for i, r in enumerate(rows):
            uri = r["uri"] if not video_root or "://" in r["uri"] or os.path.isabs(r["uri"]) else _join(root, r["uri"])
            number = lambda v: float(v) if v not in (None, "") else None  # noqa: E731
            pairs.append(Pair(str(i), r.get("video_id") or r["uri"], r["caption"], uri,
                              number(r.get("start_sec")), number(r.get("end_sec"))))
    else:
        raise ValueError(f"--pairs {path}: columns {sorted(columns)} are none of the formats: YouCook2's "
                         "(start,end,task,text,video_id), MSR-VTT's (key,vid_key,video_id,sentence) or "
                         "uri,caption[,start_sec,end_sec]")
    return kind, pairs


def _locate(pair: Pair) -> str:
    if pair.uri is not None:
        return pair.uri
    from storage.objects import object_exists

    for place in pair.candidates:
        if object_exists(place):
            return place
    raise FileNotFoundError(f"video {pair.video_id!r} is in none of: {', '.join(pair.candidates)}")


# ---- embedding ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Protocol:
    num_windows: int = NUM_WINDOWS
    num_frames: int = NUM_FRAMES
    fps: float = FPS
    size: int = SIZE

    @property
    def window_sec(self) -> float:
        return self.num_frames / self.fps

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(fps=self.fps, frames_per_clip=self.num_frames, size=self.size, crop="center", tail="pad")


def pair_windows(decoder: DecoderProcess, pair: Pair, uri: str, protocol: Protocol) -> np.ndarray:
    """uint8 [num_windows, num_frames, size, size, 3]: the pair's windows, as the protocol samples them."""
    options = protocol.decode_options()
    opener = opener_for(uri)
    start, end = pair.start_sec or 0.0, pair.end_sec
    if end is None:
        extent = decoder.read_extent(uri, options, opener)
        if extent.duration_sec is None:
            raise VideoError(uri, "the container declares no duration, so the windows cannot be spread over it")
        end = extent.duration_sec
    windows = []
    for s in window_starts(start, end, protocol.num_windows, protocol.window_sec):
        reader = decoder.reader(uri, options, float(s), float(s) + protocol.window_sec + EXTRA_SEC, opener=opener)
        clip = next(iter(reader), None)
        if clip is None:
            raise VideoError(uri, f"no frames in the window at {s:.2f} s")
        windows.append(clip.frames)
    return np.stack(windows)


def embed_pairs(model, pairs: list[Pair], protocol: Protocol, progress_every_sec: float = 10.0):
    """Each pair's mean video embedding (or its error) and every caption's text embedding."""
    videos: list[np.ndarray | None] = []
    errors: list[str | None] = []
    started = last = time.monotonic()
    with DecoderProcess() as decoder:
        for i, pair in enumerate(pairs):
            try:
                uri = _locate(pair)
                pair.uri = uri
                _, embedding = model.embed_video(pair_windows(decoder, pair, uri, protocol))
                videos.append(embedding.mean(axis=0))
                errors.append(None)
            except (VideoError, OSError) as e:
                videos.append(None)
                errors.append(f"{type(e).__name__}: {e}")
            now = time.monotonic()
            if now - last >= progress_every_sec or i + 1 == len(pairs):
                last = now
                rate = (i + 1) / max(now - started, 1e-9)
                failed = sum(e is not None for e in errors)
                print(f"evaluate: {i + 1}/{len(pairs)} pairs, {failed} failed, "
                      f"ETA {(len(pairs) - i - 1) / rate / 60:.0f} min", file=sys.stderr)
    texts = np.concatenate([model.embed_text([p.caption for p in pairs[i:i + 256]]) for i in range(0, len(pairs), 256)])
    return videos, errors, texts


# ---- the command ----------------------------------------------------------------------------------


def evaluate(pairs: list[Pair], videos: list, texts: np.ndarray) -> dict[str, Any]:
    scored = [i for i, v in enumerate(videos) if v is not None]
    if not scored:
        raise ValueError("no pair could be scored: every video failed (see pairs.parquet)")
    v = np.stack([videos[i] for i in scored])
    t = texts[scored]
    scores = t @ v.T  # captions x videos, the model card's dot product
    return {"text_to_video": retrieval_metrics(scores), "video_to_text": retrieval_metrics(scores.T),
            "chance": chance(len(scored)), "scored": len(scored)}


def write_outputs(output: str, pairs: list[Pair], videos: list, errors: list, texts: np.ndarray,
                  metrics: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.objects import write_object

    vector = pa.list_(pa.float32())  # 512 each; variable-size, as a fixed-size list column with nulls does not read back
    table = pa.table({
        "pair_index": pa.array(range(len(pairs)), pa.int32()),
        "key": [p.key for p in pairs],
        "video_id": [p.video_id for p in pairs],
        "uri": [p.uri for p in pairs],
        "start_sec": pa.array([p.start_sec for p in pairs], pa.float64()),
        "end_sec": pa.array([p.end_sec for p in pairs], pa.float64()),
        "caption": [p.caption for p in pairs],
        "video_embedding": pa.array([None if e is None else e.astype(np.float32).tolist() for e in videos], vector),
        "text_embedding": pa.array([t.astype(np.float32).tolist() for t in texts], vector),
        "error": errors,
    })
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_object(_join(output, "pairs.parquet"), buffer.getvalue().to_pybytes())
    write_object(_join(output, "metrics.json"), (json.dumps(metrics, indent=2) + "\n").encode(), "application/json")


def report(metrics: dict[str, Any]) -> str:
    n, published = metrics["scored"], metrics.get("published")
    lines = [f"zero-shot retrieval, {n} pairs scored of {metrics['pairs']} ({metrics['failed']} failed)", "",
             f"{'':24}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'median rank':>14}"]
    rows = [("text to video", metrics["text_to_video"]), ("video to text", metrics["video_to_text"]),
            (f"chance ({n} pairs)", metrics["chance"])]
    if published:
        rows.append(("published, text to video", published))
    for name, m in rows:
        lines.append(f"{name:24}{m['R@1']:8.1f}{m['R@5']:8.1f}{m['R@10']:8.1f}{m['median_rank']:14.1f}")
    if published:
        lines.append(f"(published: {published['benchmark']}, the authors' README)")
    if metrics["trained"] is False:
        lines += ["", "The model is the untrained stand-in: its figures are at chance, as the chance row says. "
                  "Run with --model set to the real module to compare with the published figures."]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate",
        description="The paper's zero-shot text-video retrieval on YouCook2, MSR-VTT or your own pairs: R@1, R@5, "
        "R@10 and the median rank both ways, beside the published figures. Defaults are the authors' evaluation's.")
    parser.add_argument("--pairs", required=True,
                        help="the pairs: the authors' csv/validation_youcook.csv or csv/msrvtt_test.csv, or a .csv or "
                        ".jsonl of uri,caption[,start_sec,end_sec]; on any filesystem the jobs read")
    parser.add_argument("--video_root", default=None,
                        help="where the videos are: YouCook2's as ROOT/validation/TASK/ID.(mp4|mkv|webm) (or ROOT/ID.ext), "
                        "MSR-VTT's as ROOT/ID.mp4; your own pairs' relative uris are joined to it")
    parser.add_argument("--output", required=True, help="a directory (or prefix) for metrics.json and pairs.parquet")
    parser.add_argument("--model", default=None, help="the S3D module (default: the TF Hub URL)")
    parser.add_argument("--num_windows", type=int, default=NUM_WINDOWS,
                        help=f"windows averaged per pair, spread over its segment (default: {NUM_WINDOWS}, the "
                        "authors' README commands' --num_windows_test)")
    parser.add_argument("--num_frames", type=int, default=NUM_FRAMES,
                        help=f"frames in a window (default: {NUM_FRAMES}, the authors' args.py)")
    parser.add_argument("--fps", type=float, default=FPS, help=f"frames per second sampled (default: {FPS:g}, the authors' args.py)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"side of the centre crop in pixels (default: {SIZE})")
    add_log_level_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level)  # before TensorFlow loads
    protocol = Protocol(args.num_windows, args.num_frames, args.fps, args.size)
    try:
        if protocol.num_windows < 1:
            raise ValueError(f"--num_windows must be >= 1, got {protocol.num_windows}")
        protocol.decode_options().validate()
        kind, pairs = read_pairs(args.pairs, args.video_root)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from s3d.loader import DEFAULT_HANDLE, load_once

    handle = args.model or DEFAULT_HANDLE
    model = load_once(handle, "float32")  # a process evaluating twice (or after a job) loads once
    videos, errors, texts = embed_pairs(model, pairs, protocol)
    try:
        metrics = evaluate(pairs, videos, texts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    metrics.update(pairs=len(pairs), failed=len(pairs) - metrics["scored"], format=kind,
                   published=PUBLISHED.get(kind), model=handle, trained=model.trained,
                   protocol={**dataclasses.asdict(protocol), "window_sec": protocol.window_sec,
                             "margin_sec": MARGIN_SEC, "extra_sec": EXTRA_SEC, "crop": "center"})
    write_outputs(args.output, pairs, videos, errors, texts, metrics)
    print(report(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
