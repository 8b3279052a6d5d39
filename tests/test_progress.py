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


def test_without_a_directory_nothing_is_written():
    ProgressLog().add("video")  # Dataflow: counters only


def test_the_line_counts_until_the_total_is_known_then_gives_an_eta():
    assert progress_line({"video": 2, "clips": 30}, None, None) == "videos 2/counting | clips 30 | failures 0 | ETA -"
    line = progress_line({"total": 10, "video": 4, "clips": 60, "failed": 1}, 2.5, 0.1)
    assert line == "videos 4/10 | clips 60 (2.50/s) | failures 1 | ETA 1m00s"
    assert progress_line({"total": 3, "video": 3}, 1.0, 1.0, final=True).endswith("| done")


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


def test_a_job_on_a_terminal_redraws_its_progress_line(standin_dir, tmp_path):
    import pty

    from synthetic.videos import write_video

    for i in range(12):
        write_video(str(tmp_path / f"v{i:02d}.mp4"), 30, fps=10, width=64, height=48)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.extract", "--input", str(tmp_path / "*.mp4"), "--output_prefix",
         str(tmp_path / "out"), "--model", standin_dir, "--size", "64", "--frames_per_clip", "8"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True)
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
    final = terminal.split("\r\x1b[K")[-1].splitlines()[0]
    import re

    # 12 videos of 3 s at 10 fps: 30 samples, 4 clips of 8 each (the last padded).
    assert re.fullmatch(r"videos 12/12 \| clips 48 \(\d+\.\d\d/s\) \| failures 0 \| done", final), final
    assert "S3D features: 12 videos ok" in stdout  # the summary comes after the progress
