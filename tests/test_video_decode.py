"""The PyAV clip reader: containers and codecs, sampling, crops, windows, segments, limits, errors.

Every video is encoded here with PyAV; frames carry their own index (synthetic.videos).
"""

from __future__ import annotations

import random
import sys
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

from decoder import ClipReader, DecodeOptions, errors
from synthetic.videos import LEVELS, code, decode_index, pattern_frame, write_audio_only, write_video


def read(path: str, **options) -> tuple[list, object]:
    reader = ClipReader(path, DecodeOptions(**options))
    clips = list(reader)
    return clips, reader.info


def indices(clip) -> list[int]:
    return [decode_index(f) for f in clip.frames]


def test_the_decoder_stands_alone(tmp_path):
    """Decoding imports neither TensorFlow nor Beam (decode-only tools and tests do not pay for them)."""
    import subprocess

    path = write_video(str(tmp_path / "v.mp4"), 10, fps=10)
    code_ = (
        "import sys; from decoder import ClipReader, DecodeOptions\n"
        f"clips = list(ClipReader({path!r}, DecodeOptions(frames_per_clip=4, size=32)))\n"
        "print(len(clips), sorted(m for m in ('tensorflow', 'apache_beam') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code_], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3 []"


def test_a_remote_uri_is_read_through_the_opener_it_is_given(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), 10, fps=10)
    opened = []

    def opener(uri):
        opened.append(uri)
        return open(path, "rb")

    clips = list(ClipReader("mem://bucket/v.mp4", DecodeOptions(frames_per_clip=4, size=32), opener=opener))
    assert opened == ["mem://bucket/v.mp4"] and len(clips) == 3
    with pytest.raises(errors.OpenError, match="needs an opener"):
        list(ClipReader("mem://bucket/v.mp4", DecodeOptions()))

    def missing(uri):
        raise FileNotFoundError(uri)

    with pytest.raises(errors.OpenError, match="no such object") as e:
        list(ClipReader("mem://bucket/gone.mp4", DecodeOptions(), opener=missing))
    assert not e.value.transient

    def flaky(uri):
        raise TimeoutError("read timed out")

    with pytest.raises(errors.OpenError, match="TimeoutError") as e:
        list(ClipReader("mem://bucket/slow.mp4", DecodeOptions(), opener=flaky))
    assert e.value.transient


# ---- containers and codecs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,codec,pix_fmt",
    [
        ("v.mp4", "libx264", "yuv420p"),
        ("v.avi", "mpeg4", "yuv420p"),
        ("v.webm", "libvpx-vp9", "yuv420p"),
        ("v.mkv", "mjpeg", "yuvj420p"),
    ],
)
def test_containers_and_codecs(tmp_path, name, codec, pix_fmt):
    path = write_video(str(tmp_path / name), 40, fps=20, width=80, height=60, codec=codec, pix_fmt=pix_fmt)
    clips, info = read(path, fps=10, frames_per_clip=8, size=32)
    # 40 frames at 20 fps = 2 s -> 20 samples at 10 fps -> clips of 8: 8, 8, 4 (+4 padding)
    assert info.sampled_frames == 20
    # every frame but the non-reference ones on screen at no sample time (x264 writes such B-frames)
    assert 20 <= info.decoded_frames < 40 if codec == "libx264" else info.decoded_frames == 40
    assert [c.num_frames for c in clips] == [8, 8, 4] and [c.padded for c in clips] == [False, False, True]
    assert all(c.frames.shape == (8, 32, 32, 3) and c.frames.dtype == np.uint8 for c in clips)
    assert indices(clips[0]) == list(range(0, 16, 2))
    assert indices(clips[2]) == [32, 34, 36, 38, 38, 38, 38, 38]
    assert (info.width, info.height, info.native_fps) == (80, 60, 20.0)
    assert info.codec in {"h264", "mpeg4", "vp9", "libvpx-vp9", "mjpeg"}
    assert info.duration_sec == pytest.approx(2.0, abs=0.06)


