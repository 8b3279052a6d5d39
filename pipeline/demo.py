"""`make demo`: the extraction job end to end on generated sample videos and the stand-in model.

    python -m pipeline.demo --model .cache/models/standin [--workdir .cache/demo]

Generates a handful of short videos once (cached), including one broken file to
show a failure record, runs `pipeline.extract` locally, and prints a peek at the tables.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys

import numpy as np

from s3d.quiet import add_log_level_arguments
from storage.objects import write_object

SAMPLES = [
    # name, frames, fps, width, height, codec, pix_fmt, extra
    ("kitchen_h264.mp4", 120, 30, 320, 180, "libx264", "yuv420p", {}),
    ("phone_portrait.mp4", 90, 30, 320, 180, "libx264", "yuv420p", {"rotation": -90}),
    ("street_vp9.webm", 60, 24, 256, 144, "libvpx-vp9", "yuv420p", {}),
    ("garden_mjpeg.mkv", 50, 25, 200, 150, "mjpeg", "yuvj420p", {}),
    ("short_clip.mp4", 20, 10, 160, 120, "libx264", "yuv420p", {}),
]
BROKEN = "corrupt_upload.mp4"


def _moving_scene(i: int, w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2 + 3 * i) % 256], axis=-1).astype(np.uint8)
    cx, cy = (5 * i) % (w - 40), h // 2 - 20
    img[cy: cy + 40, cx: cx + 40] = (250, 250, 250)
    return img


def make_samples(directory: str) -> str:
    """Writes the sample videos and a CSV manifest (once); returns the manifest path."""
    from synthetic.videos import write_video

    os.makedirs(directory, exist_ok=True)
    manifest = os.path.join(directory, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    rows = []
    for name, frames, fps, width, height, codec, pix_fmt, extra in SAMPLES:
        path = os.path.join(directory, name)
        write_video(path, frames, fps=fps, width=width, height=height, codec=codec, pix_fmt=pix_fmt,
                    frame_fn=_moving_scene, **extra)
        rows.append({"video_id": os.path.splitext(name)[0], "uri": os.path.abspath(path)})
    broken = os.path.join(directory, BROKEN)
    with open(broken, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))  # an mp4 header, then garbage
    rows.append({"video_id": "corrupt_upload", "uri": os.path.abspath(broken)})
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["video_id", "uri"])
    writer.writeheader()
    writer.writerows(rows)
    write_object(manifest, text.getvalue().encode("utf-8"), "text/csv")  # all or nothing
    return manifest


def peek(output_prefix: str) -> None:
    import pyarrow.dataset as ds

    for table in ("clips", "videos", "failures"):
        data = ds.dataset(os.path.join(output_prefix, table), format="parquet").to_table()
        print(f"\n{table}: {data.num_rows} rows; columns: {', '.join(data.schema.names)}")
        plain = [c for c in data.schema.names if c not in ("mixed_5c", "video_embedding", "uri")]
        for row in data.sort_by([("video_id", "ascending")]).slice(0, 4).to_pylist():
            shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items() if k in plain}
            if "video_embedding" in row:
                shown["video_embedding[:3]"] = [round(v, 3) for v in row["video_embedding"][:3]]
            print("  ", shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SavedModel directory (make demo exports the stand-in)")
    parser.add_argument("--workdir", default=os.path.join(".cache", "demo"), help="samples and output (default: .cache/demo)")
    add_log_level_arguments(parser)
    args = parser.parse_args(argv)

    from pipeline import extract

    manifest = make_samples(os.path.join(args.workdir, "videos"))
    output = os.path.join(args.workdir, "output")
    print(f"demo: extracting features from the videos listed in {manifest}", flush=True)
    status = extract.main([
        "--input", manifest, "--output_prefix", output, "--model", args.model, "--runner", "DirectRunner",
        *(["--log_level", args.log_level] if args.log_level else []),
    ])
    if status == 0:
        peek(output)
        print("\nThe bundled model is an untrained stand-in: shapes and plumbing are real, the numbers carry "
              "no meaning. Use --model with the real module for real features (see docs/model.md).")
    return status


if __name__ == "__main__":
    sys.exit(main())
