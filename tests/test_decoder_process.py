"""Decoding in a process of its own (decoder.process): the same clips, and a crash, a hang or a
memory blow-up costs one video.

The crashes and hangs are real: S3D_DECODER_FAULT makes the decoder process read address 0
(SIGSEGV), call abort(), exit, or block in the kernel (pause(2)), outside Python, so only the
parent's kill can end it. The memory bomb is a real 4K video under a real cap.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from decoder import ClipReader, DecodeOptions, DecoderCrashError, LimitExceededError, OpenError
from decoder.process import FAULT_ENV, DecoderProcess
from decoder.split import read_extent
from synthetic.videos import write_video

OPTIONS = DecodeOptions(fps=10, frames_per_clip=8, size=32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {
        "good": write_video(str(folder / "good.mp4"), 60, fps=10, width=64, height=48),
        "bad": write_video(str(folder / "bad.mp4"), 60, fps=10, width=64, height=48),
    }


@pytest.fixture
def decoder():
    with DecoderProcess() as process:
        yield process


def _same_clips(expected, got):
    assert len(got) == len(expected) > 0
    for a, b in zip(expected, got, strict=True):
        assert (a.clip_index, a.start_sec, a.end_sec, a.num_frames, a.padded, a.first_sample) == (
            b.clip_index, b.start_sec, b.end_sec, b.num_frames, b.padded, b.first_sample)
        assert np.array_equal(a.frames, b.frames)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive either
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("kwargs", [
    {},
    {"start_sec": 1.5, "end_sec": 4.5},
    {"part": (16, 40, 2)},
    {"decode_all": True},
], ids=["whole", "segment", "part", "decode_all"])
def test_the_process_gives_the_clips_info_and_first_target_of_the_reader(videos, decoder, kwargs):
    reference = ClipReader(videos["good"], OPTIONS, **kwargs)
    expected = list(reference)
    isolated = decoder.reader(videos["good"], OPTIONS, **kwargs)
    _same_clips(expected, list(isolated))
    assert isolated.info == reference.info and isolated.first_target == reference.first_target


def test_a_remote_object_is_read_by_the_parent_and_decoded_in_the_child(videos, decoder, tmp_path):
    opened = []

    def opener(uri):  # the parent's side of the pipe: what the job's object store client does
        opened.append(uri)
        return open(videos["good"], "rb")

    isolated = decoder.reader("gs://bucket/good.mp4", OPTIONS, opener=opener)
    _same_clips(list(ClipReader(videos["good"], OPTIONS)), list(isolated))
    assert opened == ["gs://bucket/good.mp4"] and isolated.info.decoded_frames == 60
    assert decoder.read_extent("gs://bucket/good.mp4", OPTIONS, opener) == read_extent(videos["good"])


def test_a_read_error_of_the_object_store_is_a_transient_open_error(videos, decoder):
    class Broken:  # a real file whose reads fail after the first bytes, like a reset connection
        def __init__(self):
            self._f = open(videos["good"], "rb")

        def read(self, n=-1):
            if self._f.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return self._f.read(min(n, 200))

        def __getattr__(self, name):
            return getattr(self._f, name)

    with pytest.raises(OpenError) as raised:
        list(decoder.reader("s3://bucket/good.mp4", OPTIONS, opener=lambda uri: Broken()))
    assert raised.value.transient and "connection reset" in str(raised.value)
    assert len(list(decoder.reader(videos["good"], OPTIONS))) == 8  # the same process goes on


def test_a_missing_file_is_the_readers_open_error(decoder, tmp_path):
    with pytest.raises(OpenError) as raised:
        list(decoder.reader(str(tmp_path / "missing.mp4"), OPTIONS))
    assert raised.value.stage == "open" and not raised.value.transient and "no such file" in str(raised.value)


@pytest.mark.parametrize("kind, signal_number", [
    ("segv", signal.SIGSEGV), ("abort", signal.SIGABRT), ("exit", None),
])
def test_a_crash_costs_its_video_and_the_next_video_gets_a_new_process(videos, decoder, monkeypatch, kind,
                                                                       signal_number):
    monkeypatch.setenv(FAULT_ENV, f"{kind}:bad.mp4")
    assert len(list(decoder.reader(videos["good"], OPTIONS))) == 8
    first_pid = decoder.pid
    got = []
    with pytest.raises(DecoderCrashError) as raised:
        for clip in decoder.reader(videos["bad"], OPTIONS):
            got.append(clip)
    error = raised.value
    assert len(got) == 1 and error.clips_emitted == 1 and error.stage == "decode"  # the clip before it is kept
    _same_clips(list(ClipReader(videos["bad"], OPTIONS))[:1], got)
    assert error.signal == signal_number
    if signal_number is None:
        assert "exited with status 3" in str(error)
    else:
        assert signal.Signals(signal_number).name in str(error)
    assert not _alive(first_pid)
    _same_clips(list(ClipReader(videos["good"], OPTIONS)), list(decoder.reader(videos["good"], OPTIONS)))
    assert decoder.starts == 2 and decoder.pid != first_pid


def test_a_crash_right_after_a_clip_keeps_the_clip_and_is_a_crash(videos, decoder, monkeypatch):
    """The child can die before the parent frees the slot of the clip it just sent: the parent's write
    then fails with EPIPE. That must not lose the clip or turn the crash into a BrokenPipeError (seen
    on a 2-core machine). Here the parent waits for the child's death before freeing, every time."""
    from decoder import process

    real = process._Child.frames

    def after_the_death(self, slot, shape):
        self.proc.wait()
        return real(self, slot, shape)

    monkeypatch.setenv(FAULT_ENV, "segv:bad.mp4")
    monkeypatch.setattr(process._Child, "frames", after_the_death)
    got = []
    with pytest.raises(DecoderCrashError) as raised:
        for clip in decoder.reader(videos["bad"], OPTIONS):
            got.append(clip)
    assert len(got) == 1 and raised.value.clips_emitted == 1 and raised.value.signal == signal.SIGSEGV
    _same_clips(list(ClipReader(videos["bad"], OPTIONS))[:1], got)


