"""Decoding less: the frame tool against the ffmpeg command line, sparse windows, split long videos.

    python -m benchmarks.decode_less identity --source SRC
    python -m benchmarks.decode_less split --model DIR --input GLOB --output_prefix DIR --split_sec S

`identity` writes the frames of `pipeline.frames SRC` and of
`ffmpeg -i SRC -vf fps=10,crop=S:S,scale=224:224 -pix_fmt rgb24 -f rawvideo -` and compares
them byte for byte. `split` runs the extraction job on two worker processes and samples
their CPU time every 0.25 s, to tell how long one worker ran alone while the other waited. Each prints
one JSON line. The timed runs themselves are in `split_section` (subprocesses, alternated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import av
import numpy as np
import psutil

from benchmarks.common import BENCH_CACHE, run_json

SAMPLE_SEC = 0.25
BUSY = 0.5  # a worker is busy in an interval where it used at least half a core


def ffmpeg_command(source: str, fps: str = "10", size: int = 224) -> list[str]:
    """`fps` is the fps filter's arguments: "10" (the usual command), "10:round=up" (the frames the job samples)."""
    with av.open(source) as c:
        ctx = c.streams.video[0].codec_context
        side = min(ctx.width, ctx.height)
    return ["ffmpeg", "-v", "error", "-nostdin", "-threads", "0", "-i", source,
            "-vf", f"fps={fps},crop={side}:{side},scale={size}:{size}", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]


