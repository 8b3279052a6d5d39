"""The live progress of local runs: events from steps in any process, summed and shown."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap

from pipeline.progress import ProgressDisplay, progress_line
from transforms.progress import ProgressLog, ProgressReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_events_from_several_processes_add_up(tmp_path):
    log = ProgressLog(str(tmp_path))
    log.total(5)
    log.add("video")
    shipped = pickle.loads(pickle.dumps(log))  # as Beam ships it to a worker
    code = textwrap.dedent(f"""
        import pickle, sys
        log = pickle.loads({pickle.dumps(shipped)!r})
        for _ in range(3):
            log.add("clips", 4)
        log.add("video", 2)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    reader = ProgressReader(str(tmp_path))
    assert reader.poll() == {"total": 5, "video": 3, "clips": 12}
    log.add("failed")
    assert reader.poll() == {"total": 5, "video": 3, "clips": 12, "failed": 1}  # read on from where it left off
    assert len(os.listdir(tmp_path)) == 2  # a file per process (and thread)


def test_a_half_written_line_waits_for_its_end(tmp_path):
    (tmp_path / "w.log").write_text("video 1\nclips 1")
    reader = ProgressReader(str(tmp_path))
    assert reader.poll() == {"video": 1}
    with open(tmp_path / "w.log", "a") as f:
        f.write("6\n")
    assert reader.poll() == {"video": 1, "clips": 16}


def test_without_a_directory_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative file would land here
    log = ProgressLog()  # Dataflow: counters only
    log.add("video")
    log.total(3)
    assert log._files == {} and os.listdir(tmp_path) == []
    with_dir = ProgressLog(str(tmp_path))  # the same calls with a directory do write: the check can fail
    with_dir.add("video")
    assert len(os.listdir(tmp_path)) == 1


def test_the_line_counts_until_the_total_is_known_then_gives_an_eta():
    assert progress_line({"video": 2, "clips": 30}, None, None) == "videos 2/counting | clips 30 | failures 0 | ETA -"
    line = progress_line({"total": 10, "video": 4, "clips": 60, "failed": 1}, 2.5, 0.1)
    assert line == "videos 4/10 | clips 60 (2.50/s) | failures 1 | ETA 1m00s"
    assert progress_line({"total": 3, "video": 3}, 1.0, 1.0, final=True).endswith("| done")


def test_the_inputs_counted_at_launch_give_a_total_and_an_eta_before_the_graph_counts():
    # 200 one-clip videos, 10 done at 0.5 videos/s: ETA of the 190 left, from the launcher's count.
    line = progress_line({"expected": 200, "video": 10, "clips": 10}, 0.5, 0.5)
    assert line == "videos 10/~200 | clips 10 (0.50/s) | failures 0 | ETA 6m20s"
    # The graph's count (after duplicates and --skip_done) replaces it when it comes.
    assert progress_line({"expected": 200, "total": 150, "video": 10}, 0.5, 0.5).startswith("videos 10/150 |")


def test_the_launcher_counts_every_kind_of_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.inputs import count_inputs

    for i in range(3):
        (tmp_path / f"v{i}.mp4").write_bytes(b"x")
    assert count_inputs(str(tmp_path / "*.mp4")) == 3
    (tmp_path / "m.txt").write_text("a.mp4\n\n# a comment\nb.mp4\n")
    assert count_inputs(str(tmp_path / "m.txt")) == 2
    (tmp_path / "m.csv").write_text("video_id,uri\nx,a.mp4\ny,b.mp4\nz,c.mp4\n")
    assert count_inputs(str(tmp_path / "m.csv")) == 3
    (tmp_path / "m.jsonl").write_text('{"uri": "a.mp4"}\n{"uri": "b.mp4"}\n')
    assert count_inputs(str(tmp_path / "m.jsonl")) == 2
    pq.write_table(pa.table({"uri": ["a", "b", "c", "d"]}), tmp_path / "m.parquet")
    assert count_inputs(str(tmp_path / "m.parquet")) == 4


def test_without_a_terminal_plain_lines_come_at_a_bounded_rate(tmp_path):
    out = io.StringIO()
    display = ProgressDisplay(str(tmp_path), out=out, interval_sec=0.05, plain_every_sec=3600)
    log = ProgressLog(str(tmp_path))
    with display:
        log.total(2)
        log.add("video", 2)
        import time

        time.sleep(0.3)  # several polls, but only the first plain line within the hour
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1] == "progress: videos 2/2 | clips 0 | failures 0 | done"
    assert "\r" not in out.getvalue()


