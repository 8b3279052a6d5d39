"""The production path on real object stores: every flow of the project, run by test_gcs_flows.py on a GCS
emulator and by test_s3_flows.py on an S3 server (two files, so pytest-xdist runs them side by side).

The stores run on 127.0.0.1 (tests/object_stores.py) and are reached through Beam's own GCS and
S3 filesystems, as a Dataflow job reaches gs://. Each flow's rows are compared with the same
flow on local files: the same ids, clips and metadata, features equal within float32 rounding.
A test file imports these tests and defines the module's `store` fixture.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from floats import assert_features_close

from pipeline import check_run, embed_text, extract, frames, search
from pipeline import index as index_job
from storage.layout import chunk_prefix, committed_attempt, read_summary, table_files, table_glob
from storage.objects import open_object
from synthetic.videos import write_video
from vector_index.manifest import read_manifest

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5", "--stride", "8"]
SPLIT = ["--split_sec", "6"]  # the 16 s video is cut into parts that decode side by side
FEATURES = ("mixed_5c", "video_embedding")


@pytest.fixture(scope="module")
def local_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("store_videos")
    return {
        "short": write_video(str(d / "short.mp4"), 30, fps=10, width=64, height=48),
        "long": write_video(str(d / "long.mp4"), 160, fps=10, width=64, height=48, gop=10),
    }


def _manifest(path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w") as f:
        f.write("video_id,uri\n" + "".join(f"{vid},{uri}\n" for vid, uri in rows))


@pytest.fixture(scope="module")
def local_run(local_videos, standin_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("store_local_run")
    _manifest(d / "m.csv", list(local_videos.items()))
    prefix = str(d / "out")
    assert extract.main(["--input", str(d / "m.csv"), "--output_prefix", prefix, "--model", standin_dir,
                         *FAST, *SPLIT]) == 0
    return prefix


@pytest.fixture(scope="module")
def remote(store, local_videos, standin_dir, tmp_path_factory):
    """Videos uploaded to the store, a CSV manifest on the store (with an object that does not exist), and
    a run of it written to the store."""
    root = store.root("flows")
    uris = {vid: store.upload(path, f"{root}/videos/{vid}.mp4") for vid, path in local_videos.items()}
    missing = f"{root}/videos/not_uploaded_yet.mp4"
    local = tmp_path_factory.mktemp("store_manifest") / "m.csv"
    _manifest(local, [*uris.items(), ("late", missing)])
    manifest = store.upload(str(local), f"{root}/manifest.csv")
    prefix = f"{root}/run"
    assert extract.main(["--input", manifest, "--output_prefix", prefix, "--model", standin_dir, *FAST, *SPLIT,
                         "--io_retry_backoff_sec", "0.01", *store.beam_args]) == 0
    return {"root": root, "uris": uris, "missing": missing, "manifest": manifest, "prefix": prefix}


def rows(prefix: str, table: str) -> list[dict]:
    """A table's rows read from any filesystem; a table with no files fails the test."""
    paths = sorted(m.path for m in FileSystems.match([table_glob(prefix, table)])[0].metadata_list)
    assert paths, f"no {table} files under {prefix}"
    return _read(paths)


def _same_rows(remote_rows: list[dict], local_rows: list[dict], key) -> None:
    remote_rows, local_rows = sorted(remote_rows, key=key), sorted(local_rows, key=key)
    assert len(remote_rows) == len(local_rows) > 0
    for x, y in zip(remote_rows, local_rows, strict=True):
        plain = set(x) - set(FEATURES) - {"uri"}
        assert {k: x[k] for k in plain} == {k: y[k] for k in plain}
        for f in FEATURES:  # another run batches differently: float32 rounding (tests/floats.py)
            assert_features_close(x[f], y[f], f"{key(x)} {f}")


def test_a_run_on_the_store_gives_the_local_runs_rows_and_a_missing_object_fails_for_good(remote, local_run):
    clip_key = lambda r: (r["video_id"], r["clip_index"])  # noqa: E731
    _same_rows(rows(remote["prefix"], "clips"), rows(local_run, "clips"), clip_key)
    _same_rows(rows(remote["prefix"], "videos"), rows(local_run, "videos"), lambda r: r["video_id"])
    assert {r["uri"] for r in rows(remote["prefix"], "videos")} == set(remote["uris"].values())
    failures = rows(remote["prefix"], "failures")
    assert [(f["video_id"], f["stage"], f["error_type"], f["transient"]) for f in failures] == [
        ("late", "open", "OpenError", False)]  # permanent: not retried, not counted as a store hiccup
    assert "no such object" in failures[0]["message"] and remote["missing"] in failures[0]["message"]
    summary = read_summary(remote["prefix"])
    assert summary["counts"]["videos_split"] == 1 and summary["counts"]["video_parts"] >= 3  # split remotely
    assert summary["rows"] == {"clips": len(rows(local_run, "clips")), "videos": 2, "failures": 1}
    assert summary["counters"].get("io_retries", 0) == 0


def test_a_glob_on_the_store_is_an_input(remote, store, standin_dir):
    prefix = f"{remote['root']}/glob_run"
    assert extract.main(["--input", f"{remote['root']}/videos/*.mp4", "--output_prefix", prefix,
                         "--model", standin_dir, *FAST, *store.beam_args]) == 0
    assert sorted(r["uri"] for r in rows(prefix, "videos")) == sorted(remote["uris"].values())
    assert rows(prefix, "failures") == []


