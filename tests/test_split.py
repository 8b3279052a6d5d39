"""Long videos split into parts over workers give the rows an unsplit run gives.

Parts are cut at clip starts (decoder.split), decoded side by side (ClipReader's `part`)
and joined (transforms.split.JoinParts): one videos row with the same mean embeddings,
continuous clip_index, the counters of one reader. A part that fails fails its video,
with every part's clips kept and counted.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import numpy as np
import pyarrow.dataset as ds
import pytest
from floats import assert_features_close

from decoder import ClipReader, DecodeOptions, errors
from decoder.split import Extent, Part, plan_parts, read_extent
from pipeline import extract
from storage.layout import read_summary
from synthetic.videos import decode_index, write_video

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5"]


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    return {
        "h264": write_video(str(d / "long.mp4"), 600, fps=15, width=64, height=48, gop=30),  # 40 s
        "mpeg4_avi": write_video(str(d / "long.avi"), 450, fps=15, width=64, height=48, codec="mpeg4",
                                 options={"qscale": "2", "bf": "2"}),  # its first frame shows at 1/15 s
        "vfr": write_video(str(d / "vfr.mkv"), 300, times=[i * 0.1 + (0.03 if i % 3 else 0) for i in range(300)],
                           width=64, height=48),
        "short": write_video(str(d / "short.mp4"), 45, fps=15, width=64, height=48),
    }


def decode_in_parts(path: str, options: DecodeOptions, split_sec: float, start=None, end=None):
    parts = plan_parts(options, split_sec, read_extent(path), start, end)
    clips, infos = [], []
    for part in parts:
        reader = ClipReader(path, options, start, end, part=part.reader_part(options))
        clips += list(reader)
        infos.append((part, reader))
    return parts, clips, infos


@pytest.mark.parametrize("video", ["h264", "mpeg4_avi", "vfr"])
@pytest.mark.parametrize("options, segment", [
    (dict(frames_per_clip=8), (None, None)),
    (dict(frames_per_clip=8, stride=3), (None, None)),  # overlapping clips across part boundaries
    (dict(frames_per_clip=4, stride=10), (None, None)),  # gaps between clips
    (dict(frames_per_clip=8, fps=7.3), (2.5, 27.0)),  # a segment of the video
])
def test_parts_give_the_clips_of_one_reader(long_videos, video, options, segment):
    opts = DecodeOptions(size=32, **options)
    whole = ClipReader(long_videos[video], opts, *segment)
    expected = list(whole)
    parts, got, _ = decode_in_parts(long_videos[video], opts, 8.0, *segment)
    assert len(parts) >= 3
    assert [c.clip_index for c in got] == list(range(len(expected)))
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a.frames, b.frames), f"clip {a.clip_index}"
        assert dataclasses.replace(a, frames=None) == dataclasses.replace(b, frames=None)


def test_plan_parts_cuts_at_clip_starts():
    options = DecodeOptions(fps=10, frames_per_clip=32)
    parts = plan_parts(options, 600.0, Extent(3600.0, 0.0))
    assert len(parts) == 6 and [p.index for p in parts] == list(range(6))
    assert [p.first_clip for p in parts] == [0, 188, 376, 564, 752, 940]  # 188 clips of 3.2 s: 601.6 s a part
    assert parts[-1].next_clip is None and all(p.next_clip == q.first_clip for p, q in itertools.pairwise(parts))
    assert parts[1].reader_part(options) == (188 * 32, 376 * 32 - 32 + 32, 188)
    assert parts[0].reader_part(options)[0] == 0  # the first part finds the first sample time itself
    late = plan_parts(options, 600.0, Extent(3600.0, 0.25))
    assert late[1].first_target == 3 and late[1].reader_part(options)[0] == 3 + 188 * 32
    # what is not split: short videos, splitting off, --num_clips, native rate, no declared duration
    assert plan_parts(options, 600.0, Extent(600.0, 0.0)) == []
    assert plan_parts(options, 0.0, Extent(3600.0, 0.0)) == []
    assert plan_parts(DecodeOptions(num_clips=10), 600.0, Extent(3600.0, 0.0)) == []
    assert plan_parts(DecodeOptions(fps=None), 600.0, Extent(3600.0, 0.0)) == []
    assert plan_parts(options, 600.0, Extent(None, 0.0)) == []
    # a segment: only its length counts
    assert plan_parts(options, 600.0, Extent(3600.0, 0.0), 3000.0, None) == []
    assert len(plan_parts(options, 600.0, Extent(3600.0, 0.0), 1000.0, 2300.0)) == 3


def test_read_extent_reads_no_frame(long_videos):
    extent = read_extent(long_videos["h264"])
    assert extent.duration_sec == pytest.approx(40.0, abs=0.1) and extent.first_frame_sec == 0.0
    assert read_extent(long_videos["mpeg4_avi"]).first_frame_sec == pytest.approx(1 / 15)
    with pytest.raises(errors.OpenError):
        read_extent(long_videos["h264"] + ".missing")


def test_a_part_rejects_num_clips_and_bad_ranges():
    with pytest.raises(ValueError, match="--num_clips"):
        ClipReader("v.mp4", DecodeOptions(num_clips=3), part=(0, 10, 0))
    with pytest.raises(ValueError, match="end after it starts"):
        ClipReader("v.mp4", DecodeOptions(), part=(64, 32, 2))


# ---- the job -------------------------------------------------------------------------------------


def _table(prefix: str, name: str) -> list[dict]:
    return ds.dataset(os.path.join(prefix, name), format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def split_and_whole(long_videos, standin_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("split_runs")
    manifest = d / "videos.txt"
    manifest.write_text("\n".join([long_videos["h264"], long_videos["mpeg4_avi"], long_videos["short"]]) + "\n")
    runs = {}
    for name, split in (("split", "8"), ("whole", "0")):
        prefix = str(d / name)
        args = ["--input", str(manifest), "--output_prefix", prefix, "--model", standin_dir, *FAST,
                "--stride", "6", "--split_sec", split]
        assert extract.main(args) == 0
        runs[name] = prefix
    return runs


def test_split_and_unsplit_runs_give_the_same_rows(split_and_whole):
    split, whole = split_and_whole["split"], split_and_whole["whole"]
    assert _table(split, "failures") == [] and _table(whole, "failures") == []
    features = ("mixed_5c", "video_embedding")

    def rows(prefix, table, key):
        return sorted(_table(prefix, table), key=key)

    clip_key = lambda r: (r["video_id"], r["clip_index"])  # noqa: E731
    a, b = rows(split, "clips", clip_key), rows(whole, "clips", clip_key)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in features} == {k: v for k, v in y.items() if k not in features}
        for f in features:  # parts batch their clips differently: float32 rounding (tests/floats.py)
            assert_features_close(x[f], y[f], f"{x['video_id']} clip {x['clip_index']} {f}")
    a, b = rows(split, "videos", lambda r: r["video_id"]), rows(whole, "videos", lambda r: r["video_id"])
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        # decoded_frames is what was really decoded: each part decodes from the keyframe before it
        same = set(x) - set(features) - {"decoded_frames"}
        assert {k: x[k] for k in same} == {k: y[k] for k in same}
        assert y["decoded_frames"] <= x["decoded_frames"] <= y["decoded_frames"] + 4 * 30
        for f in features:  # the clips were batched differently: float noise of the batch, as between runs
            assert_features_close(x[f], y[f], f"{x['video_id']} {f}")
    counts = read_summary(split)["counts"]
    assert (counts["videos_split"], counts["video_parts"]) == (2, 5 + 4)  # 40 s and 30 s in 8 s parts
    assert read_summary(whole)["counts"]["videos_split"] == 0


def test_a_corrupt_middle_part_fails_its_video_and_keeps_every_parts_clips(standin_dir, tmp_path):
    path = write_video(str(tmp_path / "mj.mkv"), 300, fps=10, codec="mjpeg", pix_fmt="yuvj420p", width=64, height=48)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2: len(data) // 2 + 3000] = bytes(3000)  # frames around 15 s cannot be decoded
    broken = str(tmp_path / "broken.mkv")
    open(broken, "wb").write(data)
    options = ["--size", "32", "--frames_per_clip", "10", "--fps", "10"]

    whole = ClipReader(broken, DecodeOptions(size=32, frames_per_clip=10, fps=10))
    with pytest.raises(errors.CorruptStreamError):
        for _ in whole:
            pass
    prefix = str(tmp_path / "out")
    assert extract.main(["--input", broken, "--output_prefix", prefix, "--model", standin_dir, *options,
                         "--split_sec", "10"]) == 0
    failures, clips = _table(prefix, "failures"), _table(prefix, "clips")
    assert _table(prefix, "videos") == [] and len(failures) == 1
    row = failures[0]
    assert (row["stage"], row["error_type"]) == ("decode", "CorruptStreamError")
    assert row["message"].startswith("part 2 of 3 (from clip 10): stream broke after")
    # parts 1 and 3 whole (10 clips each), part 2 up to the break: all kept, in the table and the count
    assert row["clips_kept"] == len(clips) == 10 + whole.info.num_clips - 10 + 10
    indices = sorted(c["clip_index"] for c in clips)
    assert indices[:10] == list(range(10)) and indices[-10:] == list(range(20, 30))
    summary = read_summary(prefix)
    assert summary["counts"]["videos_failed"] == 1 and summary["counts"]["videos_ok"] == 0


def test_frames_of_a_part_carry_the_right_indices(long_videos):
    """The synthetic frames carry their index: a later part's first clip starts at its planned sample."""
    opts = DecodeOptions(size=32, frames_per_clip=8, fps=15)  # every frame a sample
    parts, clips, _ = decode_in_parts(long_videos["h264"], opts, 8.0)
    for part in parts:
        first = next(c for c in clips if c.clip_index == part.first_clip)
        assert decode_index(first.frames[0]) % (28 * 28) == (part.first_clip * 8) % (28 * 28)
    assert json.dumps([p.index for p in parts]) == json.dumps(list(range(len(parts))))


