"""Runs in chunks (--chunk_videos): the cut, the same rows as one run, resume, refusal, and what readers see."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import pyarrow.dataset as ds
import pytest
from floats import assert_features_close

from pipeline import check_run, extract
from pipeline.chunks import cut
from storage.layout import (
    any_layout_glob,
    attempt_prefix,
    chunk_prefix,
    chunk_summary,
    committed_attempt,
    plan_path,
    read_summary,
    table_files,
)
from storage.runs import RunError, check_complete
from synthetic.videos import write_video
from transforms.inputs import CARRIED, input_key, read_input_rows

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5"]
FEATURES = ("mixed_5c", "video_embedding")


def rows(prefix: str, table: str) -> list[dict]:
    files = table_files(prefix, table)
    assert files, f"no {table} files under {prefix}"
    return ds.dataset(files, format="parquet").to_table().to_pylist()


def by_key(table_rows: list[dict]) -> dict[tuple, dict]:
    return {(r["video_id"], r.get("clip_index"), r.get("stage")): r for r in table_rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five short videos in a CSV manifest, with a repeated row, a conflicting id, a row without a uri and a
    line that does not parse: every kind of input the planner must key as the graph does."""
    d = tmp_path_factory.mktemp("chunk_videos")
    videos = [write_video(str(d / f"c{i}.mp4"), 10 + 3 * i, fps=10, width=64, height=48) for i in range(5)]
    lines = ["uri,video_id"] + [f"{v}," for v in videos]
    lines += [f"{videos[0]},", f"{videos[1]},{input_key({'uri': videos[0]})}", ",", "a,b,c"]
    manifest = d / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return {"videos": videos, "manifest": str(manifest), "dir": d}


@pytest.fixture(scope="module")
def one_run(corpus, standin_dir, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("unchunked") / "run")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", prefix, "--model", standin_dir,
                         *FAST]) == 0
    return prefix


def chunked_args(corpus, standin_dir, prefix, *extra):
    return ["--input", corpus["manifest"], "--output_prefix", prefix, "--model", standin_dir, *FAST,
            "--chunk_videos", "2", *extra]


def attempt_dir(prefix: str, name: str) -> str:
    """The directory of a chunk's committed attempt."""
    return attempt_prefix(prefix, name, committed_attempt(prefix, name))


def test_the_cut_is_deterministic_bounded_and_keeps_an_ids_rows_together():
    rows_ = [{"uri": f"/v/{i % 7}.mp4"} for i in range(10)]  # ids 0..6, three of them twice
    rows_ += [{"uri": ""}, {CARRIED: {"video_id": "zz", "stage": "input", "error_type": "ValueError"}}]
    chunks, skipped = cut(rows_, 3, done=set())
    shuffled = rows_[:]
    random.Random(0).shuffle(shuffled)
    again, _ = cut(shuffled, 3, done=set())
    key_sets = [sorted({input_key(r) for r in c}) for c in chunks]
    assert key_sets == [sorted({input_key(r) for r in c}) for c in again]  # any input order, the same chunks
    assert all(len(k) <= 3 for k in key_sets) and sum(len(k) for k in key_sets) == 9 and skipped == 0
    assert sum(len(c) for c in chunks) == len(rows_)  # every row is in a chunk, repeats beside each other
    assert [k for ks in key_sets for k in ks] == sorted(input_key(r) for r in {input_key(r): r for r in rows_}.values())
    done = {input_key({"uri": "/v/1.mp4"}), input_key({"uri": "/v/5.mp4"}), "zz"}
    fewer, skipped = cut(rows_, 3, done=done)
    assert skipped == 2 and sum(len(c) for c in fewer) == len(rows_) - 3  # /v/1 was listed twice; zz is a failure
    # A done video's other rows are still accounted for: a row asking for another file under its id fails.
    conflict = {"uri": "/v/other.mp4", "video_id": input_key({"uri": "/v/1.mp4"})}
    left, skipped = cut([*rows_, conflict], 3, done=done)
    carried = [r[CARRIED] for c in left for r in c if CARRIED in r and r[CARRIED]["error_type"] == "DuplicateVideoId"]
    assert skipped == 2 and [f["uri"] for f in carried] == ["/v/other.mp4"]


