"""Incremental runs and fault tolerance: skip finished videos, retry failures, transient errors, crashes."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as ds
import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.gcp.gcsfilesystem import GCSFileSystem
from floats import assert_features_close

from pipeline import extract
from storage.layout import read_summary, table_glob
from synthetic.videos import write_video

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5"]


def rows(prefix: str, table: str) -> list[dict]:
    """The rows of a table the run wrote; a table with no files fails the test (an empty table has one)."""
    files = glob.glob(table_glob(prefix, table))
    assert files, f"no {table} files under {prefix}"
    return ds.dataset(files, format="parquet").to_table().to_pylist()


def manifest(path, uris: list[str]) -> str:
    path.write_text("\n".join(uris) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("inc_videos")
    return [write_video(str(d / f"v{i}.mp4"), 20 + 5 * i, fps=10, width=64, height=48) for i in range(4)]


def test_skip_done_decodes_only_new_videos(videos, standin_dir, tmp_path, capsys):
    first, second = str(tmp_path / "day1"), str(tmp_path / "day2")
    m1 = manifest(tmp_path / "m1.txt", videos[:2])
    assert extract.main(["--input", m1, "--output_prefix", first, "--model", standin_dir, *FAST]) == 0
    m2 = manifest(tmp_path / "m2.txt", videos[:3])
    assert extract.main(["--input", m2, "--output_prefix", second, "--model", standin_dir, *FAST,
                         "--skip_done", first]) == 0
    summary = read_summary(second)
    assert summary["counters"]["videos_decoded"] == 1  # only the new one was decoded
    # The live progress counted what there was to do: one video, not three.
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("progress: videos 1/1 | ")
    assert summary["counters"]["videos_to_do"] == 1
    assert summary["counts"]["videos_skipped_done"] == 2
    union = [r["uri"] for r in rows(first, "videos") + rows(second, "videos")]
    assert sorted(union) == sorted(videos[:3])  # every video exactly once
    assert {r["uri"] for r in rows(second, "clips")} == {videos[2]}


def _file_precisions(prefix: str) -> set[tuple[str, str]]:
    """(precision, precision_requested) of every file of the run's tables."""
    import pyarrow.parquet as pq

    from storage.runs import METADATA_KEY

    found = set()
    for table in ("clips", "videos", "failures"):
        paths = glob.glob(table_glob(prefix, table))
        assert paths, f"no {table} files under {prefix}"
        for path in paths:
            meta = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
            found.add((meta["precision"], meta["precision_requested"]))
    return found


def _embeddings(prefix: str) -> dict:
    return {(r["uri"], r["clip_index"]): np.array(r["video_embedding"]) for r in rows(prefix, "clips")}