def test_audio_stream_before_video(tmp_path):
    path = write_video(str(tmp_path / "a.mp4"), 20, fps=10, audio="first")
    import av

    with av.open(path) as c:
        assert c.streams[0].type == "audio"  # the fixture really puts audio first
    clips, info = read(path, fps=10, frames_per_clip=10, size=32)
    assert [indices(c) for c in clips] == [list(range(10)), list(range(10, 20))]


def test_29_97_fps_sampled_by_timestamps(tmp_path):
    rate = Fraction(30000, 1001)
    path = write_video(str(tmp_path / "ntsc.mp4"), 90, fps=rate, width=64, height=48)
    clips, info = read(path, fps=10, frames_per_clip=4, size=32)
    assert info.native_fps == pytest.approx(29.97, abs=0.01)
    got = [i for c in clips for i, k in zip(indices(c), range(c.num_frames), strict=False)]
    # The frame shown at t = k/10 is the last one that started at or before it.
    expected = [int(np.floor(k / 10 * float(rate) + 1e-9)) for k in range(len(got))]
    assert got == expected
    assert info.sampled_frames == 31  # 90 frames / 29.97 = 3.003 s -> targets 0.0 .. 3.0


def test_variable_frame_rate(tmp_path):
    times = [0.0, 0.05, 0.1, 0.3, 0.35, 0.7, 0.75, 0.8, 1.2, 1.25]
    path = write_video(str(tmp_path / "vfr.mkv"), len(times), times=times, codec="mjpeg", pix_fmt="yuvj420p")
    clips, info = read(path, fps=10, frames_per_clip=4, size=32)
    got = [i for c in clips for i in indices(c)[: c.num_frames]]
    expected = [max(j for j, t in enumerate(times) if t <= k / 10 + 1e-9) for k in range(len(got))]
    assert got == expected
    assert len(got) == 14  # targets 0.0 .. 1.3: the last frame (1.25 s) lasts its nominal 0.1 s


def test_stream_starting_above_zero(tmp_path):
    path = write_video(str(tmp_path / "late.mkv"), 30, fps=10, start_sec=7.5, codec="mjpeg", pix_fmt="yuvj420p")
    clips, info = read(path, fps=5, frames_per_clip=4, size=32)
    assert clips[0].start_sec == 0.0 and indices(clips[0]) == [0, 2, 4, 6]
    assert clips[1].start_sec == pytest.approx(0.8) and indices(clips[1]) == [8, 10, 12, 14]


def test_native_rate_keeps_every_frame(tmp_path):
    path = write_video(str(tmp_path / "n.mp4"), 25, fps=25)
    clips, info = read(path, fps=None, frames_per_clip=10, size=32)
    assert [i for c in clips for i in indices(c)[: c.num_frames]] == list(range(25))
    assert [c.start_sec for c in clips] == pytest.approx([0.0, 0.4, 0.8])


def test_clip_times_within_one_sample_of_the_truth(tmp_path):
    path = write_video(str(tmp_path / "t.mp4"), 150, fps=30, width=64, height=48)
    clips, _ = read(path, fps=10, frames_per_clip=8, size=32)
    assert len(clips) == 7
    for clip in clips:
        true_start = indices(clip)[0] / 30
        assert abs(clip.start_sec - true_start) <= 1 / 10
        assert clip.end_sec == pytest.approx(clip.start_sec + clip.num_frames / 10)


# ---- spatial preprocessing ----------------------------------------------------------------------


def _has_colour(frame: np.ndarray) -> bool:
    spread = frame.astype(int).max(axis=-1) - frame.astype(int).min(axis=-1)
    return bool((spread > 60).any())


@pytest.mark.parametrize("width,height", [(175, 143), (143, 175), (96, 54)])
def test_centre_crop_is_centred_for_odd_and_portrait_sizes(tmp_path, width, height):
    path = write_video(str(tmp_path / "odd.mkv"), 6, fps=10, width=width, height=height, codec="mjpeg", pix_fmt="yuvj444p")
    clips, info = read(path, fps=None, frames_per_clip=6, size=64)
    frames = clips[0].frames
    assert frames.shape == (6, 64, 64, 3)
    assert not _has_colour(frames[:, 2:-2, 2:-2])  # the red/blue bands outside the centre square are gone
    assert indices(clips[0]) == list(range(6))
    assert (info.width, info.height) == (width, height)