def test_the_planner_reads_the_rows_the_graph_reads(corpus):
    read = list(read_input_rows(corpus["manifest"]))
    assert len(read) == 9
    assert read[-1][CARRIED]["stage"] == "input" and "3 fields where the header has 2" in read[-1][CARRIED]["message"]
    assert [r.get("uri") for r in read[:5]] == corpus["videos"]


def test_a_run_in_chunks_has_the_rows_of_one_run(corpus, one_run, standin_dir, tmp_path, capsys):
    prefix = str(tmp_path / "chunked")
    capsys.readouterr()
    assert extract.main(chunked_args(corpus, standin_dir, prefix)) == 0
    # Each chunk has a progress line of its own, its total the chunk's (the graph's count: 0 for a chunk of failures).
    finals = [line.split(" | ")[0] for line in capsys.readouterr().err.splitlines()
              if line.startswith("progress: ") and line.endswith("| done")]
    done = [tuple(map(int, line.removeprefix("progress: videos ").split("/"))) for line in finals]
    assert len(done) == 4 and all(n == total for n, total in done), finals
    assert sum(n for n, _ in done) == 5  # the five videos to decode, each counted in its chunk
    plan = json.load(open(plan_path(prefix)))
    assert [c["videos"] for c in plan["chunks"]] == [2, 2, 2, 1]  # 7 ids (5 videos, 2 unusable rows), by 2
    summary, whole = read_summary(prefix), read_summary(one_run)
    for key in ("videos_ok", "videos_failed", "clips", "input_duplicates", "frames_decoded"):
        assert summary["counts"][key] == whole["counts"][key], key
    assert summary["counts"]["chunks_total"] == 4 and summary["counts"]["chunks_resumed"] == 0
    assert summary["rows"] == whole["rows"]
    assert {r["error_type"] for r in summary["failure_reasons"]} == {r["error_type"] for r in whole["failure_reasons"]}
    for table in ("clips", "videos", "failures"):
        mine, theirs = by_key(rows(prefix, table)), by_key(rows(one_run, table))
        assert mine.keys() == theirs.keys() and mine, table
        for key, row in mine.items():
            assert {k: v for k, v in row.items() if k not in FEATURES} == \
                {k: v for k, v in theirs[key].items() if k not in FEATURES}, key
            for f in FEATURES if table != "failures" else ():
                assert_features_close(row[f], theirs[key][f], f"{key} {f}")
        # The one glob for both layouts, and the summary's file list, read exactly these files.
        assert sorted(summary["files"][table]) == table_files(prefix, table)
        con = duckdb.connect()
        glob_rows = con.sql(f"SELECT count(*) FROM read_parquet('{any_layout_glob(prefix, table)}')").fetchall()[0][0]
        con.sql(f"SET VARIABLE files = (SELECT files.{table} FROM read_json('{prefix}/run_summary.json'))")
        listed = con.sql("SELECT count(*) FROM read_parquet(getvariable('files'))").fetchall()[0][0]
        assert glob_rows == listed == len(mine)
    assert check_run.main(["--output_prefix", prefix, "--max_failure_rate", "1"]) == 0

    # A chunk that died after its tables were final but before its summary: no reader sees it.
    shutil.copytree(prefix, tmp_path / "broken")
    broken = str(tmp_path / "broken")
    os.remove(os.path.join(broken, "run_summary.json"))
    # The ids come from the temporary paths' hashes, so which chunk holds videos (rather than only
    # the unusable rows' failures) varies from run to run: the dead chunk is one that holds videos.
    names = [c["name"] for c in plan["chunks"]]
    video_ids = {n: {r["video_id"] for r in ds.dataset(os.path.join(attempt_dir(broken, n), "videos")).to_table().to_pylist()}
                 for n in names}
    dead_name = next(n for n in names if video_ids[n])
    dead = attempt_dir(broken, dead_name)
    os.remove(os.path.join(dead, "run_summary.json"))
    dead_ids = video_ids[dead_name]
    assert dead_ids and not dead_ids & {r["video_id"] for r in rows(broken, "videos")}
    with pytest.raises(RunError, match="did not complete"):
        check_complete(broken)
    assert check_run.main(["--output_prefix", broken]) == 2

    # Resumed: only the chunk without a summary runs again; the others' files are untouched.
    kept = {n: os.stat(os.path.join(attempt_dir(broken, n), "run_summary.json")).st_mtime_ns
            for n in names if n != dead_name}
    assert extract.main(chunked_args(corpus, standin_dir, broken)) == 0
    resumed = read_summary(broken)
    assert resumed["counts"]["chunks_resumed"] == 3 and resumed["counts"]["chunks_total"] == 4
    assert {n: os.stat(os.path.join(attempt_dir(broken, n), "run_summary.json")).st_mtime_ns for n in kept} == kept
    assert not os.path.exists(dead)  # the dead attempt's files are gone once the run is complete
    assert by_key(rows(broken, "videos")).keys() == by_key(rows(prefix, "videos")).keys()
    assert resumed["counts"]["videos_ok"] == summary["counts"]["videos_ok"]


