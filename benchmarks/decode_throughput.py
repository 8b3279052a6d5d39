"""Decode throughput of the clip reader against the ffmpeg command line doing the same work.

    python -m benchmarks.decode_throughput --source FILE --tool ours|ffmpeg

Both sample at 10 fps, centre-crop, scale to 224x224 and produce RGB24 bytes:
ffmpeg as `-vf fps=10,crop,scale=224:224 -f rawvideo` to /dev/null, ours as clips
of 32 frames. Prints one JSON line with wall time, sampled and source frames per
second, and peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import time

import av
import numpy as np

from synthetic.videos import write_video

SOURCES = {
    # name: (width, height, codec, pix_fmt, seconds, fps)
    "720p_h264": (1280, 720, "libx264", "yuv420p", 60, 30),
    "480p_mpeg4": (854, 480, "mpeg4", "yuv420p", 60, 30),
    "480p_mpeg4_30s": (854, 480, "mpeg4", "yuv420p", 30, 30),
    "360p_h264_10min": (640, 360, "libx264", "yuv420p", 600, 30),
    "360p_h264_1min": (640, 360, "libx264", "yuv420p", 60, 30),
    "360p_h264_4min": (640, 360, "libx264", "yuv420p", 240, 30),
}


def _textured_frame_fn(width: int, height: int):
    """A panning textured scene with a moving block: costs a decoder about what real footage does."""
    rng = np.random.default_rng(0)
    tex_h, tex_w = height + 256, width + 512
    base = rng.integers(0, 256, (-(-tex_h // 8), -(-tex_w // 8), 3), dtype=np.uint8)
    texture = np.kron(base, np.ones((8, 8, 1), np.uint8))  # blocky detail, compressible like real footage
    noise = rng.integers(0, 12, (height, width, 3), dtype=np.uint8)

    def frame(i: int, w: int, h: int) -> np.ndarray:
        x, y = (3 * i) % 512, (i // 2) % 256
        img = texture[y: y + h, x: x + w].copy()
        img += noise if i % 2 else noise[::-1]
        bx = (7 * i) % (w - 64)
        img[h // 3: h // 3 + 64, bx: bx + 64] = (255, 200, 0)
        return img

    return frame


def make_source(name: str, directory: str) -> str:
    width, height, codec, pix_fmt, seconds, fps = SOURCES[name]
    ext = "mp4" if codec == "libx264" else "avi"
    path = os.path.join(directory, f"{name}.{ext}")
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".part." + ext
    write_video(tmp, seconds * fps, fps=fps, width=width, height=height, codec=codec, pix_fmt=pix_fmt,
                frame_fn=_textured_frame_fn(width, height), gop=fps * 2,
                options={"crf": "23", "preset": "veryfast"} if codec == "libx264" else {"b": "4000000"})
    os.replace(tmp, path)
    return path


def run_ours(path: str, threads: int) -> dict:
    from decoder import ClipReader, DecodeOptions

    reader = ClipReader(path, DecodeOptions(fps=10, frames_per_clip=32, size=224, threads=threads))
    start = time.perf_counter()
    clips = sum(1 for _ in reader)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "sampled_frames": reader.info.sampled_frames,
            "source_frames": reader.info.decoded_frames, "clips": clips}


def run_ffmpeg(path: str) -> dict:
    with av.open(path) as c:
        s = c.streams.video[0]
        side = min(s.codec_context.width, s.codec_context.height)
        source_frames = s.frames or 0
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-threads", "0", "-i", path,
           "-vf", f"fps=10,crop={side}:{side},scale=224:224", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}")
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "sampled_frames": total // (224 * 224 * 3), "source_frames": source_frames}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--tool", choices=["ours", "ffmpeg"], required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    result = run_ours(args.source, args.threads) if args.tool == "ours" else run_ffmpeg(args.source)
    result.update(
        tool=args.tool,
        sampled_fps=result["sampled_frames"] / result["seconds"],
        source_fps=result["source_frames"] / result["seconds"],
        peak_rss_mb=resource.getrusage(
            resource.RUSAGE_SELF if args.tool == "ours" else resource.RUSAGE_CHILDREN
        ).ru_maxrss / 1024,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
