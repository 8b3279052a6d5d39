"""A run's lease on its prefix (storage.lease) and the launch-time checks (pipeline.preflight):
never two live runs on one prefix, and nothing under it touched before the job can start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from pipeline import extract
from pipeline.preflight import PreflightError, check_model_handle, hub_cache_dir
from storage.layout import read_summary
from storage.lease import LEASE_NAME, LeaseHeldError, acquire, hand_to_job, lease_path, release
from synthetic.videos import write_video


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_local_holder_is_named_and_a_dead_one_is_taken_over(tmp_path):
    prefix = str(tmp_path / "run")
    lease = acquire(prefix)
    with pytest.raises(LeaseHeldError, match=f"in use by a live run: process {os.getpid()} on "):
        acquire(prefix)
    release(lease)
    assert not os.path.exists(lease_path(prefix))
    # A lease whose process is gone (killed with -9, say) is stale.
    stale = json.load(open(lease_path(acquire(prefix).prefix)))
    stale["pid"] = _dead_pid()
    with open(lease_path(prefix), "w") as f:
        json.dump(stale, f)
    taken = acquire(prefix)
    assert json.load(open(lease_path(prefix)))["token"] == taken.token != stale["token"]


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    prefix = str(tmp_path / "run")
    acquire(prefix)
    held = json.load(open(lease_path(prefix)))
    held["start"] = "1"  # this pid, but a process started at another time: the holder is gone
    with open(lease_path(prefix), "w") as f:
        json.dump(held, f)
    assert acquire(prefix).token != held["token"]


def test_a_holder_on_another_host_cannot_be_checked_and_is_named(tmp_path):
    prefix = str(tmp_path / "run")
    acquire(prefix)
    held = json.load(open(lease_path(prefix)))
    held["host"] = "some-other-host"
    with open(lease_path(prefix), "w") as f:
        json.dump(held, f)
    with pytest.raises(LeaseHeldError, match=f"on some-other-host.*if that run is gone, delete .*{LEASE_NAME}"):
        acquire(prefix)


@pytest.mark.parametrize("state, taken", [
    ("JOB_STATE_RUNNING", False), ("JOB_STATE_DONE", True), ("JOB_STATE_FAILED", True), (None, False),
])
def test_a_dataflow_holder_is_stale_only_in_a_terminal_state(tmp_path, state, taken):
    prefix = str(tmp_path / "run")
    hand_to_job(acquire(prefix), "proj", "us-central1", "2026-12-02_01_02_03-123")
    asked = []

    def job_state(project, region, job_id):  # Dataflow's API, faked at its boundary
        asked.append((project, region, job_id))
        return state

    if taken:
        assert acquire(prefix, job_state).holder["kind"] == "local"
    else:
        with pytest.raises(LeaseHeldError, match="Dataflow job 2026-12-02_01_02_03-123"):
            acquire(prefix, job_state)
    assert asked == [("proj", "us-central1", "2026-12-02_01_02_03-123")]


def test_on_an_object_store_of_two_launches_at_once_one_takes_the_lease(gcs_store):
    prefix = gcs_store.root("lease")
    outcomes = []

    def launch():
        try:
            outcomes.append(("took", acquire(prefix, settle_sec=1.0)))
        except LeaseHeldError as e:
            outcomes.append(("refused", e))

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(kind for kind, _ in outcomes) == ["refused", "took"]
    lease = next(value for kind, value in outcomes if kind == "took")
    with pytest.raises(LeaseHeldError):
        acquire(prefix, settle_sec=0.1)
    release(lease)
    assert acquire(prefix, settle_sec=0.1).holder["pid"] == os.getpid()


def test_a_launch_on_a_store_waits_lease_settle_sec_and_a_negative_one_is_refused(gcs_store, standin_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    """--lease_settle_sec reaches the prefix's lease (the launcher) and each chunk's (the chunked launcher)."""
    import sys
    import time

    from pipeline import embed_text
    from storage import lease as lease_module

    waits, sleep = [], time.sleep

    def recorded(seconds):
        if sys._getframe(1).f_code is lease_module.acquire.__code__:  # the lease's waits, not other sleeps
            waits.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(lease_module.time, "sleep", recorded)
    sentences = tmp_path / "s.txt"
    sentences.write_text("cut the tomato\n")
    args = ["--input", str(sentences), "--model", standin_dir]
    assert embed_text.main([*args, "--output_prefix", gcs_store.root("settle"), "--lease_settle_sec", "0.3"]) == 0
    assert waits == [0.3]
    video = write_video(str(tmp_path / "v.mp4"), 10, fps=10, width=64, height=48)
    listing = tmp_path / "two.txt"
    listing.write_text(f"{video}\n{tmp_path / 'missing.mp4'}\n")
    waits.clear()
    assert extract.main(["--input", str(listing), "--output_prefix", gcs_store.root("settle_chunks"),
                         "--model", standin_dir, "--size", "64", "--frames_per_clip", "8", "--chunk_videos", "1",
                         "--lease_settle_sec", "0.25"]) == 0
    assert waits == [0.25] * 3  # the prefix's, then each of the two chunks'
    capsys.readouterr()
    assert embed_text.main([*args, "--output_prefix", str(tmp_path / "t"), "--lease_settle_sec", "-1"]) == 2
    assert "--lease_settle_sec must be >= 0, got -1" in capsys.readouterr().err


# ---- launch-time checks -------------------------------------------------------------------------


def test_the_model_handle_is_checked_before_anything_is_touched(tmp_path, standin_dir, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert check_model_handle(standin_dir) == "a local SavedModel"
    with pytest.raises(PreflightError, match="no such directory"):
        check_model_handle(str(tmp_path / "nowhere"))
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(PreflightError, match="not a SavedModel directory"):
        check_model_handle(str(tmp_path / "not-a-model"))
    offline = "http://127.0.0.1:9/deepmind/mil-nce/s3d/1"  # nothing listens there: as offline
    with pytest.raises(PreflightError, match="cannot reach it.*TFHUB_CACHE_DIR"):
        check_model_handle(offline)
    cached = hub_cache_dir(offline)  # where tensorflow_hub would have cached it
    os.makedirs(cached)
    open(os.path.join(cached, "saved_model.pb"), "wb").close()
    assert check_model_handle(offline) == "in the TF Hub cache"


def test_a_launch_with_a_bad_model_leaves_the_earlier_run_alone(tmp_path, standin_dir, capsys, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty-cache"))
    video = write_video(str(tmp_path / "v.mp4"), 20, fps=10, width=64, height=48)
    prefix = str(tmp_path / "out")
    fast = ["--size", "32", "--frames_per_clip", "8"]
    assert extract.main(["--input", video, "--output_prefix", prefix, "--model", standin_dir, *fast]) == 0
    before = sorted(os.listdir(os.path.join(prefix, "clips")))
    for model in ("http://127.0.0.1:9/deepmind/mil-nce/s3d/1", str(tmp_path / "nowhere")):
        capsys.readouterr()
        assert extract.main(["--input", video, "--output_prefix", prefix, "--model", model, *fast]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"error: --model {model}: ")
        assert read_summary(prefix)["status"] == "complete" and sorted(os.listdir(os.path.join(prefix, "clips"))) == before
