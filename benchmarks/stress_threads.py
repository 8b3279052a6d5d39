"""Runs the extraction job again and again in Beam's multi-threaded local mode, for a bounded time,
and counts the runs that die by a signal (the once-seen `terminate called without an active
exception`, SIGABRT).

    python -m benchmarks.stress_threads --model DIR [--minutes 20] [--workers 2]

Each run is its own process on generated videos (8 x 6 s, 480p mpeg4), with the job's
default decode prefetch, so that decoding threads, prefetch threads and inference threads
overlap as they did in the crash. Prints one JSON line: runs, clean exits, deaths by signal,
and the last lines of stderr of each death.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from synthetic.videos import write_video

    work = tempfile.mkdtemp(prefix="s3d-stress-")
    for i in range(8):
        write_video(os.path.join(work, f"v{i}.avi"), 36, fps=6, width=640, height=480, codec="mpeg4")
    job = [sys.executable, "-m", "pipeline.extract", "--input", os.path.join(work, "*.avi"),
           "--output_prefix", os.path.join(work, "out"), "--model", args.model, "--size", "112",
           "--frames_per_clip", "16", "--fps", "6", "--direct_num_workers", str(args.workers),
           "--direct_running_mode", "multi_threading"]
    deadline = time.monotonic() + args.minutes * 60
    runs, clean, failed, deaths = 0, 0, 0, []
    while time.monotonic() < deadline:
        proc = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        runs += 1
        if proc.returncode == 0:
            clean += 1
        elif proc.returncode < 0:
            deaths.append({"signal": signal.Signals(-proc.returncode).name, "stderr": proc.stderr[-800:]})
        else:
            failed += 1
            deaths.append({"exit": proc.returncode, "stderr": proc.stderr[-800:]})
    print(json.dumps({"runs": runs, "clean": clean, "nonzero_exits": failed, "signal_deaths":
                      sum("signal" in d for d in deaths), "minutes": args.minutes, "workers": args.workers,
                      "details": deaths}))


if __name__ == "__main__":
    main()