def test_a_crash_before_the_stream_is_probed_is_in_the_open_stage(videos, decoder, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "segv@open:bad.mp4")
    with pytest.raises(DecoderCrashError) as raised:
        list(decoder.reader(videos["bad"], OPTIONS))
    assert raised.value.stage == "open" and raised.value.clips_emitted == 0
    with pytest.raises(DecoderCrashError) as raised:
        decoder.read_extent(videos["bad"], OPTIONS)
    assert raised.value.stage == "open" and "SIGSEGV" in str(raised.value)
    assert decoder.read_extent(videos["good"], OPTIONS) == read_extent(videos["good"])


def test_a_hang_in_native_code_is_killed_at_the_budget(videos, decoder, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "hang:bad.mp4")
    options = DecodeOptions(fps=10, frames_per_clip=8, size=32, max_seconds_per_video=2)
    got = []
    started = time.monotonic()
    with pytest.raises(LimitExceededError) as raised:
        list(decoder.reader(videos["good"], options))  # starts the process: its start is not in the budget
        pid = decoder.pid
        started = time.monotonic()
        for clip in decoder.reader(videos["bad"], options):
            got.append(clip)
    elapsed = time.monotonic() - started
    error = raised.value
    assert error.limit == "max_seconds_per_video" and error.stage == "decode" and len(got) == 1
    assert "killed" in str(error) and 2.0 <= elapsed < 10.0
    assert not _alive(pid)
    assert len(list(decoder.reader(videos["good"], options))) == 8 and decoder.pid != pid


def test_a_consumer_that_stops_early_leaves_the_process_ready(videos, decoder):
    clips = iter(decoder.reader(videos["good"], OPTIONS))
    next(clips)
    pid = decoder.pid
    clips.close()  # the child is told to stop, and frees its slots
    _same_clips(list(ClipReader(videos["good"], OPTIONS)), list(decoder.reader(videos["good"], OPTIONS)))
    assert decoder.pid == pid and decoder.starts == 1


def test_a_decompression_bomb_fails_alone_under_the_memory_cap(tmp_path):
    bomb = write_video(str(tmp_path / "bomb.mp4"), 4, fps=10, width=3840, height=2160)
    small = write_video(str(tmp_path / "small.mp4"), 30, fps=10, width=64, height=48)
    # Two decoder threads, so the process's own needs do not grow with this machine's cores.
    capped = DecodeOptions(fps=10, frames_per_clip=8, size=32, threads=2, max_decoder_memory_mb=200)
    uncapped = DecodeOptions(fps=10, frames_per_clip=8, size=32, threads=2, max_decoder_memory_mb=0)
    with DecoderProcess() as decoder:
        assert len(list(decoder.reader(bomb, uncapped))) == 1  # a valid video: only the cap stops it
        assert len(list(decoder.reader(small, capped))) == 4  # the cap leaves room for ordinary videos
        with pytest.raises((LimitExceededError, DecoderCrashError)) as raised:
            list(decoder.reader(bomb, capped))
        if isinstance(raised.value, LimitExceededError):
            assert raised.value.limit == "max_decoder_memory_mb" and "max_decoder_memory_mb=200" in str(raised.value)
        starts = decoder.starts
        assert len(list(decoder.reader(small, capped))) == 4  # in a new process: the old one's heap is gone
        assert decoder.starts == starts + 1


def test_the_process_decodes_ahead_of_its_consumer_by_at_most_its_slots(videos):
    with DecoderProcess(slots=2) as decoder:
        clips = iter(decoder.reader(videos["good"], OPTIONS))
        next(clips)  # its slot is free again: the child may fill both
        time.sleep(0.5)  # time enough to decode all 8 clips, were it not held back
        ahead = decoder._child.events.qsize()
        assert ahead == 2
        assert len(list(clips)) == 7


def test_a_default_socket_timeout_does_not_reach_the_pipe(videos):
    import socket

    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)  # as object store clients do: sockets made now are non-blocking underneath
    try:
        with DecoderProcess() as decoder:
            assert len(list(decoder.reader(videos["good"], OPTIONS))) == 8
    finally:
        socket.setdefaulttimeout(before)


def test_a_decoder_process_dies_with_its_parent_even_when_it_hangs(videos, tmp_path):
    """A launcher killed with -9 leaves no decoder behind, though its child blocks in native code."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        "from decoder import DecodeOptions\n"
        "from decoder.process import DecoderProcess\n"
        "d = DecoderProcess()\n"
        "clips = iter(d.reader(sys.argv[1], DecodeOptions(fps=10, frames_per_clip=8, size=32)))\n"
        "next(clips)\n"
        "print(d.pid, flush=True)\n"
        "next(clips)\n")  # the child hangs after the first clip: this waits for an hour
    env = dict(os.environ, **{FAULT_ENV: "hang:bad.mp4"})
    parent = subprocess.Popen([sys.executable, str(script), videos["bad"]], stdout=subprocess.PIPE, env=env,
                              cwd=os.getcwd())
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
