"""Runs the benchmarks and writes BENCHMARKS.md.

    python -m benchmarks.run --model DIR [--output BENCHMARKS.md] [--only model,decode]

Each measurement runs in its own subprocess (its own peak memory, no warm caches
shared between variants). The machine is shared and noisy: compare figures within
one run, as ratios, not across runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from benchmarks import captions_cost, chunk_soak
from benchmarks.model_throughput import VARIANTS

BENCH_CACHE = os.path.join(".cache", "bench")  # generated source videos, kept between runs
PEER_CLIPS_PER_S = 0.88  # the authors' PyTorch port, batch 1, on a 2-core machine of this kind


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


def model_section(model: str, log: Callable[[str], None]) -> str:
    rows = []
    for batch in (1, 4, 8):
        log(f"model: loaded, batch {batch}")
        rows.append(run_json(["benchmarks.model_throughput", "--model", model, "--batch", str(batch)]))
    variants = []
    for variant in sorted(VARIANTS):
        log(f"model: variant {variant}, batch 1")
        variants.append(run_json(["benchmarks.model_throughput", "--model", model, "--batch", "1", "--variant", variant]))
    base = next(v for v in variants if v["variant"] == "loaded")["clips_per_s"]

    lines = [
        "## Model only (S3D video tower, T=32, 224x224, float32, CPU)",
        "",
        "| batch | clips/s | GFLOP/s (72.7 GFLOP/clip) | peak RSS (MB) | vs PyTorch port (0.88 clips/s at batch 1) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['clips_per_s']:.2f} | {r['gflop_per_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['clips_per_s'] / PEER_CLIPS_PER_S:.2f}x |"
        )
    lines += [
        "",
        "What TensorFlow offers, at batch 1, each in its own process (ratio to `loaded` in the same run):",
        "",
        "| variant | what | clips/s | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for v in variants:
        lines.append(f"| {v['variant']} | {VARIANTS[v['variant']]} | {v['clips_per_s']:.2f} | {v['clips_per_s'] / base:.2f} |")
    return "\n".join(lines)


def decode_section(model: str, log: Callable[[str], None]) -> str:
    from benchmarks.decode_less import ffmpeg_command, frames_command, timed
    from benchmarks.decode_throughput import make_source

    del model
    have_ffmpeg = shutil.which("ffmpeg") is not None
    lines = [
        "## Decode only (10 fps, centre crop, 224x224 RGB; 60 s sources at 30 fps)",
        "",
        "`pipeline.frames SRC --fps 10 --size 224` (the job's decoder alone; it skips non-reference frames on "
        "screen at no sample time) and the same with `--decode_all` (every frame decoded), against "
        "`ffmpeg -threads 0 -i SRC -vf fps=10,crop=S:S,scale=224:224 -pix_fmt rgb24 -f rawvideo -` read to the end. "
        "Whole command lines, wall time (Python's start and imports included: about 0.3 s), alternated round by "
        "round, median of 3; both use both cores; `decode s` is the tool's own timing of its decoding. "
        "Identical: the frames of `pipeline.frames --output` and those of the same ffmpeg command with "
        "`fps=10:round=up`, compared byte for byte (plain `fps=10` rounds to the nearest output time and takes "
        "source frames 1, 4, 7, ...; the job takes the frame on screen at each k/10 s: 0, 3, 6, ...; both filter "
        "settings cost the same).",
        "",
        "| source | tool | wall s | decode s | decoded frames | ffmpeg / this (wall) | identical frames |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("720p_h264", "480p_mpeg4"):
        log(f"decode: preparing {name}")
        path = make_source(name, BENCH_CACHE)
        tools = {"pipeline.frames": frames_command(path), "pipeline.frames --decode_all": frames_command(path, "--decode_all")}
        if have_ffmpeg:
            tools["ffmpeg"] = ffmpeg_command(path)
        walls: dict[str, list[float]] = {t: [] for t in tools}
        decoded: dict[str, int] = {}
        inside: dict[str, list[float]] = {t: [] for t in tools}
        for round_ in range(3):
            for tool, cmd in tools.items():
                log(f"decode: {name}, {tool}, round {round_ + 1}")
                wall, out = timed(cmd)
                walls[tool].append(wall)
                if tool != "ffmpeg":
                    summary = json.loads(out.decode().strip().splitlines()[-1])
                    decoded[tool] = summary["decoded_frames"]
                    inside[tool].append(summary["seconds"])
        same = run_json(["benchmarks.decode_less", "identity", "--source", path]) if have_ffmpeg else None
        median = {t: sorted(w)[1] for t, w in walls.items()}
        for tool in tools:
            ratio = f"{median['ffmpeg'] / median[tool]:.2f}x" if have_ffmpeg and tool != "ffmpeg" else ""
            ident = ""
            if same is not None and tool == "pipeline.frames":
                ident = (f"yes, {same['equal_frames']} of {same['frames_ours']}" if same["identical"] else
                         f"{same['equal_frames']} of {same['frames_ours']} ({same['frames_ffmpeg']} from ffmpeg), "
                         f"at most {same['max_abs_difference']} levels apart")
            own = f"{sorted(inside[tool])[1]:.1f}" if inside[tool] else ""
            lines.append(f"| {name} | {tool} | {median[tool]:.1f} | {own} | {decoded.get(tool, '')} | {ratio} | {ident} |")
    if not have_ffmpeg:
        lines += ["", "ffmpeg is not installed here (`apt-get install ffmpeg`), so there is no comparison row."]
    else:
        version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        import av

        lines += ["", f"ffmpeg here: {version.split(' Copyright')[0]}; PyAV {av.__version__} with FFmpeg "
                  f"{av.ffmpeg_version_info}. h264 decoding is bit-exact by the standard, so its frames must be "
                  "identical; MPEG-4 Part 2's inverse DCT is not (the standard allows a tolerance), and the two "
                  "FFmpeg versions' differ by a level or two on some frames."]

    log("decode: --num_clips 10 against sliding windows on a 10-minute 360p video")
    path = make_source("360p_h264_10min", BENCH_CACHE)
    runs: dict[str, list[tuple[float, dict]]] = {"--num_clips 10": [], "sliding windows": []}
    for round_ in range(2):
        for label, flags in (("--num_clips 10", ["--num_clips", "10"]), ("sliding windows", [])):
            log(f"decode: {label}, round {round_ + 1}")
            wall, out = timed(frames_command(path, *flags))
            runs[label].append((wall, json.loads(out.decode().strip().splitlines()[-1])))
    total = 600 * 30
    best = {label: min(r, key=lambda x: x[0]) for label, r in runs.items()}
    sparse, full = best["--num_clips 10"], best["sliding windows"]
    lines += [
        "",
        "The authors' evaluation windows: `pipeline.frames` with `--num_clips 10` (10 clips of 32 frames spread "
        "over the video: it seeks to the keyframe before each) against the default sliding windows over the whole "
        "video. 360p h264, 30 fps, a keyframe every 2 s; best of 2 alternated rounds.",
        "",
        "| windows | clips | decoded frames | of the video's 18,000 | wall s | wall / sliding |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, (wall, r) in (("--num_clips 10", sparse), ("sliding windows", full)):
        lines.append(f"| {label} | {r['clips']} | {r['decoded_frames']} | {r['decoded_frames'] / total:.1%} | "
                     f"{wall:.1f} | {wall / full[0]:.2f} |")

    log("decode: memory on a 1-minute and a 10-minute 360p video")
    short = run_json(["benchmarks.decode_throughput", "--source", make_source("360p_h264_1min", BENCH_CACHE), "--tool", "ours"])
    long = run_json(["benchmarks.decode_throughput", "--source", make_source("360p_h264_10min", BENCH_CACHE), "--tool", "ours"])
    lines += length_memory_table("Memory does not grow with length (360p h264, same settings):", short, long,
                                 [("source frames", "source_frames", "{}"), ("clips", "clips", "{}")])
    return "\n".join(lines)


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


def pipeline_section(model: str, log: Callable[[str], None]) -> str:
    from benchmarks.decode_throughput import make_source

    source, corpus = e2e_corpus()
    log("pipeline: decode-only and model-only references")
    decode = run_json(["benchmarks.decode_throughput", "--source", source, "--tool", "ours"])
    decode_cps = decode["sampled_fps"] / 32
    model_cps = run_json(["benchmarks.model_throughput", "--model", model, "--batch", "4"])["clips_per_s"]
    serial = 1 / (1 / decode_cps + 1 / model_cps)
    runs = {}
    configs = {
        "local, 1 worker (default)": [],
        "local, 2 threads": ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"],
        "local, 1 worker, --precision bfloat16": ["--precision", "bfloat16"],
    }
    for name, extra in configs.items():
        log(f"pipeline: job, {name}")
        try:
            runs[name] = run_json(["benchmarks.pipeline_throughput", "--model", model, "--input",
                                   os.path.join(corpus, "*.avi"), "--output_prefix", os.path.join(BENCH_CACHE, "out"),
                                   *extra])
        except RuntimeError as e:  # a crash is a result too: reported in the table, not hidden
            log(f"pipeline: {name} failed: {str(e)[-300:]}")
            runs[name] = {"error": str(e).splitlines()[0][-120:]}
    lines = [
        "## End to end (extraction job on the local runner; 6 x 30 s 480p mpeg4, 10 fps, 32-frame clips)",
        "",
        f"References in the same run: decode only {decode_cps:.2f} clips/s, model only {model_cps:.2f} clips/s (batch 4, "
        "the job's default, float32; the bfloat16 row's model is faster, so its ratios to these exceed the "
        "float32 rows'). "
        f"Decoding and inference share the same two cores, so the best a serial worker can do is "
        f"1 / (1/decode + 1/model) = {serial:.2f} clips/s.",
        "",
        "| job | clips | wall s | model load s | clips/s | clips/s after load | vs slower of the two | vs serial bound | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    slower = min(decode_cps, model_cps)
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | FAILED: {r['error']} |" + " |" * 7)
            continue
        lines.append(
            f"| {name} | {r['clips']} | {r['wall_seconds']:.1f} | {r['model_load_seconds']:.1f} | {r['clips_per_s']:.2f} | "
            f"{r['clips_per_s_after_load']:.2f} | {r['clips_per_s_after_load'] / slower:.2f} | "
            f"{r['clips_per_s_after_load'] / serial:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    log("pipeline: memory on a 1-minute and a 10-minute video")
    mem = {}
    for name in ("360p_h264_1min", "360p_h264_10min"):
        path = make_source(name, BENCH_CACHE)
        # A fixed batch size: peak memory follows the batch (activations), which BatchElements
        # would otherwise grow during a long run; here only the video's length differs.
        mem[name] = run_json(["benchmarks.pipeline_throughput", "--model", model, "--input", path,
                              "--output_prefix", os.path.join(BENCH_CACHE, "out_mem"),
                              "--min_batch_size", "4", "--batch_size", "4"])
    short, long = mem["360p_h264_1min"], mem["360p_h264_10min"]
    lines += length_memory_table(
        "Peak memory of the whole job on one long video (360p h264, 10 fps, batches of 4):", short, long,
        [("clips", "clips", "{}"), ("wall s", "wall_seconds", "{:.1f}")])
    return "\n".join(lines)


def http_section(model: str, log: Callable[[str], None]) -> str:
    """The end-to-end job on the same videos read from disk and from an HTTP server on 127.0.0.1, alternated."""
    from synthetic.http_server import VideoServer

    _, corpus = e2e_corpus()
    server = VideoServer(corpus)
    manifest = os.path.join(BENCH_CACHE, "http_manifest.txt")
    names = sorted(n for n in os.listdir(corpus) if n.endswith(".avi"))
    with open(manifest, "w") as f:
        f.write("".join(server.url(n) + "\n" for n in names))
    inputs = {"disk": os.path.join(corpus, "*.avi"), "http": manifest}
    runs: dict[str, list[dict]] = {"disk": [], "http": []}
    served = []
    try:
        for round_ in range(2):
            for name, spec in (inputs.items() if round_ % 2 == 0 else reversed(inputs.items())):
                log(f"http: round {round_ + 1}, {name}")
                before = (sum(server.state.requests.values()), len(server.state.ranges))
                runs[name].append(run_json(["benchmarks.pipeline_throughput", "--model", model, "--input", spec,
                                            "--output_prefix", os.path.join(BENCH_CACHE, f"out_{name}")]))
                if name == "http":
                    served.append(sum(server.state.requests.values()) - before[0])
    finally:
        server.stop()
    size = sum(os.path.getsize(os.path.join(corpus, n)) for n in names)
    lines = [
        "## Reading from the web (the extraction job on 6 x 30 s 480p mpeg4 AVI, from disk and from an HTTP "
        "server on 127.0.0.1, alternated)",
        "",
        f"The same six files ({size / 2**20:.1f} MiB in all), listed in a manifest of http:// URLs served with Range "
        "support by `synthetic/http_server.py`, against the same files matched on disk. The decoder opens each "
        "file twice (the split step reads its header, then decoding), and each open reads the first 1 MiB "
        "and the AVI index at the end.",
        "",
        "| input | round | clips | wall s | clips/s after load | requests to the server |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("disk", "http"):
        for i, r in enumerate(runs[name]):
            lines.append(f"| {name} | {i + 1} | {r['clips']} | {r['wall_seconds']:.1f} | "
                         f"{r['clips_per_s_after_load']:.2f} | {served[i] if name == 'http' else '-'} |")
    mean = {name: sum(r["clips_per_s_after_load"] for r in rs) / len(rs) for name, rs in runs.items()}
    lines += ["", f"http / disk, mean of the rounds: **{mean['http'] / mean['disk']:.3f}** "
              f"(clips/s after the model load, {mean['http']:.2f} against {mean['disk']:.2f})."]
    return "\n".join(lines)


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


def launch_section(model: str, log: Callable[[str], None]) -> str:
    """--skip_done over 30 earlier runs of 100 shards each, on the GCS emulator."""
    del model
    log("launch: 30 earlier runs of 100 shards on the GCS emulator, --skip_done")
    r = run_json(["benchmarks.launch_skip_done", "--runs", "30", "--shards", "100", "--rounds", "3"])
    per_run, every = r["one footer per run"], r["every shard's footer"]
    return "\n".join([
        "## A launch with --skip_done over many earlier runs (GCS emulator)",
        "",
        f"`python -m benchmarks.launch_skip_done`: {r['runs']} earlier runs of {r['shards']} `videos` files each "
        "on the GCS emulator the tests use (127.0.0.1, behind their front door, which counts the HTTP requests). "
        "What the launcher does with `--skip_done` over all of them: a listing and one footer per run "
        "(`matching_table_files`), against every shard's footer read one by one; alternated, median of 3.",
        "",
        "| launcher work | seconds | HTTP requests |",
        "| --- | --- | --- |",
        f"| a listing and one footer per run (the launcher) | {per_run['seconds']:.2f} | {per_run['requests']} |",
        f"| every shard's footer | {every['seconds']:.2f} | {every['requests']} |",
        "",
        f"Every shard's footer / one per run: {r['ratio']:.1f}x the time. The launcher's cost grows with the "
        "number of earlier runs, not of their files (one listing page covers 1,000 names).",
    ])


def converted_checkpoint(directory: str) -> str | None:
    """A random PyTorch S3D saved in the authors' checkpoint layout and converted (s3d.convert); None without torch."""
    output = os.path.join(directory, "converted")
    if os.path.exists(os.path.join(output, "saved_model.pb")):
        return output
    try:
        import torch
    except ImportError:
        return None
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from torch_reference import S3D, randomized

    from s3d.convert import convert
    from s3d.vocab import synthetic_vocabulary

    words = synthetic_vocabulary(600)
    torch.manual_seed(0)
    os.makedirs(directory, exist_ok=True)
    checkpoint, vocab = os.path.join(directory, "s3d_howto100m.pth"), os.path.join(directory, "s3d_dict.npy")
    torch.save(randomized(S3D(words), seed=0).state_dict(), checkpoint)
    np.save(vocab, np.array(words, dtype=object), allow_pickle=True)
    convert(checkpoint, vocab, output)
    return output