def test_bfloat16_asked_on_a_cpu_without_bfloat16_units_runs_float32(videos, standin_dir, tmp_path, monkeypatch,
                                                                     capsys):
    """On an AVX2-only CPU (here: oneDNN capped at AVX2) the run says float32 ran, and is treated as float32."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    m = manifest(tmp_path / "m.txt", videos[:2])
    f32, asked = str(tmp_path / "f32"), str(tmp_path / "asked_bf16")
    assert extract.main(["--input", m, "--output_prefix", asked, "--model", standin_dir, *FAST,
                         "--precision", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert "neither AVX512_BF16 nor AMX" in err and "float32 runs" in err
    summary = read_summary(asked)
    assert (summary["precision"], summary["precision_requested"]) == ("float32", "bfloat16")
    assert summary["onednn"] is True  # the package turns oneDNN on, also where TensorFlow would not
    assert _file_precisions(asked) == {("float32", "bfloat16")}
    # Its features are float32's, so a float32 run counts its videos as done.
    assert extract.main(["--input", m, "--output_prefix", f32, "--model", standin_dir, *FAST,
                         "--skip_done", asked]) == 0
    assert read_summary(f32)["counts"]["videos_skipped_done"] == 2


def test_skip_done_uses_only_runs_with_this_model_preprocessing_and_precision(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from decoder import DecodeOptions
    from storage.layout import table_prefix
    from transforms.incremental import matching_table_files
    from transforms.tables import VIDEOS_SCHEMA, with_run_metadata

    this = DecodeOptions(size=64, frames_per_clip=8, fps=5).preprocessing()
    other_size = DecodeOptions(size=32, frames_per_clip=8, fps=5).preprocessing()
    runs = {
        "same": {"model": "m", "preprocessing": this, "precision": "float32"},
        "before_precision_was_recorded": {"model": "m", "preprocessing": this},  # float32 then
        "other_size": {"model": "m", "preprocessing": other_size, "precision": "float32"},
        "other_model": {"model": "n", "preprocessing": this, "precision": "float32"},
        "bfloat16": {"model": "m", "preprocessing": this, "precision": "bfloat16"},
    }
    for name, metadata in runs.items():
        path = f"{table_prefix(str(tmp_path / name), 'videos')}-00000-of-00001.parquet"
        os.makedirs(os.path.dirname(path))
        pq.write_table(pa.Table.from_pylist([], schema=with_run_metadata(VIDEOS_SCHEMA, metadata)), path)
    prefixes = [str(tmp_path / name) for name in runs]
    this_run = {"job": "extract", "model": "m", "preprocessing": this, "precision": "float32", "package_version": "x"}
    files = matching_table_files(prefixes, "videos", this_run)
    assert files == [f"{table_prefix(p, 'videos')}-00000-of-00001.parquet" for p in prefixes[:2]]
    warnings = [r.getMessage() for r in caplog.records if "its videos are not skipped" in r.getMessage()]
    assert len(warnings) == 3
    assert "precision 'bfloat16', this run's 'float32'" in warnings[-1]
    bf16_files = matching_table_files(prefixes, "videos", {**this_run, "precision": "bfloat16"})
    assert bf16_files == [f"{table_prefix(prefixes[-1], 'videos')}-00000-of-00001.parquet"]


def test_a_failure_retried_after_the_file_is_fixed_ends_up_in_videos(videos, standin_dir, tmp_path):
    broken = tmp_path / "late_upload.mp4"
    broken.write_bytes(b"\x00" * 100)
    first, retry = str(tmp_path / "run"), str(tmp_path / "retry")
    m = manifest(tmp_path / "m.txt", [videos[0], str(broken)])
    assert extract.main(["--input", m, "--output_prefix", first, "--model", standin_dir, *FAST]) == 0
    failed = rows(first, "failures")
    assert [f["uri"] for f in failed] == [str(broken)]
    write_video(str(broken), 20, fps=10)  # the upload completes
    assert extract.main(["--retry_failures", first, "--output_prefix", retry, "--model", standin_dir, *FAST,
                         "--retry_stages", "open"]) == 0
    assert [r["uri"] for r in rows(retry, "videos")] == [str(broken)]
    assert [r["video_id"] for r in rows(retry, "videos")] == [failed[0]["video_id"]]  # the same id as before
    assert rows(retry, "failures") == []
    assert read_summary(retry)["counts"]["failures_retried"] == 1


class FlakyGcs(GCSFileSystem):
    """flakygs://bucket/object is gs://bucket/object on the GCS emulator, but opening it times out the first
    `failures_left[gs uri]` times: a fault injected on top of the real store, below the job's retries."""

    failures_left: dict[str, int] = {}
    opens: dict[str, int] = {}

    @classmethod
    def scheme(cls):
        return "flakygs"

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        real = "gs://" + path[len("flakygs://"):]
        FlakyGcs.opens[real] = FlakyGcs.opens.get(real, 0) + 1
        if FlakyGcs.failures_left.get(real, 0) > 0:
            FlakyGcs.failures_left[real] -= 1
            raise TimeoutError(f"simulated timeout reading {path}")
        return super().open(real, mime_type, compression_type)


def _flaky(uri: str) -> str:
    return "flakygs://" + uri[len("gs://"):]


def test_transient_errors_are_retried_and_permanent_ones_are_not(videos, standin_dir, gcs_store, tmp_path):
    root = gcs_store.root("flaky")
    video, missing = gcs_store.upload(videos[1], f"{root}/v1.mp4"), f"{root}/gone.mp4"
    FlakyGcs.failures_left = {video: 2}
    FlakyGcs.opens = {}
    prefix = str(tmp_path / "out")
    m = manifest(tmp_path / "m.txt", [_flaky(video), _flaky(missing)])
    assert extract.main(["--input", m, "--output_prefix", prefix, "--model", standin_dir, *FAST,
                         "--io_retry_backoff_sec", "0.01"]) == 0
    assert [r["uri"] for r in rows(prefix, "videos")] == [_flaky(video)]
    # SplitLongVideos reads each header first (a timeout there: the video goes on whole), then the decoder
    # opens it: a timeout, then success
    assert FlakyGcs.opens[video] == 3
    failures = rows(prefix, "failures")
    assert [(f["uri"], f["error_type"], f["transient"]) for f in failures] == [(_flaky(missing), "OpenError", False)]
    assert FlakyGcs.opens[missing] == 2  # the header read, then the decoder's one open: the store's 404, not retried
    assert read_summary(prefix)["counts"]["io_retries"] == 1


@pytest.mark.parametrize("kind", ["503", "reset"])
def test_the_stores_own_503s_and_reset_connections_are_retried(videos, standin_dir, gcs_store, tmp_path, kind):
    """Faults on the wire, from the server's front door (tests/object_stores.py): two 503 answers, or two
    connections reset half way through the body, on the video's reads; the video still decodes."""
    root = gcs_store.root("wire")
    video = gcs_store.upload(videos[0], f"{root}/w.mp4")
    gcs_store.faults.clear()
    gcs_store.faults.add(video.split("/", 3)[3], kind, 2)
    prefix = str(tmp_path / "out")
    try:
        assert extract.main(["--input", manifest(tmp_path / "m.txt", [video]), "--output_prefix", prefix,
                             "--model", standin_dir, *FAST]) == 0
        assert gcs_store.faults.served == {kind: 2}  # the faults really reached the client
    finally:
        gcs_store.faults.clear()
    assert [r["uri"] for r in rows(prefix, "videos")] == [video] and rows(prefix, "failures") == []