def frames_command(source: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.frames", source, "--fps", "10", "--size", "224", *flags]


def timed(cmd: list[str], cwd: str | None = None) -> tuple[float, bytes]:
    """Wall seconds of a command line, its stdout read to the end as ffmpeg's consumer would."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=cwd)
    chunks = []
    while chunk := proc.stdout.read(1 << 20):
        chunks.append(chunk if len(chunks) < 4 else b"")  # keep the head (the JSON line), drop raw frames
    if proc.wait() != 0:
        raise RuntimeError(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - start, b"".join(chunks)


def identity(source: str) -> dict:
    """Our frames against ffmpeg's with `fps=10:round=up`: the frame shown at each k/10 s, as the job samples.

    (Plain `fps=10` rounds to the nearest output time and takes frames 1, 4, 7, ... of a 30 fps source.)
    """
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ours.npy")
        subprocess.run(frames_command(source, "--output", out), check=True, capture_output=True)
        ours = np.load(out)
        raw = subprocess.run(ffmpeg_command(source, "10:round=up"), check=True, capture_output=True).stdout
    theirs = np.frombuffer(raw, np.uint8).reshape(-1, 224, 224, 3)
    n = min(len(ours), len(theirs))
    equal = int(sum(np.array_equal(ours[i], theirs[i]) for i in range(n)))
    worst = max((int(np.abs(ours[i].astype(np.int16) - theirs[i]).max()) for i in range(n)), default=0)
    return {"frames_ours": len(ours), "frames_ffmpeg": len(theirs), "equal_frames": equal,
            "max_abs_difference": worst, "identical": equal == len(ours) == len(theirs)}


def split_run(model: str, input_glob: str, output_prefix: str, split_sec: float) -> dict:
    """The job on 2 worker processes; how long the run took and how long one worker ran alone."""
    cmd = [sys.executable, "-m", "pipeline.extract", "--input", input_glob, "--output_prefix", output_prefix,
           "--model", model, "--split_sec", str(split_sec), "--direct_running_mode", "multi_processing",
           "--direct_num_workers", "2"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    last_cpu: dict[int, float] = {}
    timeline: list[tuple[float, int]] = []  # (time, busy workers)
    while proc.poll() is None:
        time.sleep(SAMPLE_SEC)
        busy = 0
        try:
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for child in children:
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            cpu = times.user + times.system
            if cpu - last_cpu.get(child.pid, cpu) >= BUSY * SAMPLE_SEC:
                busy += 1
            last_cpu[child.pid] = cpu
        timeline.append((time.perf_counter() - start, busy))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}): {' '.join(cmd)}")
    # Once both workers have started: the time exactly one of them was busy (the other one waiting for
    # the straggler). The job's last steps (assembly, writes) run on both again briefly at the very end.
    started = next((i for i, (_, n) in enumerate(timeline) if n >= 2), len(timeline))
    alone = SAMPLE_SEC * sum(1 for _, n in timeline[started:] if n == 1)
    import pyarrow.dataset as ds

    from storage.layout import read_summary

    counts = read_summary(output_prefix)["counts"]
    videos = ds.dataset(os.path.join(output_prefix, "videos"), format="parquet").to_table().to_pylist()
    longest = max(videos, key=lambda r: r["duration_sec"] or 0)
    return {"split_sec": split_sec, "wall_seconds": wall, "last_worker_alone_seconds": max(0.0, alone),
            "clips": counts["clips"], "videos_split": counts.get("videos_split", 0),
            "video_parts": counts.get("video_parts", 0), "long_decoded_frames": longest["decoded_frames"]}


def split_section(model: str, log: Callable[[str], None]) -> str:
    from benchmarks.decode_throughput import make_source

    corpus = os.path.join(BENCH_CACHE, "split_corpus")
    os.makedirs(corpus, exist_ok=True)
    inputs = {"long.mp4": make_source("360p_h264_4min", BENCH_CACHE)}
    inputs.update({f"short{i}.avi": make_source("480p_mpeg4_30s", BENCH_CACHE) for i in range(4)})
    for name, target in inputs.items():
        link = os.path.join(corpus, name)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(target), link)
    runs: dict[str, list[dict]] = {"60": [], "0": []}
    for round_ in range(2):
        for split in runs:
            log(f"split: --split_sec {split}, round {round_ + 1}")
            runs[split].append(run_json(["benchmarks.decode_less", "split", "--model", model,
                                         "--input", os.path.join(corpus, "*"),
                                         "--output_prefix", os.path.join(BENCH_CACHE, f"out_split_{split}"),
                                         "--split_sec", split]))
    lines = [
        "## Splitting long videos over workers",
        "",
        "The extraction job (stand-in model, 10 fps, 32-frame clips, 224x224) on one 4-minute 360p h264 video and "
        "four 30 s 480p videos, on the local runner with 2 worker processes (`--direct_running_mode "
        "multi_processing --direct_num_workers 2`). One worker alone: the time, once both had started, that exactly "
        "one worker process was busy (each one's CPU time sampled every 0.25 s; busy: half a core or more) while "
        "the other waited for it. Alternated, 2 rounds each.",
        "",
        "| --split_sec | round | clips | parts | wall s | one worker alone s | long video's decoded frames |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split, results in runs.items():
        for i, r in enumerate(results):
            lines.append(f"| {split}{' (off)' if split == '0' else ''} | {i + 1} | {r['clips']} | "
                         f"{r['video_parts'] or '-'} | {r['wall_seconds']:.1f} | {r['last_worker_alone_seconds']:.1f} | "
                         f"{r['long_decoded_frames']} |")
    on = sorted(r["wall_seconds"] for r in runs["60"])[0]
    off = sorted(r["wall_seconds"] for r in runs["0"])[0]
    parts = runs["60"][0]["video_parts"]
    extra = runs["60"][0]["long_decoded_frames"] - runs["0"][0]["long_decoded_frames"]
    lines += ["", f"Best wall time split / unsplit: {on / off:.2f}. What a part costs: the header read, and "
              f"{extra / max(parts - 1, 1):.0f} more decoded frames per extra part (each part decodes from the "
              "keyframe before it; a keyframe every 2 s at 30 fps here)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_less")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("identity")
    p.add_argument("--source", required=True)
    p = sub.add_parser("split")
    for flag in ("--model", "--input", "--output_prefix"):
        p.add_argument(flag, required=True)
    p.add_argument("--split_sec", type=float, required=True)
    args = parser.parse_args()
    if args.what == "identity":
        result = identity(args.source)
    else:
        result = split_run(args.model, args.input, args.output_prefix, args.split_sec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
