"""The isolation section: decoding in a process of its own against decoding in the worker (an older tree)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from benchmarks.common import BENCH_CACHE, e2e_corpus, run_json

# The last commit that decoded inside the Beam worker, before decoder.process.
BEFORE_ISOLATION = "5449bde"


def isolation_section(model: str, log: Callable[[str], None]) -> str:
    """Decoding in a process of its own against decoding in the worker (a worktree of BEFORE_ISOLATION)."""
    from benchmarks.decode_less import frames_command, timed
    from benchmarks.decode_throughput import make_source

    before = os.path.abspath(os.path.join(BENCH_CACHE, "before_isolation"))
    if not os.path.exists(before):
        subprocess.run(["git", "worktree", "add", "--detach", before, BEFORE_ISOLATION], check=True,
                       capture_output=True)
    trees = {"in the worker (before)": before, "decoder process": os.getcwd()}
    video = os.path.abspath(make_source("720p_h264", BENCH_CACHE))
    _, corpus = e2e_corpus()
    frames: dict[str, list[float]] = {t: [] for t in trees}
    jobs: dict[str, list[dict]] = {t: [] for t in trees}
    for round_ in range(3):  # alternated, so drift on a shared machine hits both alike
        for label, tree in trees.items():
            log(f"isolation: {label}, round {round_ + 1}")
            frames[label].append(timed(frames_command(video), cwd=tree)[0])
            jobs[label].append(run_json(
                ["benchmarks.pipeline_throughput", "--model", os.path.abspath(model), "--input",
                 os.path.join(os.path.abspath(corpus), "*.avi"), "--output_prefix",
                 os.path.abspath(os.path.join(BENCH_CACHE, "out_isolation"))], cwd=tree))
    median = {t: {"frames": sorted(frames[t])[1], "job": sorted(jobs[t], key=lambda r: r["wall_seconds"])[1]}
              for t in trees}
    base = median["in the worker (before)"]
    lines = [
        "## Decoding in a process of its own (`decoder.process`)",
        "",
        f"The same commands from two trees, alternated round by round, median of 3: this tree, and commit "
        f"{BEFORE_ISOLATION} (decoding inside the Beam worker, with a prefetch thread). `pipeline.frames` on the "
        "60 s 720p h264 source (whole command line: the decoder process's start is in it), and the default local "
        "job on the end-to-end corpus (6 x 30 s 480p mpeg4). Peak RSS is the worker's (the launcher's process). "
        "The decoder process's own is not in it: getrusage's figure for a child counts the parent's pages it "
        "shared between fork and exec, so it reads ~1 GB here; /proc's VmHWM of the decoder process is about 60 MB "
        "for small videos and 165 MB for 4K (tests/test_decoder_process.py's videos, measured by hand).",
        "",
        "| decoding | pipeline.frames wall s | vs before | job wall s | job clips/s | vs before | worker peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in trees:
        m = median[label]
        job = m["job"]
        lines.append(
            f"| {label} | {m['frames']:.2f} | {m['frames'] / base['frames']:.3f} | {job['wall_seconds']:.1f} | "
            f"{job['clips_per_s']:.3f} | {job['clips_per_s'] / base['job']['clips_per_s']:.3f} | "
            f"{job['peak_rss_mb']:.0f} |")
    return "\n".join(lines)
