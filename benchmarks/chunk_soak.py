"""A soak of runs in chunks: many short videos, the same run unchunked and in chunks, and one killed and resumed.

    python -m benchmarks.chunk_soak --model DIR --videos 5000 --chunk_videos 1000 --workdir DIR [--rounds 1]

Each launch is `python -m pipeline.extract` in a process of its own, its process tree's RSS sampled
every 0.5 s. Unchunked and chunked launches alternate (`--rounds` pairs). Then a chunked launch is
killed with SIGKILL at about 60% of the chunked run's time and launched again. Prints one JSON line:
wall seconds per launch, peak RSS per chunk (from the chunks' own start and end times), the work
redone after the kill, and whether every video is accounted for exactly once.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5"]


def make_corpus(workdir: str, videos: int) -> str:
    """`videos` distinct URIs (links to one 1-second video): a manifest of them. Returns its path."""
    from synthetic.videos import write_video

    os.makedirs(os.path.join(workdir, "v"), exist_ok=True)
    source = os.path.join(workdir, "source.mp4")
    if not os.path.exists(source):
        write_video(source, 10, fps=10, width=64, height=48)
    uris = []
    for i in range(videos):
        link = os.path.join(workdir, "v", f"{i:06d}.mp4")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(source), link)
        uris.append(link)
    manifest = os.path.join(workdir, f"manifest_{videos}.txt")
    with open(manifest, "w") as f:
        f.write("\n".join(uris) + "\n")
    return manifest


class TreeRss:
    """Samples a process tree's resident memory (MB) every `period` seconds, with the time of each sample."""

    def __init__(self, pid: int, period: float = 0.5):
        self.samples: list[tuple[float, float]] = []
        self._pid, self._period = pid, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self._pid)
                total = root.memory_info().rss
                for child in root.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.samples.append((time.time(), total / 2**20))
            except psutil.Error:
                pass
            self._stop.wait(self._period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def launch(args: list[str], kill_after: float | None = None) -> dict:
    """Runs the extraction job; SIGKILLs it after `kill_after` seconds when given. Wall time and samples."""
    start = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a pipe nobody reads fills and blocks the job
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.extract", *args], stdout=subprocess.DEVNULL, stderr=log)
    rss = TreeRss(proc.pid)
    killed_at = None
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rss.stop()
    if killed_at is None and proc.returncode != 0:
        log.seek(0)
        raise RuntimeError(f"pipeline.extract failed ({proc.returncode}): {log.read()[-2000:]}")
    return {"wall_seconds": time.perf_counter() - start, "samples": rss.samples, "killed_at": killed_at,
            "peak_rss_mb": max((mb for _, mb in rss.samples), default=0.0)}


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def chunk_peaks(prefix: str, samples: list[tuple[float, float]]) -> list[float]:
    """The launcher tree's peak RSS during each chunk, in chunk order (from each chunk's summary)."""
    from storage.layout import chunk_summary, plan_path, read_json

    peaks = []
    for entry in read_json(plan_path(prefix))["chunks"]:
        summary = chunk_summary(prefix, entry["name"])
        start, end = _epoch(summary["started"]), _epoch(summary["finished"]) + 1  # whole seconds
        peaks.append(max((mb for t, mb in samples if start <= t <= end), default=0.0))
    return peaks


def accounted(prefix: str, videos: int) -> dict:
    """How many input videos the run's tables hold once, more than once, or not at all."""
    import pyarrow.parquet as pq

    from storage.layout import table_files

    seen: collections.Counter = collections.Counter()
    for table in ("videos", "failures"):
        for path in table_files(prefix, table):
            seen.update(pq.read_table(path, columns=["video_id"]).column(0).to_pylist())
    return {"distinct": len(seen), "more_than_once": sum(1 for n in seen.values() if n > 1),
            "missing": videos - len(seen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--chunk_videos", type=int, default=1000)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rounds", type=int, default=1, help="unchunked and chunked launches, alternated")
    args = parser.parse_args()
    manifest = make_corpus(args.workdir, args.videos)
    common = ["--input", manifest, "--model", args.model, *FAST]
    chunked_args = ["--chunk_videos", str(args.chunk_videos)]
    plain, chunked = [], []
    for _ in range(args.rounds):
        for runs, extra, name in ((plain, [], "plain"), (chunked, chunked_args, "chunked")):
            prefix = os.path.join(args.workdir, name)
            shutil.rmtree(prefix, ignore_errors=True)
            runs.append(launch([*common, "--output_prefix", prefix, *extra]))
    from storage.layout import read_summary

    for name in ("plain", "chunked"):  # a soak of failures would measure nothing
        ok = read_summary(os.path.join(args.workdir, name))["counts"]["videos_ok"]
        if ok != args.videos:
            raise RuntimeError(f"the {name} run decoded {ok} of {args.videos} videos: see its failures table")
    chunked_prefix = os.path.join(args.workdir, "chunked")
    peaks = chunk_peaks(chunked_prefix, chunked[-1]["samples"])
    whole = accounted(chunked_prefix, args.videos)

    killed_prefix = os.path.join(args.workdir, "killed")
    shutil.rmtree(killed_prefix, ignore_errors=True)
    chunk_wall = min(r["wall_seconds"] for r in chunked)
    first = launch([*common, "--output_prefix", killed_prefix, *chunked_args], kill_after=0.6 * chunk_wall)
    second = launch([*common, "--output_prefix", killed_prefix, *chunked_args])
    summary = read_summary(killed_prefix)
    print(json.dumps({
        "videos": args.videos, "chunk_videos": args.chunk_videos,
        "plain_wall_seconds": [round(r["wall_seconds"], 1) for r in plain],
        "chunked_wall_seconds": [round(r["wall_seconds"], 1) for r in chunked],
        "plain_peak_rss_mb": max(r["peak_rss_mb"] for r in plain),
        "chunk_peak_rss_mb": [round(p) for p in peaks],
        "accounted": whole,
        "killed_after_seconds": round(0.6 * chunk_wall, 1),
        "chunks_resumed": summary["counts"]["chunks_resumed"], "chunks_total": summary["counts"]["chunks_total"],
        "killed_wall_seconds": round(first["wall_seconds"], 1), "resume_wall_seconds": round(second["wall_seconds"], 1),
        "redone_seconds": round(first["wall_seconds"] + second["wall_seconds"] - chunk_wall, 1),
        "accounted_after_resume": accounted(killed_prefix, args.videos),
    }))


if __name__ == "__main__":
    main()


def section(model: str, log) -> str:
    """The BENCHMARKS.md section (benchmarks.run --only soak)."""
    from benchmarks.common import BENCH_CACHE, run_json

    log("soak: 5,000 videos, chunks of 1,000, against one run; then killed at ~60% and resumed")
    r = run_json(["benchmarks.chunk_soak", "--model", model, "--videos", "5000", "--chunk_videos", "1000",
                  "--rounds", "2", "--workdir", os.path.join(BENCH_CACHE, "soak")])
    plain, chunked = min(r["plain_wall_seconds"]), min(r["chunked_wall_seconds"])
    peaks = r["chunk_peak_rss_mb"]
    whole, after = r["accounted"], r["accounted_after_resume"]
    return "\n".join([
        "## Runs in chunks: a soak (local runner)",
        "",
        f"`python -m benchmarks.chunk_soak --videos {r['videos']} --chunk_videos {r['chunk_videos']} --rounds 2`: "
        f"{r['videos']} one-second videos (64x48, one 8-frame clip each at 5 fps), the same run without chunks and "
        "with them, alternated, each launch a process of its own; then a chunked launch killed with SIGKILL and "
        "launched again.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| wall s, one run (each round) | {', '.join(f'{w:.1f}' for w in r['plain_wall_seconds'])} |",
        f"| wall s, in chunks (each round) | {', '.join(f'{w:.1f}' for w in r['chunked_wall_seconds'])} |",
        f"| throughput in chunks / one run (best of each) | {plain / chunked:.3f} |",
        f"| peak RSS per chunk, MB (launcher and its children) | {', '.join(str(p) for p in peaks)} |",
        f"| last chunk's peak / first's | {peaks[-1] / peaks[0]:.3f} |",
        f"| peak RSS of one run, MB | {r['plain_peak_rss_mb']:.0f} |",
        f"| videos accounted for (videos + failures), once / more than once / missing | "
        f"{whole['distinct']} / {whole['more_than_once']} / {whole['missing']} |",
        f"| killed after s (about 60% of the chunked run) | {r['killed_after_seconds']} |",
        f"| chunks complete at the kill, kept by the resume | {r['chunks_resumed']} of {r['chunks_total']} |",
        f"| wall s killed + resumed (against one chunked run, {chunked:.1f}) | "
        f"{r['killed_wall_seconds']} + {r['resume_wall_seconds']} |",
        f"| work redone (killed + resumed - one chunked run), s | {r['redone_seconds']} |",
        f"| after the resume: once / more than once / missing | "
        f"{after['distinct']} / {after['more_than_once']} / {after['missing']} |",
        "",
        "A chunk costs about a second of its own locally (a graph built and started; the model is loaded once "
        "per process, `s3d.loader.load_once`). The work redone after a kill is the killed chunk's "
        "share done before the kill, plus the relaunch's start.",
    ])
