"""Decoding only what the clips need gives the clips that decoding everything gives.

The reader skips non-reference frames on screen at no used sample time and seeks across
gaps no clip uses; `decode_all=True` turns both off. Every test here compares the two:
same clips (frames, times, indices), same video info but `decoded_frames`, which the
shortcuts lower. Videos are encoded here with PyAV (h264 with B-frames, hevc, vp9,
mpeg4 with B-frames in AVI), constant and variable frame rate.
"""

from __future__ import annotations

import dataclasses
import json
import random

import av
import numpy as np
import pytest

import decoder.decode_less as decode_less
import decoder.reader as reader_module
from decoder import ClipReader, DecodeOptions
from decoder.sampling import SamplePlan
from pipeline import frames as frames_tool
from synthetic.videos import decode_index, write_video

W, H = 96, 64
CODECS = {
    # name: (encoder, extension, encoder options); every one but vp9 writes non-reference B-frames
    "h264": ("libx264", "mp4", None),
    "hevc": ("libx265", "mp4", {"crf": "18", "preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "webm", None),
    "mpeg4": ("mpeg4", "avi", {"qscale": "2", "bf": "2"}),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode_less")
    out = {}
    for name, (encoder, ext, options) in CODECS.items():
        out[name] = write_video(str(folder / f"{name}.{ext}"), 150, fps=30, width=W, height=H, codec=encoder,
                                gop=30, options=options)
    rng = random.Random(0)
    times = [0.0]
    for _ in range(149):
        times.append(times[-1] + rng.choice([1 / 30, 1 / 15, 1 / 60, 0.1]))
    out["vfr"] = write_video(str(folder / "vfr.mkv"), 150, times=times, width=W, height=H)
    out["late_start"] = write_video(str(folder / "late.mp4"), 150, fps=30, width=W, height=H, start_sec=1.3)
    out["long"] = write_video(str(folder / "long.mp4"), 1800, fps=30, width=W, height=H, gop=30)
    return out


def both(path: str, start: float | None = None, end: float | None = None, **options):
    """(clips, info) decoding everything, then decoding less."""
    runs = []
    for decode_all in (True, False):
        reader = ClipReader(path, DecodeOptions(size=32, **options), start, end, decode_all=decode_all)
        runs.append((list(reader), reader.info))
    return runs


def assert_same(runs) -> tuple[int, int]:
    """The clips and the info agree; returns (decoded_frames decoding everything, decoding less)."""
    (clips_all, info_all), (clips_less, info_less) = runs
    assert len(clips_less) == len(clips_all) > 0
    for a, b in zip(clips_all, clips_less, strict=True):
        assert np.array_equal(a.frames, b.frames), f"clip {a.clip_index}: frames differ"
        assert dataclasses.replace(a, frames=None) == dataclasses.replace(b, frames=None)
    everything, less = dataclasses.asdict(info_all), dataclasses.asdict(info_less)
    assert everything.pop("decoded_frames") == info_all.decoded_frames
    less.pop("decoded_frames")
    assert less == everything
    return info_all.decoded_frames, info_less.decoded_frames


SETTINGS = {
    "10fps": ((None, None), {}),
    "7.3fps": ((None, None), {"fps": 7.3}),
    "stride_gap": ((None, None), {"frames_per_clip": 8, "stride": 24}),
    "num_clips": ((None, None), {"frames_per_clip": 8, "num_clips": 3}),
    "segment": ((1.5, 4.2), {"frames_per_clip": 8}),
    "segment_num_clips": ((1.0, None), {"frames_per_clip": 4, "num_clips": 2}),
}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("video", ["h264", "hevc", "vp9", "mpeg4", "vfr", "late_start"])
def test_decoding_less_gives_the_same_clips(videos, video, setting):
    (start, end), options = SETTINGS[setting]
    everything, less = assert_same(both(videos[video], start, end, **options))
    assert less <= everything


@pytest.mark.parametrize("video", ["h264", "hevc", "mpeg4"])
def test_non_reference_frames_between_samples_are_not_decoded(videos, video):
    """At 10 fps from 30, frames on screen at no sample time are left out where the codec marks them."""
    everything, less = assert_same(both(videos[video]))
    assert everything == 150
    assert less <= 0.8 * everything, (video, less)


def test_vp9_has_no_frame_to_skip(videos):
    """libvpx writes no non-reference frames here: the codec decodes them all (the measured no-gain case)."""
    everything, less = assert_same(both(videos["vp9"]))
    assert less == everything == 150


def test_num_clips_on_a_long_video_decodes_a_small_fraction(videos):
    everything, less = assert_same(both(videos["long"], frames_per_clip=16, num_clips=5))
    assert everything >= 1790
    assert less <= 0.2 * 1800, less


def test_a_seek_that_lands_past_its_target_is_made_again(videos):
    """Containers that index by decoding time (AVI) can land on a keyframe shown after the time asked for;
    here the first seek of each gap lands a second late on purpose, and the reader seeks again from further back."""
    seeks = []
    original = decode_less.Packets.seek

    def late_first(self, pts):
        late = not seeks or seeks[-1][1]  # the first seek, and the first after each good one
        seeks.append((pts, not late))
        return original(self, pts + (int(1 / self.stream.time_base) if late else 0))  # a second late

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode_less.Packets, "seek", late_first)
        everything, less = assert_same(both(videos["long"], frames_per_clip=16, num_clips=4))
    late = [pts for pts, ok in seeks if not ok]
    assert len(late) >= 3 and len(seeks) > len(late)  # each gap: a late landing, then a seek further back
    assert less < 0.5 * everything


def test_seeks_that_always_land_late_end_in_decoding_from_the_start(videos):
    """After MAX_RESEEKS late landings (or landings at the end) the reader seeks to the stream's start and
    takes the frames as they come; a segment's first seek too, in both modes."""
    original = decode_less.Packets.seek

    def always_late(self, pts):  # a broken index: every seek but to the start lands 100 s on, past the end
        return original(self, pts + int(100 / self.stream.time_base) if pts > 0 else pts)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode_less.Packets, "seek", always_late)
        everything, less = assert_same(both(videos["long"], frames_per_clip=16, num_clips=3))
    # Once back at the start, the reader decodes through the later gaps instead of seeking into the
    # broken index again (each round trip to the start once gained one frame: 441,258 decoded, not 1,800).
    assert less <= everything
    reference = both(videos["long"], 20.0, 24.0, frames_per_clip=8)[0]  # seeks land where asked
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode_less.Packets, "seek", always_late)
        late = both(videos["long"], 20.0, 24.0, frames_per_clip=8)
    assert_same(late)
    assert_same([reference, late[1]])