def test_join_refuses_parts_that_do_not_fit_together():
    """A part whose first sample time is not the one the split planned, or a missing part, fails the video."""
    from transforms.records import VideoRequest
    from transforms.split import JoinPartsFn, part_record

    request = VideoRequest("v", "/v.mp4", part=Part(index=0, count=2, first_target=0, first_clip=0, next_clip=5))
    info = {"video_id": "v", "uri": "/v.mp4", "segment_start_sec": None, "segment_end_sec": None,
            "num_clips": 5, "decoded_frames": 50, "sampled_frames": 40, "duration_sec": 9.0, "dropped_tail_frames": 0}
    fn = JoinPartsFn(DecodeOptions(frames_per_clip=8))
    late = part_record(request, first_target=1, clips=5, info=info)  # the stream started later than the header said
    second = part_record(request._replace(part=Part(1, 2, 0, first_clip=5, next_clip=None)), first_target=40, clips=5,
                         info=info)
    out = list(fn.process(("v", [late[1], second[1]])))
    assert len(out) == 1 and out[0].tag == "failures"
    assert out[0].value["error_type"] == "SplitMismatch" and "--split_sec 0" in out[0].value["message"]
    assert out[0].value["clips_kept"] == 10
    missing = list(fn.process(("v", [second[1]])))
    assert missing[0].value["error_type"] == "SplitMismatch" and "1 of 2 parts" in missing[0].value["message"]
    joined = list(fn.process(("v", [part_record(request, 0, 5, info=info)[1], second[1]])))
    assert joined == [("v", {**info, "num_clips": 10, "decoded_frames": 100, "sampled_frames": 5 * 8 + 40})]
