"""What the benchmark sections share: the cache of generated inputs, running a measurement in its own
process, the machine's description, the end-to-end corpus."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys

import psutil

BENCH_CACHE = os.path.join(".cache", "bench")  # generated source videos, kept between runs


def run_json(args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> dict:
    """Runs `python -m ...args` (in `cwd`: that tree's code) and returns the JSON object of its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=cwd,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import tensorflow as tf

    return (
        f"{cpu}, {psutil.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__} (oneDNN on unless noted), no GPU"
        if not tf.config.list_physical_devices("GPU")
        else f"{cpu}, GPU: {tf.config.list_physical_devices('GPU')}"
    )


def length_memory_table(title: str, short: dict, long: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown lines comparing a 1-minute and a 10-minute run: the given columns, then peak RSS."""
    header = " | ".join(name for name, _, _ in columns)
    lines = ["", title, "", f"| video | {header} | peak RSS (MB) |", "| --- |" + " --- |" * (len(columns) + 1)]
    for label, r in (("1 minute", short), ("10 minutes", long)):
        cells = " | ".join(fmt.format(r[key]) for _, key, fmt in columns)
        lines.append(f"| {label} | {cells} | {r['peak_rss_mb']:.0f} |")
    return lines + ["", f"10-minute / 1-minute peak RSS: {long['peak_rss_mb'] / short['peak_rss_mb']:.2f}."]


def e2e_corpus() -> tuple[str, str]:
    """The end-to-end corpus: (its one source, a folder of six links to it)."""
    from benchmarks.decode_throughput import make_source

    source = make_source("480p_mpeg4_30s", BENCH_CACHE)
    corpus = os.path.join(BENCH_CACHE, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for i in range(6):  # six inputs (distinct URIs, same content): 6 x 300 samples at 10 fps
        link = os.path.join(corpus, f"video{i}.avi")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(source), link)
    return source, corpus


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: /proc's VmHWM, which starts anew at exec. getrusage's
    ru_maxrss does not: "resource usage metrics are preserved across an execve" (getrusage(2)), so a
    measurement started by a large launcher would report the launcher's memory."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