def test_a_failed_seek_decodes_everything(videos):
    def broken(self, pts):
        raise av.error.InvalidDataError(0, "seek", "stream")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode_less.Packets, "seek", broken)
        everything, less = assert_same(both(videos["long"], frames_per_clip=16, num_clips=3))
    assert less >= everything  # no seek: everything up to the last window was decoded


def test_a_container_declaring_more_than_it_holds_falls_back_to_decoding_everything(videos):
    """The windows are planned on the declared length; the last moves to the real end, onto samples that
    were left out, and the reader decodes the video again in full (each clip given once)."""
    declared = reader_module.declared_duration
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader_module, "declared_duration", lambda container, stream: 2 * declared(container, stream))
        everything, less = assert_same(both(videos["long"], frames_per_clip=16, num_clips=4))
    assert less > everything  # a sparse pass, then a full one


def test_sample_plan():
    plan = SamplePlan(frames_per_clip=4, stride=10, starts=None)
    assert [plan.next_needed(i) for i in (0, 3, 4, 9, 10, 14)] == [0, 3, 10, 10, 10, 20]
    assert SamplePlan(4, 2, None).uses_all
    windows = SamplePlan(frames_per_clip=4, stride=4, starts=[0, 20, 50])
    assert [windows.next_needed(i) for i in (-3, 2, 4, 21, 24, 53, 54)] == [0, 2, 20, 21, 50, 53, None]


# ---- pipeline.frames -----------------------------------------------------------------------------


def test_frames_tool_writes_what_the_job_decodes(videos, tmp_path, capsys):
    """The tool's frames are the job's clip frames: each sample once, in order, without padding."""
    from transforms.decode import DecodeClipsFn
    from transforms.records import ClipItem, VideoRequest

    path = videos["vfr"]
    flags = ["--fps", "10", "--frames_per_clip", "8", "--stride", "4", "--size", "32"]
    out, sheet = str(tmp_path / "f.npy"), str(tmp_path / "s.png")
    assert frames_tool.main([path, "--output", out, "--sheet", sheet, "--sheet_thumb", "16", "--sheet_clips", "100",
                             *flags]) == 0
    summary = json.loads(capsys.readouterr().out)
    frames = np.load(out)

    fn = DecodeClipsFn(DecodeOptions(fps=10, frames_per_clip=8, stride=4, size=32))
    fn.setup()
    clips = [o.clip for o in fn.process(VideoRequest("v", path)) if isinstance(o, ClipItem)]
    expected = {}
    for clip in clips:
        for j in range(clip.num_frames):
            expected.setdefault(clip.first_sample + j, clip.frames[j])
    assert frames.dtype == np.uint8 and frames.shape == (len(expected), 32, 32, 3)
    assert np.array_equal(frames, np.stack([expected[i] for i in sorted(expected)]))
    assert summary["clips"] == len(clips) and summary["frames_written"] == len(expected)
    assert summary["sampled_frames"] == len(expected) and 0 < summary["decoded_frames"] <= 150
    assert summary["seconds"] > 0 and summary["codec"] == "h264"
    # the frames carry their own index: time order, none repeated
    times = [decode_index(f) for f in frames]
    assert times == sorted(times)

    with av.open(sheet) as image:
        picture = next(image.decode(video=0))
    rows = len(clips)  # fewer than --sheet_clips: one row each, 2-pixel white lines between
    assert (picture.width, picture.height) == (8 * 16, rows * 16 + (rows - 1) * 2)


def test_frames_tool_sheet_keeps_clips_chosen_evenly(videos, tmp_path, capsys):
    sheet = str(tmp_path / "s.png")
    flags = ["--frames_per_clip", "4", "--size", "16", "--sheet_clips", "5", "--sheet_thumb", "16"]
    assert frames_tool.main([videos["long"], "--sheet", sheet, *flags]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 150 and summary["frames_written"] == 0
    with av.open(sheet) as image:
        picture = next(image.decode(video=0))
    assert picture.height <= 5 * 18 and picture.width == 4 * 16


def test_frames_tool_errors_name_the_problem(videos, tmp_path, capsys):
    assert frames_tool.main([str(tmp_path / "missing.mp4")]) == 1
    assert "missing.mp4: no such file" in capsys.readouterr().err
    assert frames_tool.main([videos["h264"], "--output", str(tmp_path / "f.txt")]) == 2
    assert "--output must name a .npy file" in capsys.readouterr().err
    assert frames_tool.main([videos["h264"], "--fps", "0"]) == 2
    assert "--fps must be > 0" in capsys.readouterr().err
    assert frames_tool.main([videos["h264"], "--start_sec", "3", "--end_sec", "2"]) == 2
    assert "--end_sec must be > --start_sec" in capsys.readouterr().err
    assert not (tmp_path / "f.txt").exists()
