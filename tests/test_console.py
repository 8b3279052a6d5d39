"""What the command lines print besides their results: quiet by default, everything with --log_level."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from s3d.quiet import is_startup_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return finish(start(env, *args))


def startup_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if is_startup_noise(line, driver_present=False)]


@pytest.fixture(scope="module")
def verbose_job(standin_dir, tmp_path_factory, newcomer_env):
    """pipeline.extract with --log_level info and no terminal, on one video of 2 s (3 clips of 8 frames at 10 fps)."""
    from synthetic.videos import write_video

    d = tmp_path_factory.mktemp("console")
    write_video(str(d / "v.mp4"), 20, fps=10, width=64, height=48)
    prefix = str(d / "out")
    proc = run(newcomer_env, "pipeline.extract", "--input", str(d / "v.mp4"), "--output_prefix", prefix, "--model", standin_dir,
               "--size", "64", "--frames_per_clip", "8", "--log_level", "info")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return prefix, proc


def test_log_level_info_brings_back_tensorflow_and_beam_lines(verbose_job):
    _, proc = verbose_job
    assert startup_lines(proc.stderr), proc.stderr[-3000:]  # TensorFlow's start-up lines
    assert " INFO apache_beam." in proc.stderr  # Beam's INFO chatter
    assert "pkg_resources is deprecated" in proc.stderr


def test_a_job_without_a_terminal_prints_plain_progress_lines(verbose_job):
    _, proc = verbose_job
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress: ")]
    assert lines[0] == "progress: videos 0/~1 | clips 0 | failures 0 | ETA -"  # the inputs counted at launch
    assert lines[-1].startswith("progress: videos 1/1 | clips 3 (") and lines[-1].endswith("| done")
    assert "\r" not in proc.stderr
    assert "S3D features: 1 videos ok" in proc.stdout


def test_search_is_quiet_by_default_and_log_level_brings_the_rest_back(verbose_job, standin_dir, newcomer_env):
    prefix, _ = verbose_job
    both = [start(newcomer_env, "pipeline.search", "--features", prefix, "--query", "a dog", *flag)
            for flag in ([], ["-v"])]  # side by side: each is mostly its imports and the model's load
    quiet, loud = map(finish, both)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert startup_lines(quiet.stdout + quiet.stderr) == []
    assert "pkg_resources" not in quiet.stderr and "cuInit" not in quiet.stderr
    # What matters still shows: the results, and the warning that the model is a stand-in.
    assert "'a dog'" in quiet.stdout
    assert [line.split(" WARNING ", 1)[1] for line in quiet.stderr.splitlines()] == [
        f"s3d.loader: model {standin_dir} is an untrained stand-in: its embeddings carry no meaning"]
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert startup_lines(loud.stderr)
    assert loud.stdout == quiet.stdout  # the same results


def test_worker_processes_lines_are_unwrapped_and_their_noise_dropped():
    from apache_beam.portability.api import beam_fn_api_pb2

    from pipeline.console import WORKER_LOGGER, WorkerLines

    def forwarded(message: str, location: str) -> logging.LogRecord:
        entry = beam_fn_api_pb2.LogEntry(severity=beam_fn_api_pb2.LogEntry.Severity.WARN, message=message,
                                         log_location=location, thread="MainThread")
        # What Beam's local job service logs for each line of a worker process.
        return logging.LogRecord(WORKER_LOGGER, logging.WARNING, __file__, 1, "Worker: %s",
                                 (str(entry).replace("\n", " "),), None)

    quiet, loud = WorkerLines(), WorkerLines(keep_noise=True)
    record = forwarded("model 'x' is an \"untrained\" stand-in", "/work/main/s3d/loader.py:228")
    assert quiet.filter(record)
    assert (record.name, record.getMessage()) == ("worker s3d/loader.py:228", "model 'x' is an \"untrained\" stand-in")
    noise = forwarded("Discarding unparseable args: ['--size=64']", "/x/apache_beam/options/pipeline_options.py:570")
    assert not quiet.filter(noise)
    assert loud.filter(forwarded("Discarding unparseable args: ['--size=64']", "/x/pipeline_options.py:570"))
    other = logging.LogRecord("apache_beam.io", logging.WARNING, __file__, 1, "Resource module is not available", (),
                              None)
    assert not quiet.filter(other)  # Beam's known noise from any logger


def test_a_gpu_asked_for_and_not_found_is_a_warning(standin_dir, tmp_path, caplog):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import ModelOptions

    handle = str(tmp_path / "model")
    os.symlink(standin_dir, handle)  # a handle of its own: the session's shared copy is not used
    asked = PipelineOptions(["--model", handle, "--inference_accelerator",
                             "type:nvidia-tesla-t4;count:1;install-nvidia-driver"]).view_as(ModelOptions)
    with caplog.at_level(logging.WARNING, logger="transforms.inference"):
        model = asked.handler("video").load_model()
    assert model.device is None  # no GPU on this machine
    warnings = [r.getMessage() for r in caplog.records if r.name == "transforms.inference"]
    assert len(warnings) == 1 and warnings[0].startswith("1 GPU(s) per worker were asked for")
    caplog.clear()
    other = str(tmp_path / "model2")
    os.symlink(standin_dir, other)
    with caplog.at_level(logging.WARNING, logger="transforms.inference"):
        PipelineOptions(["--model", other]).view_as(ModelOptions).handler("video").load_model()
    assert not [r for r in caplog.records if r.name == "transforms.inference"]  # none asked, none missed
