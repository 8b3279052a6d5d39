"""Decoding less: the frame tool against the ffmpeg command line, sparse windows, split long videos.

    python -m benchmarks.decode_less identity --source SRC
    python -m benchmarks.decode_less split --model DIR --input GLOB --output_prefix DIR --split_sec S

`identity` writes the frames of `pipeline.frames SRC` and of
`ffmpeg -i SRC -vf fps=10,crop=S:S,scale=224:224 -pix_fmt rgb24 -f rawvideo -` and compares
them byte for byte. `split` runs the extraction job on two worker processes and samples
their CPU time every 0.25 s, to tell how long one worker ran alone while the other waited. Each prints
one JSON line. The timed runs themselves are in benchmarks.run (subprocesses, alternated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import av
import numpy as np
import psutil

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