def test_resize_keeps_the_whole_frame_and_short_side_crops(tmp_path):
    path = write_video(str(tmp_path / "wide.mkv"), 2, fps=10, width=128, height=64, codec="mjpeg", pix_fmt="yuvj444p")
    resized, _ = read(path, fps=None, frames_per_clip=2, size=32, crop="resize")
    frame = resized[0].frames[0].astype(int)
    assert frame[16, 2, 0] > 150 and frame[16, 2, 2] < 100  # red band on the left survives
    assert frame[16, -3, 2] > 150 and frame[16, -3, 0] < 100  # blue band on the right survives
    short, _ = read(path, fps=None, frames_per_clip=2, size=32, crop="short_side")
    assert not _has_colour(short[0].frames[0, 1:-1, 1:-1])


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    bright = lambda i, w, h: pattern_frame(i + 20, w, h)  # noqa: E731  top half much brighter than bottom
    path = write_video(str(tmp_path / "rot.mp4"), 4, fps=10, width=64, height=64, rotation=rotation, frame_fn=bright)
    plain = write_video(str(tmp_path / "plain.mp4"), 4, fps=10, width=64, height=64, frame_fn=bright)
    rotated, info = read(path, fps=None, frames_per_clip=4, size=32)
    upright, _ = read(plain, fps=None, frames_per_clip=4, size=32)
    assert info.rotation == rotation
    # Display matrix angles turn counter-clockwise, like np.rot90 with k = angle / 90.
    expected = np.rot90(upright[0].frames[1], k=rotation // 90)
    assert np.abs(rotated[0].frames[1].astype(int) - expected.astype(int)).mean() < 3
    assert np.abs(rotated[0].frames[1].astype(int) - upright[0].frames[1].astype(int)).mean() > 20


def test_rotated_portrait_reports_display_size(tmp_path):
    path = write_video(str(tmp_path / "phone.mp4"), 4, fps=10, width=96, height=64, rotation=-90)
    _, info = read(path, fps=None, frames_per_clip=4, size=32)
    assert (info.width, info.height) == (64, 96)


# ---- windows and tails --------------------------------------------------------------------------


def test_sliding_windows_with_stride(tmp_path):
    path = write_video(str(tmp_path / "s.mp4"), 20, fps=10)
    clips, _ = read(path, fps=None, frames_per_clip=8, stride=4, size=32)
    assert [indices(c)[0] for c in clips] == [0, 4, 8, 12]
    assert [c.num_frames for c in clips] == [8, 8, 8, 8]  # 12..19 covers the end: no tail clip
    gaps, _ = read(path, fps=None, frames_per_clip=4, stride=8, size=32)
    assert [indices(c) for c in gaps] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]


def test_tail_policies(tmp_path):
    path = write_video(str(tmp_path / "tail.mp4"), 13, fps=10)
    padded, info = read(path, fps=None, frames_per_clip=6, size=32)
    assert [c.num_frames for c in padded] == [6, 6, 1] and padded[-1].padded
    assert indices(padded[-1]) == [12, 12, 12, 12, 12, 12]
    dropped, info = read(path, fps=None, frames_per_clip=6, size=32, tail="drop")
    assert [c.num_frames for c in dropped] == [6, 6] and info.dropped_tail_frames == 1


def test_one_frame_video_and_shorter_than_a_clip(tmp_path):
    one = write_video(str(tmp_path / "one.mp4"), 1, fps=10)
    clips, info = read(one, fps=10, frames_per_clip=32, size=32)
    assert len(clips) == 1 and clips[0].num_frames == 1 and clips[0].padded
    assert indices(clips[0]) == [0] * 32
    short = write_video(str(tmp_path / "short.mp4"), 12, fps=10)
    clips, _ = read(short, fps=10, frames_per_clip=32, size=32)
    assert len(clips) == 1 and clips[0].num_frames == 12 and clips[0].padded
    with pytest.raises(errors.TooShortError, match="fewer than frames_per_clip=32"):
        read(short, fps=10, frames_per_clip=32, size=32, tail="drop")