def test_other_parameters_are_refused_and_overwrite_starts_over(corpus, standin_dir, tmp_path, capsys):
    prefix = str(tmp_path / "p")
    small = tmp_path / "small.txt"
    small.write_text("\n".join(corpus["videos"][:3]) + "\n")
    args = ["--input", str(small), "--output_prefix", prefix, "--model", standin_dir, *FAST]
    assert extract.main([*args, "--chunk_videos", "2"]) == 0
    before = sorted(os.listdir(os.path.join(prefix, "chunks")))
    capsys.readouterr()
    assert extract.main([*args, "--chunk_videos", "2", "--fps", "4"]) == 2
    err = capsys.readouterr().err
    assert "other parameters" in err and "preprocessing" in err and "--overwrite" in err
    assert sorted(os.listdir(os.path.join(prefix, "chunks"))) == before  # nothing touched
    assert extract.main([*args, "--chunk_videos", "3", "--overwrite"]) == 0
    assert read_summary(prefix)["counts"]["chunks_total"] == 1 and len(rows(prefix, "videos")) == 3
    assert not os.path.exists(chunk_prefix(prefix, "00001"))  # the earlier plan's chunks are gone
    # A run without chunks on the prefix replaces the chunked one: no chunk is left for a reader.
    assert extract.main(args) == 0
    assert not os.path.exists(os.path.join(prefix, "chunks"))
    assert len(rows(prefix, "videos")) == 3 and all("/chunks/" not in f for f in table_files(prefix, "videos"))
    assert extract.main([*args, "--overwrite"]) == 2
    assert "--overwrite goes with --chunk_videos" in capsys.readouterr().err


def test_skip_done_and_retry_read_a_chunked_run(corpus, standin_dir, tmp_path):
    first = str(tmp_path / "first")
    assert extract.main(chunked_args(corpus, standin_dir, first)) == 0
    second = str(tmp_path / "second")
    assert extract.main(chunked_args(corpus, standin_dir, second, "--skip_done", first)) == 0
    summary = read_summary(second)
    assert summary["counts"]["videos_skipped_done"] == 5  # every video; unusable rows are not done
    assert summary["counts"]["videos_ok"] == 0
    # The failures are the same as the first run's: unusable rows, and the row asking for another video
    # under a done video's id.
    assert sorted((r["error_type"], r["uri"]) for r in rows(second, "failures")) == \
        sorted((r["error_type"], r["uri"]) for r in rows(first, "failures"))
    retried = str(tmp_path / "retried")
    assert extract.main(["--retry_failures", first, "--output_prefix", retried, "--model", standin_dir, *FAST]) == 0
    assert read_summary(retried)["counts"]["failures_retried"] == read_summary(first)["counts"]["videos_failed"]