def test_skip_done_and_retry_failures_on_the_store(remote, store, standin_dir, local_videos):
    again = f"{remote['root']}/again"
    assert extract.main(["--input", remote["manifest"], "--output_prefix", again, "--model", standin_dir, *FAST,
                         *SPLIT, "--skip_done", remote["prefix"], *store.beam_args]) == 0
    summary = read_summary(again)
    assert summary["counts"]["videos_skipped_done"] == 2 and summary["counters"]["videos_to_do"] == 1
    store.upload(local_videos["short"], remote["missing"])  # the late upload arrives
    retry = f"{remote['root']}/retry"
    assert extract.main(["--retry_failures", remote["prefix"], "--output_prefix", retry, "--model", standin_dir,
                         *FAST, "--retry_stages", "open", *store.beam_args]) == 0
    assert [(r["video_id"], r["uri"]) for r in rows(retry, "videos")] == [("late", remote["missing"])]
    assert rows(retry, "failures") == []


def test_check_run_and_the_summary_on_the_store(remote, capsys):
    assert check_run.main(["--output_prefix", remote["prefix"], "--max_failure_rate", "0.5"]) == 0
    never = f"{remote['root']}/never_ran"
    assert read_summary(never) is None
    assert check_run.main(["--output_prefix", never]) == 2  # "no complete run", not a traceback
    err = capsys.readouterr().err
    assert "Traceback" not in err and never in err


def test_the_frame_tool_reads_the_store(remote, local_videos, tmp_path):
    got, want = str(tmp_path / "remote.npy"), str(tmp_path / "local.npy")
    for video, out in ((remote["uris"]["short"], got), (local_videos["short"], want)):
        assert frames.main([video, "--output", out, "--fps", "5", "--size", "64", "--frames_per_clip", "8"]) == 0
    remote_frames, local_frames = np.load(got), np.load(want)
    assert remote_frames.shape[0] > 0 and np.array_equal(remote_frames, local_frames)  # decoding is exact


def test_text_search_and_the_index_on_the_store(remote, store, standin_dir, tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("a moving pattern\ncut the tomato\n")
    texts = f"{remote['root']}/texts"
    assert embed_text.main(["--input", store.upload(str(sentences), f"{remote['root']}/s.txt"),
                            "--output_prefix", texts, "--model", standin_dir, *store.beam_args]) == 0
    assert sorted(r["text"] for r in rows(texts, "texts")) == ["a moving pattern", "cut the tomato"]
    exact, page = str(tmp_path / "exact.parquet"), str(tmp_path / "page.html")
    assert search.main(["--features", remote["prefix"], "--texts", texts, "--top_k", "3", "--output", exact,
                        "--html", page]) == 0
    ranking = pq.read_table(exact).to_pylist()
    assert len(ranking) == 2 * 3 and {r["uri"] for r in ranking} <= set(remote["uris"].values())
    html = open(page, encoding="utf-8").read()
    assert html.count("data:image/jpeg;base64,") >= 2 * 3  # thumbnails decoded from the store's videos
    index_dir = f"{remote['root']}/index"
    assert index_job.main(["--features", remote["prefix"], "--output", index_dir, *store.beam_args]) == 0
    assert read_manifest(index_dir).rows == len(rows(remote["prefix"], "clips"))
    approx = str(tmp_path / "approx.parquet")
    assert search.main(["--index", index_dir, "--texts", texts, "--top_k", "3", "--output", approx]) == 0
    key = lambda r: (r["query_id"], r["rank"])  # noqa: E731
    assert [(r["video_id"], r["clip_index"]) for r in sorted(pq.read_table(approx).to_pylist(), key=key)] == \
        [(r["video_id"], r["clip_index"]) for r in sorted(ranking, key=key)]  # a small index is exact


def test_a_run_in_chunks_on_the_store_resumes_and_reads_back(remote, store, standin_dir, local_run):
    """The chunk plan, every attempt and the summaries on the store; a chunk whose attempt died is run
    again, and the readers see the same rows as a run without chunks."""
    prefix = f"{remote['root']}/chunked"
    args = ["--input", remote["manifest"], "--output_prefix", prefix, "--model", standin_dir, *FAST, *SPLIT,
            "--io_retry_backoff_sec", "0.01", "--chunk_videos", "2", *store.beam_args]
    assert extract.main(args) == 0
    summary = read_summary(prefix)
    # Three inputs (the late upload may have arrived: another test uploads it), each in one table once.
    assert summary["counts"]["chunks_total"] == 2 and summary["rows"]["videos"] + summary["rows"]["failures"] == 3
    files = {t: table_files(prefix, t) for t in ("clips", "videos", "failures")}
    assert files == summary["files"] and all("/attempts/" in f for fs in files.values() for f in fs)
    uploaded = [r for r in _read(files["videos"]) if r["video_id"] in remote["uris"]]
    _same_rows(uploaded, rows(local_run, "videos"), lambda r: r["video_id"])
    # Chunk 00001's committed attempt loses its summary, as if it died before writing it: run again alone.
    name = "00001"
    dead = f"{chunk_prefix(prefix, name)}/attempts/{committed_attempt(prefix, name)}"
    FileSystems.delete([f"{dead}/run_summary.json", f"{prefix}/run_summary.json"])
    assert all(dead not in f for f in table_files(prefix, "videos"))  # unseen the moment it is not complete
    assert extract.main(args) == 0
    again = read_summary(prefix)
    assert again["counts"]["chunks_resumed"] == 1 and again["rows"] == summary["rows"]
    assert not FileSystems.match([f"{dead}/*/*"])[0].metadata_list  # the dead attempt's files are deleted


def _read(paths: list[str]) -> list[dict]:
    tables = []
    for path in paths:
        with open_object(path) as f:
            tables.append(pq.read_table(f).replace_schema_metadata(None))
    return pa.concat_tables(tables).to_pylist()