def test_a_transient_error_that_persists_becomes_a_transient_failure(videos, standin_dir, gcs_store, tmp_path):
    video = gcs_store.upload(videos[2], f"{gcs_store.root('flaky')}/v2.mp4")
    FlakyGcs.failures_left = {video: 100}
    FlakyGcs.opens = {}
    prefix = str(tmp_path / "out")
    m = manifest(tmp_path / "m.txt", [_flaky(video)])
    assert extract.main(["--input", m, "--output_prefix", prefix, "--model", standin_dir, *FAST,
                         "--io_retries", "2", "--io_retry_backoff_sec", "0.01"]) == 0
    failures = rows(prefix, "failures")
    assert [(f["error_type"], f["transient"]) for f in failures] == [("OpenError", True)]
    assert FlakyGcs.opens[video] == 1 + 3  # the header read, then the decoder's 1 + 2 retries


def test_same_input_gives_the_same_rows(videos, standin_dir, tmp_path):
    m = manifest(tmp_path / "m.txt", videos[:2])
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for prefix in (a, b):
        assert extract.main(["--input", m, "--output_prefix", prefix, "--model", standin_dir, *FAST]) == 0
    for table in ("clips", "videos"):
        ra = sorted(rows(a, table), key=lambda r: (r["video_id"], r.get("clip_index", 0)))
        rb = sorted(rows(b, table), key=lambda r: (r["video_id"], r.get("clip_index", 0)))
        assert len(ra) == len(rb) > 0
        for x, y in zip(ra, rb, strict=True):
            assert {k: v for k, v in x.items() if k not in ("mixed_5c", "video_embedding")} == \
                {k: v for k, v in y.items() if k not in ("mixed_5c", "video_embedding")}
            for f in ("mixed_5c", "video_embedding"):  # docs/runs.md's promise: within float32 rounding
                assert_features_close(x[f], y[f], f"{x['video_id']} {f}")


def _final_files(prefix: str) -> list[str]:
    found = []
    for table in ("clips", "videos", "failures"):
        d = os.path.join(prefix, table)
        if os.path.isdir(d):
            found += [f for f in os.listdir(d) if f.endswith(".parquet")]
    return found


def test_a_killed_run_leaves_nothing_final_and_the_next_run_completes(tmp_path, standin_dir, capsys):
    many = [write_video(str(tmp_path / f"k{i}.mp4"), 60, fps=10, width=64, height=48) for i in range(8)]
    m = manifest(tmp_path / "m.txt", many)
    prefix = str(tmp_path / "out")
    args = ["--input", m, "--output_prefix", prefix, "--model", standin_dir, "--size", "96", "--frames_per_clip", "16"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.extract", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temp_seen = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        clips_dir = os.path.join(prefix, "clips")
        if os.path.isdir(clips_dir) and any(n.startswith("beam-temp") for n in os.listdir(clips_dir)):
            temp_seen = True  # the first clips are being written
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed; give it more work"
    assert temp_seen
    # A second launch on the prefix while the first runs: refused, naming the holder, and nothing touched.
    temp_before = sorted(os.listdir(os.path.join(prefix, "clips")))
    capsys.readouterr()
    assert extract.main(args) == 2
    err = capsys.readouterr().err
    assert f"in use by a live run: process {proc.pid} on " in err and len(err.strip().splitlines()) == 1
    assert set(temp_before) <= set(os.listdir(os.path.join(prefix, "clips")))  # the first run's files are there
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _final_files(prefix) == []
    assert read_summary(prefix) is None
    lease = json.load(open(os.path.join(prefix, "_lease.json")))
    assert lease["pid"] == proc.pid  # the dead run's lease is left behind, stale
    assert extract.main(args) == 0  # and taken over
    assert len(rows(prefix, "videos")) == 8 and read_summary(prefix)["status"] == "complete"
    leftovers = [n for t in ("clips", "videos", "failures") for n in os.listdir(os.path.join(prefix, t))
                 if n.startswith("beam-temp")]
    assert leftovers == []
    assert not os.path.exists(os.path.join(prefix, "_lease.json"))  # given back at the end


def test_retry_options_are_checked(tmp_path, capsys):
    assert extract.main(["--retry_failures", str(tmp_path / "nothing"), "--output_prefix", str(tmp_path / "o")]) == 2
    assert "no failures table there" in capsys.readouterr().err
    m = manifest(tmp_path / "m.txt", ["/x.mp4"])
    assert extract.main(["--input", m, "--retry_stages", "open", "--output_prefix", str(tmp_path / "o")]) == 2
    assert "go with --retry_failures" in capsys.readouterr().err