def test_a_launcher_killed_mid_run_resumes_from_its_complete_chunks(corpus, standin_dir, tmp_path):
    prefix = str(tmp_path / "killed")
    listing = tmp_path / "five.txt"
    listing.write_text("\n".join(corpus["videos"]) + "\n")
    args = ["--input", str(listing), "--output_prefix", prefix, "--model", standin_dir, *FAST, "--chunk_videos", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.extract", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if chunk_summary(prefix, "00001") is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [n for n in ("00000", "00001", "00002", "00003", "00004")
                   if chunk_summary(prefix, n) is not None]
    assert read_summary(prefix) is None and 2 <= len(done_before) < 5
    assert extract.main(args) == 0  # the stale lease is taken over, the complete chunks kept
    summary = read_summary(prefix)
    assert summary["counts"]["chunks_resumed"] == len(done_before)
    assert sorted(r["uri"] for r in rows(prefix, "videos")) == sorted(corpus["videos"])  # each exactly once


def test_on_dataflow_at_most_parallel_chunk_jobs_run_and_a_failed_job_costs_its_chunk(tmp_path, monkeypatch):
    """Dataflow is out of reach here: its pipeline result stands in at the runner boundary, as Beam's
    DataflowPipelineResult behaves (`state` polls the job: RUNNING until a terminal DONE or FAILED; the
    job's last step writes the chunk's run_summary.json, as WriteTables does)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
    from apache_beam.runners.runner import PipelineState

    from pipeline import chunks, runner
    from transforms.tables import write_summary

    listing = tmp_path / "five.txt"
    listing.write_text("".join(f"/videos/{i}.mp4\n" for i in range(5)))
    submitted, live, fail_once = [], set(), {"00002"}

    class Job:
        has_job = True

        def __init__(self, name: str, prefix: str):
            self.name, self.prefix, self.polls = name, prefix, 0

        def job_id(self):
            return f"job-{self.name}"

        @property
        def state(self):
            self.polls += 1
            if self.polls < 3:
                return PipelineState.RUNNING
            live.discard(self.name)
            if self.name in fail_once:
                return PipelineState.FAILED
            write_summary(self.prefix, {"status": "complete", "counts": {"videos_ok": 1, "videos_failed": 0, "clips": 2},
                                        "rows": {"clips": 2}})
            return PipelineState.DONE

        def metrics(self):
            class Query:
                def query(self):
                    return {"counters": [], "distributions": []}
            return Query()

    class Pipeline:
        def __init__(self, options):
            self.job_name = options.view_as(GoogleCloudOptions).job_name

        def run(self):
            name = self.prefix.split("/chunks/")[1].split("/")[0]
            assert self.job_name == f"s3d-day-c{name}"  # a fixed name per chunk
            submitted.append(name)
            live.add(name)
            assert len(live) <= 2, f"more than --parallel_chunks jobs at once: {sorted(live)}"
            return Job(name, self.prefix)

    def build(p, progress, input_spec, prefix):
        assert input_spec == prefix.split("/attempts/")[0] + "/input.jsonl" and os.path.exists(input_spec)
        p.prefix = prefix

    monkeypatch.setattr(runner, "create_pipeline", Pipeline)
    options = PipelineOptions(["--runner", "DataflowRunner", "--job_name", "s3d-day"])
    prefix = str(tmp_path / "out")
    chunking = chunks.Chunking(str(listing), 1, (), 600.0, {"model": "m", "preprocessing": {}})

    def launch():
        return chunks.ChunkedLaunch(options, prefix, ("clips",), build, {"model": "m"}, lambda c, p: {},
                                    parallel=2, poll_sec=0).run(chunking, overwrite=False)

    with pytest.raises(chunks.ChunksFailedError, match=r"1 of 5 chunks failed \(00002\)"):
        launch()
    assert sorted(submitted) == ["00000", "00001", "00002", "00003", "00004"] and read_summary(prefix) is None
    fail_once.clear()
    submitted.clear()
    summary, _ = launch()
    assert submitted == ["00002"]  # only the failed chunk runs again
    assert summary["counts"]["chunks_resumed"] == 4 and summary["counts"]["videos_ok"] == 5
    assert summary["rows"] == {"clips": 10}


def test_the_steps_apart_as_a_scheduler_runs_them(corpus, standin_dir, tmp_path, capsys):
    """plan, then each chunk (any order), then aggregate: what the Airflow DAG's tasks run."""
    prefix = str(tmp_path / "steps")
    listing = tmp_path / "three.txt"
    listing.write_text("\n".join(corpus["videos"][:3]) + "\n")
    args = ["--input", str(listing), "--output_prefix", prefix, "--model", standin_dir, *FAST, "--chunk_videos", "1"]
    assert extract.main([*args, "--chunk_step", "00000"]) == 2
    assert "no plan of a run in chunks" in capsys.readouterr().err
    assert extract.main([*args, "--chunk_step", "plan"]) == 0
    names = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert names == ["00000", "00001", "00002"] and chunk_summary(prefix, "00000") is None
    assert extract.main([*args, "--chunk_step", "00002"]) == 0
    assert chunk_summary(prefix, "00002")["counts"]["videos_ok"] == 1
    assert extract.main([*args, "--chunk_step", "aggregate"]) == 1
    assert "2 of 3 chunks" in capsys.readouterr().err and read_summary(prefix) is None
    for name in ("00001", "00000", "00002"):  # 00002 again: complete, kept
        assert extract.main([*args, "--chunk_step", name]) == 0
    assert extract.main([*args, "--chunk_step", "00003"]) == 2
    assert "has no chunk '00003'" in capsys.readouterr().err
    assert extract.main([*args, "--chunk_step", "aggregate"]) == 0
    summary = read_summary(prefix)
    assert summary["counts"]["videos_ok"] == 3 and summary["counts"]["chunks_total"] == 3
    assert extract.main([*args, "--chunk_step", "plan", "--fps", "4"]) == 2  # other parameters: refused
    assert extract.main([*args[:-2], "--chunk_step", "plan"]) == 2
    assert "--chunk_step goes with --chunk_videos" in capsys.readouterr().err


def test_a_zombie_attempts_late_files_never_mix_with_the_committed_ones(corpus, standin_dir, tmp_path):
    """An older attempt at a chunk that finishes late, and one that died half way, stay unseen."""
    prefix = str(tmp_path / "zombie")
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(corpus["videos"][:2]) + "\n")
    args = ["--input", str(listing), "--output_prefix", prefix, "--model", standin_dir, *FAST, "--chunk_videos", "1"]
    assert extract.main(args) == 0
    before = {t: table_files(prefix, t) for t in ("clips", "videos", "failures")}
    committed = attempt_dir(prefix, "00000")
    # A zombie: an attempt that started before the committed one and completes now, with its own files.
    zombie = attempt_prefix(prefix, "00000", "20000101T000000-00000000")
    shutil.copytree(committed, zombie)
    # A dead attempt started after it: tables final, no summary.
    dead = attempt_prefix(prefix, "00000", "29990101T000000-ffffffff")
    shutil.copytree(committed, dead)
    os.remove(os.path.join(dead, "run_summary.json"))
    assert committed_attempt(prefix, "00000") == committed.rsplit("/", 1)[1]
    assert {t: table_files(prefix, t) for t in before} == before  # neither is read
    assert len(rows(prefix, "videos")) == 2