def test_num_clips_spread_evenly_as_in_the_authors_eval(tmp_path):
    path = write_video(str(tmp_path / "n.mp4"), 100, fps=10)  # 10 s
    clips, _ = read(path, fps=10, frames_per_clip=10, num_clips=4, size=32)
    starts = np.linspace(0, 10 - 1.0, 4)
    assert [indices(c)[0] for c in clips] == [int(round(s * 10)) for s in starts]
    assert [c.clip_index for c in clips] == [0, 1, 2, 3] and all(c.num_frames == 10 for c in clips)
    short = write_video(str(tmp_path / "short.mp4"), 6, fps=10)
    clips, _ = read(short, fps=10, frames_per_clip=10, num_clips=3, size=32)
    assert len(clips) == 3 and all(c.padded and c.num_frames == 6 for c in clips)


# ---- segments -----------------------------------------------------------------------------------


def test_segment_seeks_and_keeps_only_the_range(tmp_path):
    path = write_video(str(tmp_path / "long.mp4"), 300, fps=10, gop=10)  # keyframe every second
    reader = ClipReader(path, DecodeOptions(fps=10, frames_per_clip=4, size=32), start_sec=20.0, end_sec=22.0)
    clips = list(reader)
    assert [indices(c) for c in clips] == [list(range(s, s + 4)) for s in (200, 204, 208, 212, 216)]
    assert clips[0].start_sec == pytest.approx(20.0)
    assert reader.info.decoded_frames < 40  # seeked to the keyframe before 20 s, not decoded from 0


def test_segment_outside_the_video(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), 20, fps=10)
    with pytest.raises(errors.NoFramesError, match=r"\[50.0, 60.0\)"):
        list(ClipReader(path, DecodeOptions(fps=10, frames_per_clip=4, size=32), start_sec=50.0, end_sec=60.0))
    with pytest.raises(ValueError, match="end_sec"):
        ClipReader(path, DecodeOptions(), start_sec=5.0, end_sec=2.0)


# ---- limits and errors --------------------------------------------------------------------------


def test_limits_are_typed_errors(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), 60, fps=10, width=64, height=48)
    with pytest.raises(errors.LimitExceededError, match="max_pixels=1000") as info:
        read(path, size=32, max_pixels=1000)
    assert info.value.limit == "max_pixels"
    with pytest.raises(errors.LimitExceededError, match="max_duration_sec") as info:
        read(path, size=32, frames_per_clip=4, max_duration_sec=2.0)
    assert info.value.limit == "max_duration_sec"
    with pytest.raises(errors.LimitExceededError, match="max_seconds_per_video") as info:
        read(path, size=32, frames_per_clip=4, max_seconds_per_video=1e-9)


@pytest.mark.parametrize(
    "maker,error,message",
    [
        (lambda p: open(p, "wb").close(), errors.OpenError, "empty file"),
        (lambda p: open(p, "wb").write(random.Random(0).randbytes(20000)), errors.OpenError,
         "not a readable media file"),
        (lambda p: open(p, "w").write("this is not a video\n" * 100), errors.OpenError, "not a readable media file"),
        (lambda p: write_audio_only(p), errors.NoVideoStreamError, "no video stream"),
    ],
    ids=["zero-bytes", "random-bytes", "text-renamed-mp4", "audio-only"],
)
def test_broken_inputs_raise_typed_errors_naming_the_uri(tmp_path, maker, error, message):
    path = str(tmp_path / "bad.mp4")
    maker(path)
    with pytest.raises(error, match=message) as info:
        read(path, size=32)
    assert path in str(info.value) and info.value.uri == path