def precision_section(model: str, log: Callable[[str], None]) -> str:
    log("precision: stand-in, every variant alternated in one process")
    r = run_json(["benchmarks.precision", "--model", model])
    others = {}
    for seed in (2000, 3000):  # other corpora: the top-10 agreement of 24 queries over 48 clips is noisy
        log(f"precision: stand-in, corpus of seed {seed}, deviation only")
        others[seed] = run_json(["benchmarks.precision", "--model", model, "--no_speed", "--seed", str(seed)])
    log("precision: converted checkpoint (random weights, authors' layout), deviation only")
    converted = converted_checkpoint(os.path.join(BENCH_CACHE, "checkpoint"))
    c = run_json(["benchmarks.precision", "--model", converted, "--no_speed"]) if converted else None

    def dev(row, key):
        d = row["deviation"][key]
        return f"{d['mean']:.4f} / {d['min']:.4f}"

    lines = [
        "## Precision (video tower, T=32, 224x224, batch 4, CPU)",
        "",
        "`python -m benchmarks.precision`: every variant loaded in one process and timed in alternation "
        f"(3 rounds, median). Deviation on {r['clips']} natural-looking clips (smooth moving patterns) fed as "
        "uint8, as the job feeds them: cosine to float32's, mean / min. Top-10: for "
        f"{r['queries']} text queries over {r['corpus']} clips, the share of each query's top-10 clips that "
        "float32 also ranks in its top-10, averaged over the queries, on three corpora (seeds 1000, 2000, "
        "3000; the speed run uses the first). `bfloat16` is what `--precision bfloat16` runs; the other rows "
        "keep another number of convolutions from the images in float32 (`s3d.precision.keep_float32`).",
        "",
        "| variant | ops lowered | clips/s | vs float32 | video_embedding cosine | mixed_5c cosine "
        "| top-10 (3 corpora) | top-10 mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in r["variants"].items():
        tops = [row["top10_overlap"]["mean"]] + [o["variants"][name]["top10_overlap"]["mean"] for o in others.values()]
        lines.append(f"| {name} | {row['lowered_ops']} | {row['clips_per_s']:.2f} | {row['ratio']:.2f}x | "
                     f"{dev(row, 'video_embedding')} | {dev(row, 'mixed_5c')} | "
                     f"{' / '.join(f'{t:.3f}' for t in tops)} | {sum(tops) / len(tops):.3f} |")
    lines += [
        "",
        f"The text tower stays float32: it embeds {r['text_sentences_per_s']:.0f} sentences/s here, against "
        f"{r['variants']['float32']['clips_per_s']:.2f} clips/s for the video tower, so lowering it would save "
        "nothing measurable.",
        "",
        "float16 is for GPUs; on this CPU the float16 rewrite changes nothing (it only rewrites ops placed "
        "on a GPU with tensor cores), so it is not in the table. See docs/scale.md.",
    ]
    if c:
        b = c["variants"]["bfloat16"]
        spread = c["clip_to_clip_cosine"]["mean"]
        lines += [
            "",
            "A converted checkpoint in the authors' layout with random weights and BatchNorm statistics (not "
            "calibrated like the stand-in's), `--precision bfloat16` as shipped: video_embedding cosine to "
            f"float32 {dev(b, 'video_embedding')}, mixed_5c {dev(b, 'mixed_5c')}; top-10 agreement "
            f"{b['top10_overlap']['mean']:.3f} (worst query {b['top10_overlap']['min']:.1f}). Random BatchNorm "
            "statistics map every clip to nearly the same embedding (different clips' float32 embeddings are at "
            f"cosine {spread:.5f} to each other), so the cosine to float32 says little and the top-10 order is "
            "decided by differences of the size of the rounding. It is the hard case, reported without a bar; "
            "a trained checkpoint cannot be measured here (no trained weights on these machines).",
        ]
    else:
        lines += ["", "The converted-checkpoint row needs PyTorch (`pip install -e '.[convert]'`); it was not run."]
    return "\n".join(lines)


def search_section(model: str, log: Callable[[str], None]) -> str:
    from benchmarks.search_throughput import make_table

    del model
    log("search: preparing a 1,000,000-clip table")
    table = make_table(os.path.join(BENCH_CACHE, "search_1m"), 1_000_000)
    lines = [
        "## Search (1,000,000 clips, 512-d, 20 Parquet files; top 10 per query)",
        "",
        "Streaming: `pipeline.search.search` over the files, row group by row group on all cores. "
        "In memory: all embeddings loaded into one numpy array first (load time not counted), then one matmul "
        "and argpartition: the limit.",
        "",
        "| queries | streaming s | in-memory matmul s (+ load s) | streaming dot products/s | streaming / in-memory | "
        "streaming peak RSS (MB) | in-memory peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for queries in (1, 16, 64):
        log(f"search: {queries} queries")
        stream = run_json(["benchmarks.search_throughput", "--table", table, "--queries", str(queries), "--mode", "streaming"])
        memory = run_json(["benchmarks.search_throughput", "--table", table, "--queries", str(queries), "--mode", "in_memory"])
        lines.append(
            f"| {queries} | {stream['seconds']:.2f} | {memory['seconds']:.2f} (+ {memory['load_seconds']:.1f}) | "
            f"{stream['dot_products_per_s'] / 1e6:.1f} M | {stream['dot_products_per_s'] / memory['dot_products_per_s']:.2f} | "
            f"{stream['peak_rss_mb']:.0f} | {memory['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "With one query the work is reading 2 GB of embeddings, which the in-memory "
        "figure leaves out; with more queries per pass the streaming search is compute-bound like the matmul.",
    ]
    return "\n".join(lines)


ANN_CONFIGS = [("usearch", "f32"), ("usearch", "f16"), ("usearch", "i8"), ("faiss", "f32"), ("faiss", "f16"),
               ("faiss", "i8"), ("hnswlib", "f32")]


def _million_vectors() -> tuple[str, str]:
    """The search benchmark's 1M-clip table and its embeddings as one .npy (made once)."""
    import numpy as np

    from benchmarks.search_throughput import load_vectors, make_table

    table = make_table(os.path.join(BENCH_CACHE, "search_1m"), 1_000_000)
    vectors = os.path.join(BENCH_CACHE, "ann", "vectors.npy")
    os.makedirs(os.path.dirname(vectors), exist_ok=True)
    if not os.path.exists(vectors) or os.path.getmtime(vectors) < os.path.getmtime(os.path.join(table, "run_summary.json")):
        np.save(vectors, load_vectors(table))
    return table, vectors


def index_section(model: str, log: Callable[[str], None]) -> str:
    del model
    log("index: preparing the 1,000,000-clip table")
    table, vectors = _million_vectors()
    output = os.path.join(BENCH_CACHE, "index_1m")
    shutil.rmtree(output, ignore_errors=True)
    log("index: pipeline.index (f16, one shard)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.index", "--features", table, "--output", output],
                          capture_output=True, text=True, check=False)
    build_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline.index failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    log("index: queries")
    r = run_json(["benchmarks.index_throughput", "--index", output, "--table", table, "--vectors", vectors])
    raw, rows = r["raw_f16_bytes"], r["rows"]
    per_row = r["memory_bytes"] / rows
    per_shard_ms = r["one_p50_ms"] / r["shards"]
    billion = 1_000_000_000
    shards_1b = billion // 1_000_000
    machine_gb = 64
    shards_per_machine = int(machine_gb * 1e9 * 0.8 // (per_row * 1_000_000))
    machines = -(-shards_1b // shards_per_machine)
    return "\n".join([
        "## The index (`pipeline.index`, 1,000,000 clips, f16, default flags; top 10)",
        "",
        "Built by `python -m pipeline.index --features .cache/bench/search_1m --output ...` on the local runner "
        f"({r['shards']} shard of up to 1,000,000 rows). Queried by `python -m benchmarks.index_throughput` through "
        "`IndexSearcher`, what `pipeline.search --index` runs; every latency includes reading the locators "
        "(uri, start and end) of the results. Exact streaming search of one query over the same table runs in "
        "the same process, alternated with the index queries.",
        "",
        "| measure | result | target |",
        "| --- | --- | --- |",
        f"| build (Beam local runner, {r['cores']} cores) | {build_s:.0f} s (about {rows / build_s:,.0f} clips/s) | reported |",
        f"| one query, p50 / p99 (one thread) | {r['one_p50_ms']:.2f} / {r['one_p99_ms']:.2f} ms | < 20 ms |",
        f"| a batch of 16, p50 / p99 (all cores) | {r['batch16_p50_ms']:.1f} / {r['batch16_p99_ms']:.1f} ms | |",
        f"| exact streaming search, one query | {r['streaming_one_s']:.2f} s: the index is "
        f"{r['streaming_one_s'] * 1e3 / r['one_p50_ms']:,.0f}x faster | |",
        f"| recall@10 against exact (ef_search {r['ef_search']}, 256 queries) | {r['recall_at_10']:.3f} | >= 0.95 |",
        f"| memory added by loading the index | {r['memory_bytes'] / 1e6:,.0f} MB = {r['memory_bytes'] / raw:.2f}x the raw "
        f"f16 vectors ({raw / 1e6:,.0f} MB) | < 1.5x |",
        f"| files | graph {r['index_file_bytes'] / 1e6:,.0f} MB + locators {r['locator_file_bytes'] / 1e6:,.0f} MB | |",
        "",
        f"On paper, 1 billion clips (a year of a team's video): {per_row * billion / 1e12:.2f} TB of index in memory at "
        f"{per_row:,.0f} bytes a clip, in {shards_1b:,} shards of 1,000,000. Machines with {machine_gb} GB, 80% of it "
        f"for shards, hold {shards_per_machine} shards each: {machines} machines. A query fans out to every shard; at "
        f"the {per_shard_ms:.2f} ms a 1M shard took here on one thread, a machine's {shards_per_machine} shards cost "
        f"{per_shard_ms * shards_per_machine:.0f} ms of one core, about {per_shard_ms * shards_per_machine / 16:.1f} ms "
        "on 16 cores, plus the merge of "
        f"{machines} x 10 candidates. The build is {shards_1b:,} independent shard builds (one worker each, "
        f"about {build_s:.0f} s of this machine per shard). `pipeline.search --index` loads every shard in one "
        "process, so at that scale the shards are served by several processes and their top 10s merged the way "
        "`IndexSearcher.search` merges shards; i8 (below) halves the memory at a lower recall.",
    ])


def ann_section(model: str, log: Callable[[str], None]) -> str:
    from benchmarks import index_compare

    del model
    log("ann: preparing the 1,000,000-clip table")
    table, vectors = _million_vectors()
    work = os.path.dirname(vectors)
    exact = os.path.join(work, "exact.npy")
    if os.path.exists(exact):
        os.remove(exact)
    lines = [
        "## Approximate-index libraries (1,000,000 clips, 512-d, inner product; top 10)",
        "",
        f"`python -m benchmarks.index_compare` per library and quantization: HNSW with M={index_compare.M}, "
        f"ef_construction={index_compare.EF_CONSTRUCTION}, built on all cores; then, in a new process, the saved "
        f"index is loaded and ef_search raised from {index_compare.EF_SEARCH[0]} until recall@10 against exact "
        f"search reaches {index_compare.TARGET_RECALL} on {index_compare.QUERIES} queries (a clip plus noise). "
        "Latency at that ef: one query on one thread, a batch of 16 on all cores. Memory: resident growth on "
        "loading the index; raw f16 = 1,000,000 x 512 x 2 bytes. The vectors are the search benchmark's table: "
        "videos of 20 clips around 2,000 topics, clips drifting from their video's centre.",
        "",
        "| library | quantization | build s | file MB | memory MB (x raw f16) | ef_search | recall@10 | "
        "1 query p50 / p99 ms | batch 16 p50 / p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    results = []
    for library, quantization in ANN_CONFIGS:
        log(f"ann: {library} {quantization}")
        path = os.path.join(work, f"{library}-{quantization}.index")
        try:
            built = run_json(["benchmarks.index_compare", "build", "--library", library, "--quantization", quantization,
                              "--vectors", vectors, "--output", path])
            q = run_json(["benchmarks.index_compare", "query", "--library", library, "--quantization", quantization,
                          "--vectors", vectors, "--index", path, "--exact", exact])
        finally:
            if os.path.exists(path):
                os.remove(path)
        raw = built["raw_f16_bytes"]
        lines.append(
            f"| {library} | {quantization} | {built['build_s']:.0f} | {built['size_bytes'] / 1e6:,.0f} | "
            f"{q['memory_bytes'] / 1e6:,.0f} ({q['memory_bytes'] / raw:.2f}) | {q['ef_search']} | "
            f"{q['recall_at_10']:.3f} | {q['one_p50_ms']:.2f} / {q['one_p99_ms']:.2f} | "
            f"{q['batch16_p50_ms']:.1f} / {q['batch16_p99_ms']:.1f} |"
        )
        log("ann: " + lines[-1])
        results.append((library, quantization, built, q))
    # The rule: recall@10 >= the target and memory under 1.5x the raw f16 vectors; then the fastest query.
    fit = [r for r in results if r[3]["recall_at_10"] >= index_compare.TARGET_RECALL
           and r[3]["memory_bytes"] < 1.5 * r[2]["raw_f16_bytes"]]
    best = min(fit, key=lambda r: r[3]["one_p50_ms"]) if fit else None
    lines += ["", "The rule: recall@10 >= 0.95 and memory under 1.5x the raw f16 vectors, then the fastest single "
              "query. float32 stores 2x the raw f16 vectors before any graph, so it cannot meet the memory bar "
              "in any library; hnswlib stores float32 only."]
    if best is None:
        lines.append("No configuration met both bars in this run.")
    else:
        lines.append(f"In this run that is **{best[0]} {best[1]}** ({best[3]['one_p50_ms']:.2f} ms, recall "
                     f"{best[3]['recall_at_10']:.3f}, {best[3]['memory_bytes'] / best[2]['raw_f16_bytes']:.2f}x). "
                     + ("The project uses faiss (`vector_index/library.py`)." if best[0] == "faiss" else
                        "The project uses faiss (`vector_index/library.py`): this run disagrees, see above."))
    return "\n".join(lines)


def shuffle_section(model: str, log: Callable[[str], None]) -> str:
    log("shuffle: coder round trip vs model time per clip")
    r = run_json(["benchmarks.shuffle_cost", "--model", model])
    clips_per_1000_hours = 1000 * 3600 * 10 / 32  # 10 fps, 32-frame clips
    terabytes = r["bytes_per_clip"] * clips_per_1000_hours / 1e12
    return "\n".join([
        "## The fusion break before GPU inference (`--inference_accelerator`)",
        "",
        "Clips cross a Reshuffle from the CPU workers that decode to the GPU workers that embed "
        "(T=32, 224x224 uint8). Per clip, in one process, alternated round by round (median of 5):",
        "",
        "| what | per clip |",
        "| --- | --- |",
        f"| bytes shuffled ({r['coder']}) | {r['bytes_per_clip'] / 1e6:.2f} MB (raw frames {r['raw_bytes_per_clip'] / 1e6:.2f} MB) |",
        f"| encode + decode, CPU | {r['coder_ms_per_clip']:.1f} ms |",
        f"| model on this CPU, batch {r['batch']} | {r['model_ms_per_clip']:.0f} ms |",
        "",
        f"Serialization is {r['coder_ms_per_clip'] / r['model_ms_per_clip']:.3f} of the CPU model time per clip; "
        f"the real cost is the volume: {terabytes:.1f} TB shuffled per 1,000 hours of video at 10 fps "
        f"({clips_per_1000_hours:,.0f} clips). See docs/scale.md.",
    ])


SECTIONS: dict[str, Callable[..., str]] = {
    "model": model_section, "decode": decode_section, "split": split_section, "pipeline": pipeline_section,
    "search": search_section, "ann": ann_section, "index": index_section,
    "shuffle": shuffle_section, "precision": precision_section, "isolation": isolation_section,
    "launch": launch_section, "soak": lambda model, log: chunk_soak.section(model, log), "http": http_section,
    "captions": lambda model, log: captions_cost.section(model, log),
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="stand-in SavedModel directory")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")

    def log(msg: str) -> None:
        print(f"[bench {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)

    started = datetime.datetime.now(datetime.UTC)
    parts = [SECTIONS[n](args.model, log) for n in names]
    header = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`python -m benchmarks.run --model .cache/models/standin --output BENCHMARKS.md"
        f"{' --only ' + args.only if args.only != ','.join(SECTIONS) else ''}`) on {started:%Y-%m-%d %H:%M} UTC.",
        "",
        f"Machine: {machine_description()}.",
        "",
        "The machine is shared and noisy: read figures as ratios within this one run.",
        "The model is the untrained stand-in; speed does not depend on the weights.",
        "",
    ]
    if names != list(SECTIONS) and os.path.exists(args.output):
        with open(args.output) as f:
            text = replace_sections(f.read(), parts, f"Section {', '.join(names)} re-run with `--only {args.only}` "
                                    f"on {started:%Y-%m-%d %H:%M} UTC on {machine_description()}; compare within "
                                    "a section.")
    else:
        text = "\n".join(header) + "\n" + "\n\n".join(parts) + "\n"
    with open(args.output, "w") as f:
        f.write(text)
    log(f"wrote {args.output}")
    return 0


def replace_sections(text: str, parts: list[str], note: str) -> str:
    """`text` (a BENCHMARKS.md) with the sections of the same `## ` heading replaced by `parts` (new ones appended),
    and `note` added below the first paragraph."""
    blocks = re.split(r"(?m)^(?=## )", text)
    head, sections = blocks[0], [b.rstrip("\n") + "\n\n" for b in blocks[1:]]
    for part in parts:
        heading = part.splitlines()[0]
        at = next((i for i, b in enumerate(sections) if b.splitlines()[0] == heading), None)
        if at is None:
            sections.append(part + "\n\n")
        else:
            sections[at] = part + "\n\n"
    lines = head.rstrip("\n").split("\n\n")
    lines.insert(2, note)
    return "\n\n".join(lines) + "\n\n" + "".join(sections).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.exit(main())