class _Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_on_a_fake_clock_plain_lines_come_every_period_with_rates_and_an_eta(tmp_path):
    clock, out, log = _Clock(), io.StringIO(), ProgressLog(str(tmp_path))
    display = ProgressDisplay(str(tmp_path), out=out, plain_every_sec=30, clock=clock)
    display.refresh()  # the input is not read yet
    assert out.getvalue() == "progress: videos 0/counting | clips 0 | failures 0 | ETA -\n"
    clock.now = 10
    log.add("clips", 20)
    display.refresh()  # 10 s after the last plain line: nothing printed, the line is up to date
    assert display.last_line == "videos 0/counting | clips 20 (2.00/s) | failures 0 | ETA -"
    assert out.getvalue().count("\n") == 1
    clock.now = 30
    log.total(10)
    log.add("video", 2)
    log.add("clips", 40)
    log.add("failed")
    display.refresh()  # 30 s: due; 2 videos in 30 s leave 8 for 120 s
    assert out.getvalue().splitlines()[-1] == "progress: videos 2/10 | clips 60 (2.00/s) | failures 1 | ETA 2m00s"
    for now in range(31, 60):  # polls every second: no plain line before the next period
        clock.now = now
        display.refresh()
    assert out.getvalue().count("\n") == 2
    clock.now = 100  # rates are over the last minute (since the poll at 40 s), not since the start
    log.add("clips", 120)
    log.add("video", 4)
    display.refresh()  # 4 videos in 60 s leave 4 for 60 s
    assert out.getvalue().splitlines()[-1] == "progress: videos 6/10 | clips 180 (2.00/s) | failures 1 | ETA 1m00s"
    clock.now = 120
    log.add("video", 4)
    display.refresh(final=True)  # the end is always shown; 120 clips since the poll at 59 s
    assert out.getvalue().splitlines()[-1] == "progress: videos 10/10 | clips 180 (1.97/s) | failures 1 | done"


def test_with_nothing_to_do_the_line_says_so_without_dividing_by_zero(tmp_path):
    clock, out, log = _Clock(), io.StringIO(), ProgressLog(str(tmp_path))
    display = ProgressDisplay(str(tmp_path), out=out, plain_every_sec=30, clock=clock)
    log.total(0)  # --skip_done found every video done
    display.refresh()
    clock.now = 0.5
    display.refresh(final=True)
    assert out.getvalue().splitlines() == ["progress: videos 0/0 | clips 0 | failures 0 | finishing",
                                           "progress: videos 0/0 | clips 0 | failures 0 | done"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_one_line_is_redrawn(tmp_path):
    out = _Terminal()
    with ProgressDisplay(str(tmp_path), out=out, interval_sec=0.05):
        import time

        time.sleep(0.3)
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3 and text.count("\n") == 1 and text.endswith("| done\n")


def test_on_a_terminal_log_lines_print_above_the_progress_line(tmp_path):
    import logging

    out, clock = _Terminal(), _Clock()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with ProgressDisplay(str(tmp_path), out=out, interval_sec=3600, clock=clock) as display:
            display.refresh()
            logging.getLogger("s3d.loader").warning("a warning")
            assert handler.stream is not out  # the display's while it runs
    finally:
        root.removeHandler(handler)
    assert handler.stream is out  # given back
    line = "videos 0/counting | clips 0 | failures 0 | ETA -"
    # The line is cleared, the record printed on a line of its own, the line drawn again below it.
    assert out.getvalue().startswith(f"\r\x1b[K{line}\r\x1b[Ka warning\n{line}\r\x1b[K")
    assert out.getvalue().endswith("| done\n")


def test_a_job_on_a_terminal_redraws_its_progress_line(standin_dir, tmp_path, newcomer_env):
    import pty

    from synthetic.videos import write_video

    for i in range(4):
        write_video(str(tmp_path / f"v{i:02d}.mp4"), 30, fps=10, width=64, height=48)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.extract", "--input", str(tmp_path / "*.mp4"), "--output_prefix",
         str(tmp_path / "out"), "--model", standin_dir, "--size", "64", "--frames_per_clip", "8"],
        cwd=ROOT, env=newcomer_env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the job closed its end
            break
        if not data:
            break
        chunks.append(data.decode("utf-8", "replace"))
    stdout = proc.communicate(timeout=600)[0]
    os.close(master)
    terminal = "".join(chunks)
    assert proc.returncode == 0, terminal[-2000:]
    redraws = terminal.count("\r\x1b[K")
    assert redraws >= 3, terminal[-2000:]
    assert "progress:" not in terminal  # the plain form is for logs
    import re

    final = terminal.split("\r\x1b[K")[-1].splitlines()[0]
    drawn = [part.splitlines()[0] for part in terminal.split("\r\x1b[K")[1:] if part.startswith("videos ")]
    assert drawn and not [line for line in drawn if "counting" in line]  # a total from the first draw on
    assert re.match(r"videos \d/~?4 ", drawn[0]), drawn[0]
    import re

    # 4 videos of 3 s at 10 fps: 30 samples, 4 clips of 8 each (the last padded).
    assert re.fullmatch(r"videos 4/4 \| clips 16 \(\d+\.\d\d/s\) \| failures 0 \| done", final), final
    assert "S3D features: 4 videos ok" in stdout  # the summary comes after the progress
    # Quiet: none of TensorFlow's start-up lines, nothing but the stand-in warning besides the progress.
    from s3d.quiet import is_startup_noise

    assert not [line for line in (terminal + stdout).splitlines() if is_startup_noise(line, driver_present=False)]
    logged = [line.split(" ", 2)[2] for line in terminal.replace("\r\x1b[K", "\n").splitlines()
              if line.startswith("20")]
    assert logged == [f"WARNING s3d.loader: model {standin_dir} is an untrained stand-in: its embeddings carry "
                      "no meaning"], terminal