def test_any_random_bytes_give_a_typed_error_naming_the_uri(tmp_path):
    # About one random file in 200 probes as a subtitle format (a "no video stream" error
    # then): whatever ffmpeg makes of the bytes, the reader raises one of its own errors.
    kinds = set()
    for seed in range(40):
        path = str(tmp_path / f"noise{seed}.mp4")
        with open(path, "wb") as f:
            f.write(random.Random(seed).randbytes(20000))
        with pytest.raises(errors.VideoError) as info:
            read(path, size=32)
        assert info.value.uri == path and path in str(info.value)
        kinds.add(type(info.value))
    assert errors.OpenError in kinds


def test_missing_path(tmp_path):
    path = str(tmp_path / "nope.mp4")
    with pytest.raises(errors.OpenError, match="no such file") as info:
        read(path)
    assert info.value.stage == "open" and not info.value.transient


def test_truncated_file_keeps_clips_before_the_break(tmp_path):
    path = write_video(str(tmp_path / "full.mkv"), 100, fps=10, codec="mjpeg", pix_fmt="yuvj420p")
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.mkv")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    reader = ClipReader(cut, DecodeOptions(fps=10, frames_per_clip=10, size=32))
    got = []
    with pytest.raises(errors.CorruptStreamError, match="truncated") as info:
        for clip in reader:
            got.append(clip)
    assert 3 <= len(got) <= 6 and info.value.clips_emitted == len(got)
    assert indices(got[0]) == list(range(10))


def test_truncated_mp4_without_index_cannot_open(tmp_path):
    path = write_video(str(tmp_path / "full.mp4"), 50, fps=10)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.mp4")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])  # the moov atom sits at the end: it is gone
    with pytest.raises(errors.OpenError):
        read(cut, size=32)


def test_options_name_the_bad_value():
    with pytest.raises(ValueError, match="fps must be > 0.*got -1"):
        DecodeOptions(fps=-1)
    with pytest.raises(ValueError, match="size must be an even number"):
        DecodeOptions(size=225)
    with pytest.raises(ValueError, match="crop must be one of"):
        DecodeOptions(crop="middle")
    with pytest.raises(ValueError, match="exclude each other"):
        DecodeOptions(stride=4, num_clips=3)
    # The model's rule, and the job's flag names, straight from the decoder.
    with pytest.raises(ValueError, match=r"^--frames_per_clip must be even .* got 5$"):
        DecodeOptions(frames_per_clip=5)
    with pytest.raises(ValueError, match=r"^--decode_threads must be >= 0, got -1$"):
        DecodeOptions(threads=-1)


def test_preprocessing_is_the_fingerprint_of_what_decides_the_features():
    assert DecodeOptions().preprocessing() == {
        "fps": 10.0, "frames_per_clip": 32, "stride": 32, "num_clips": None, "size": 224, "crop": "center",
        "tail": "pad"}
    assert DecodeOptions(num_clips=10).preprocessing()["stride"] is None
    assert DecodeOptions(threads=4, max_pixels=10).preprocessing() == DecodeOptions().preprocessing()


# ---- memory -------------------------------------------------------------------------------------


def test_memory_stays_flat_on_a_long_video(tmp_path):
    """3000 frames at 224x224 would be 450 MB if held; streaming holds about two clips."""
    path = write_video(str(tmp_path / "long.mp4"), 3000, fps=25, width=64, height=48, gop=250,
                       frame_fn=lambda i, w, h: pattern_frame(i % (LEVELS * LEVELS), w, h))
    reader = ClipReader(path, DecodeOptions(fps=None, frames_per_clip=32, size=224))
    tracemalloc.start()
    count = 0
    try:
        for clip in reader:
            count += 1
            del clip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 94 and reader.info.decoded_frames == 3000
    clip_bytes = 32 * 224 * 224 * 3
    assert peak < 4 * clip_bytes, f"peak {peak / 1e6:.0f} MB"


def test_code_levels_survive_compression():
    assert decode_index(pattern_frame(LEVELS * 3 + 5, 64, 48)) == LEVELS * 3 + 5
    assert code(0) == 16
