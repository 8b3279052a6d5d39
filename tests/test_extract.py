"""The extraction job end to end on the local runner, with generated videos and the stand-in model."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from floats import assert_features_close

from decoder import ClipReader, DecodeOptions
from decoder.process import FAULT_ENV
from pipeline import extract
from storage.layout import read_summary
from storage.runs import METADATA_KEY
from synthetic.videos import write_audio_only, write_video
from transforms.records import derive_video_id
from transforms.tables import CLIPS_SCHEMA, FAILURES_SCHEMA, VIDEOS_SCHEMA

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5", "--max_seconds_per_video", "2"]
DECODE = DecodeOptions(size=64, frames_per_clip=8, fps=5)


def read_table(prefix: str, table: str) -> pa.Table:
    return ds.dataset(os.path.join(prefix, table), format="parquet").to_table()


def write_manifest(path: str, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video_id", "uri", "start_sec", "end_sec"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # Two valid videos on which the decoder process really fails: it dies by SIGSEGV after the first
    # clip of one, and blocks in native code after the first clip of the other (decoder.process).
    with pytest.MonkeyPatch.context() as env:
        env.setenv(FAULT_ENV, "segv:crash.mkv,hang:hang.mkv")
        yield _corpus(tmp_path_factory)


def _corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    good = {
        "a": write_video(str(d / "a.mp4"), 60, fps=20, width=96, height=64),
        "b": write_video(str(d / "b.webm"), 40, fps=10, width=64, height=80, codec="libvpx-vp9"),
        "c": write_video(str(d / "c.mkv"), 25, fps=25, width=70, height=50, codec="mjpeg", pix_fmt="yuvj420p"),
    }
    text = d / "text.mp4"
    text.write_text("not a video\n" * 50)
    zero = d / "zero.mp4"
    zero.write_bytes(b"")
    audio = write_audio_only(str(d / "audio.mp4"))
    # A stream cut half way (a truncated upload): its first clips are kept, the video fails.
    full = write_video(str(d / "full.mkv"), 100, fps=10, codec="mjpeg", pix_fmt="yuvj420p")
    data = open(full, "rb").read()
    (d / "cut.mkv").write_bytes(data[: len(data) // 2])
    crash = write_video(str(d / "crash.mkv"), 60, fps=20, width=96, height=64)
    hang = write_video(str(d / "hang.mkv"), 60, fps=20, width=96, height=64)
    rows = [
        {"video_id": "crash", "uri": crash},
        {"video_id": "hang", "uri": hang},
        {"video_id": "cut", "uri": str(d / "cut.mkv")},
        {"video_id": "a", "uri": good["a"]},
        {"video_id": "b", "uri": good["b"]},
        {"video_id": "", "uri": good["c"]},  # id derived from the URI
        {"video_id": "a_seg", "uri": good["a"], "start_sec": "1.0", "end_sec": "2.6"},
        {"video_id": "a", "uri": good["a"]},  # exact repeat: decoded once
        {"video_id": "text", "uri": str(text)},
        {"video_id": "zero", "uri": str(zero)},
        {"video_id": "audio", "uri": audio},
        {"video_id": "missing", "uri": str(d / "missing.mp4")},
        {"video_id": "backwards", "uri": good["b"], "start_sec": "3", "end_sec": "1"},
        {"video_id": "b", "uri": good["c"]},  # same id, another video: a failure, not a silent overwrite
    ]
    manifest = write_manifest(str(d / "manifest.csv"), rows)
    return {"dir": d, "good": good, "manifest": manifest}


@pytest.fixture(scope="module")
def run(corpus, standin_dir, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("out") / "run")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", prefix, "--model", standin_dir, *FAST]) == 0
    return prefix


def test_every_input_is_in_exactly_one_of_videos_or_failures(run, corpus):
    videos = read_table(run, "videos").column("video_id").to_pylist()
    failures = read_table(run, "failures").to_pylist()
    c_id = derive_video_id(corpus["good"]["c"])
    assert sorted(videos) == sorted(["a", "b", c_id, "a_seg"])
    by_id = {}
    for f in failures:
        by_id.setdefault(f["video_id"], []).append(f)
    assert set(by_id) == {"text", "zero", "audio", "missing", "backwards", "b", "cut", "crash", "hang"}
    assert not set(videos) & (set(by_id) - {"b"})  # "b" is both: the good video, and the conflicting repeat
    stages = {k: (v[0]["stage"], v[0]["error_type"]) for k, v in by_id.items()}
    assert stages["text"] == ("open", "OpenError")
    assert stages["zero"] == ("open", "OpenError") and "empty file" in by_id["zero"][0]["message"]
    assert stages["audio"] == ("open", "NoVideoStreamError")
    assert stages["missing"] == ("open", "OpenError") and "no such file" in by_id["missing"][0]["message"]
    assert stages["backwards"] == ("input", "ValueError") and "end_sec" in by_id["backwards"][0]["message"]
    assert stages["b"] == ("input", "DuplicateVideoId")
    assert by_id["b"][0]["uri"] == corpus["good"]["c"]
    # The broken stream: a failure that kept its clips, and they are in the clips table.
    assert stages["cut"] == ("decode", "CorruptStreamError") and "truncated" in by_id["cut"][0]["message"]
    kept = read_table(run, "clips").column("video_id").to_pylist().count("cut")
    assert by_id["cut"][0]["clips_kept"] == kept > 0
    # A native crash and a native hang cost their videos only: the clip before each is kept.
    clip_ids = read_table(run, "clips").column("video_id").to_pylist()
    crash, hang = by_id["crash"][0], by_id["hang"][0]
    assert stages["crash"] == ("decode", "DecoderCrashError") and "SIGSEGV" in crash["message"]
    assert stages["hang"] == ("decode", "LimitExceededError") and "max_seconds_per_video=2" in hang["message"]
    assert crash["clips_kept"] == clip_ids.count("crash") == 1 and hang["clips_kept"] == clip_ids.count("hang") == 1
    assert not crash["transient"] and not hang["transient"]


def test_clip_rows_match_the_decoder_and_the_model(run, corpus, standin_model):
    clips = read_table(run, "clips")
    assert clips.schema.remove_metadata().equals(CLIPS_SCHEMA)
    rows = sorted(clips.to_pylist(), key=lambda r: (r["video_id"], r["clip_index"]))
    expected = []
    for video_id, uri, start, end in [("a", corpus["good"]["a"], None, None), ("a_seg", corpus["good"]["a"], 1.0, 2.6),
                                      ("b", corpus["good"]["b"], None, None)]:
        for clip in ClipReader(uri, DECODE, start, end):
            expected.append((video_id, clip))
    got = [r for r in rows if r["video_id"] in ("a", "a_seg", "b")]
    assert len(got) == len(expected) == 6  # at 5 fps, a: 15 samples -> 2 clips; a_seg: 8 -> 1; b: 20 -> 3
    frames = np.stack([clip.frames for _, clip in expected])
    mixed_5c, embedding = standin_model.embed_video(frames)
    for i, (row, (video_id, clip)) in enumerate(zip(got, expected, strict=True)):
        assert (row["video_id"], row["clip_index"], row["num_frames"], row["padded"]) == (
            video_id, clip.clip_index, clip.num_frames, clip.padded)
        assert row["start_sec"] == pytest.approx(clip.start_sec) and row["end_sec"] == pytest.approx(clip.end_sec)
        # One batch of six here, the job's batches of up to four there: equal within float32 rounding.
        assert_features_close(row["mixed_5c"], mixed_5c[i], f"{video_id} clip {clip.clip_index} mixed_5c")
        assert_features_close(row["video_embedding"], embedding[i], f"{video_id} clip {clip.clip_index} embedding")


def test_video_rows_hold_metadata_and_mean_embeddings(run, corpus):
    videos = {r["video_id"]: r for r in read_table(run, "videos").to_pylist()}
    clips = read_table(run, "clips").to_pylist()
    assert len(videos) == 4
    for video_id, video in videos.items():
        mine = [c for c in clips if c["video_id"] == video_id]
        assert len(mine) == video["num_clips"] > 0
        np.testing.assert_allclose(video["video_embedding"], np.mean([c["video_embedding"] for c in mine], axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(video["mixed_5c"], np.mean([c["mixed_5c"] for c in mine], axis=0), rtol=1e-5, atol=1e-6)
    a = videos["a"]
    assert (a["width"], a["height"], a["codec"], a["native_fps"]) == (96, 64, "h264", 20.0)
    # 5 of its 20 frames a second are sampled: the codec decodes the ones the others refer to, not all 60
    reader = ClipReader(corpus["good"]["a"], DecodeOptions(size=64, frames_per_clip=8, fps=5))
    _ = list(reader)
    assert a["decoded_frames"] == reader.info.decoded_frames < 60
    assert a["duration_sec"] == pytest.approx(3.0)
    assert (videos["a_seg"]["segment_start_sec"], videos["a_seg"]["segment_end_sec"]) == (1.0, 2.6)
    assert videos["b"]["codec"] in ("vp9", "libvpx-vp9")


def test_tables_read_back_with_pyarrow_and_duckdb(run, standin_dir):
    duckdb = pytest.importorskip("duckdb")
    for table, schema in (("clips", CLIPS_SCHEMA), ("videos", VIDEOS_SCHEMA), ("failures", FAILURES_SCHEMA)):
        files = sorted(os.listdir(os.path.join(run, table)))
        assert files and all(f.startswith(f"{table}-") and f.endswith(".parquet") for f in files)
        file_schema = pq.read_schema(os.path.join(run, table, files[0]))
        assert file_schema.remove_metadata().equals(schema)
        metadata = json.loads(file_schema.metadata[METADATA_KEY])
        assert metadata["model"] == standin_dir
        assert metadata["preprocessing"] == {"fps": 5.0, "frames_per_clip": 8, "stride": 8, "num_clips": None,
                                             "size": 64, "crop": "center", "tail": "pad"}
    con = duckdb.connect()
    top = con.execute(
        f"SELECT video_id, count(*) AS n, max(end_sec) FROM read_parquet('{run}/clips/*.parquet') GROUP BY video_id ORDER BY video_id"
    ).fetchall()
    assert [(v, n) for v, n, _ in top if v in ("a", "a_seg", "b")] == [("a", 2), ("a_seg", 1), ("b", 3)]
    dims = con.execute(f"SELECT DISTINCT len(video_embedding), len(mixed_5c) FROM read_parquet('{run}/videos/*.parquet')").fetchall()
    assert dims == [(512, 1024)]


def test_run_summary_is_written_last_with_counts(run):
    summary = read_summary(run)
    assert summary["status"] == "complete"
    assert summary["counts"]["videos_ok"] == 4 and summary["counts"]["videos_failed"] == 9
    assert summary["counts"]["input_duplicates"] == 1
    assert summary["counts"]["clips"] == read_table(run, "clips").num_rows
    reasons = {(r["stage"], r["error_type"]): r["count"] for r in summary["failure_reasons"]}
    assert reasons[("open", "OpenError")] == 3
    assert summary["preprocessing"]["size"] == 64 and summary["wall_seconds"] > 0


def test_multi_process_run_gives_the_same_rows(run, corpus, standin_dir, tmp_path):
    prefix = str(tmp_path / "mp")
    status = extract.main([
        "--input", corpus["manifest"], "--output_prefix", prefix, "--model", standin_dir, *FAST,
        "--direct_running_mode", "multi_processing", "--direct_num_workers", "2",
    ])
    assert status == 0

    def rows(p):
        return sorted(read_table(p, "clips").to_pylist(), key=lambda r: (r["video_id"], r["clip_index"]))

    first, second = rows(run), rows(prefix)
    assert len(first) == len(second) > 0
    for x, y in zip(first, second, strict=True):
        features = ("mixed_5c", "video_embedding")
        assert {k: v for k, v in x.items() if k not in features} == {k: v for k, v in y.items() if k not in features}
        # Two processes batch the clips differently: equal within float32 rounding (tests/floats.py).
        for f in features:
            assert_features_close(x[f], y[f], f"{x['video_id']} clip {x['clip_index']} {f}")
    assert sorted(read_table(prefix, "failures").column("video_id").to_pylist()) == \
        sorted(read_table(run, "failures").column("video_id").to_pylist())


def test_rerun_into_the_same_prefix_replaces_the_output(corpus, standin_dir, tmp_path):
    prefix = str(tmp_path / "again")
    glob_all = os.path.join(str(corpus["dir"]), "*.mp4")
    assert extract.main(["--input", glob_all, "--output_prefix", prefix, "--model", standin_dir, *FAST]) == 0
    assert read_table(prefix, "videos").num_rows == 1  # a.mp4; the other .mp4 files are broken
    only_b = write_manifest(str(tmp_path / "b.csv"), [{"video_id": "b", "uri": corpus["good"]["b"]}])
    assert extract.main(["--input", only_b, "--output_prefix", prefix, "--model", standin_dir, *FAST]) == 0
    assert read_table(prefix, "videos").column("video_id").to_pylist() == ["b"]
    assert read_table(prefix, "failures").num_rows == 0
    assert {r["video_id"] for r in read_table(prefix, "clips").to_pylist()} == {"b"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fps", "-2"], "--fps must be > 0"),
        (["--frames_per_clip", "7"], "--frames_per_clip must be even"),
        (["--size", "225"], "--size must be an even number"),
        (["--stride", "4", "--num_clips", "3"], "--num_clips and --stride exclude each other"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
        (["--decode_threads", "-1"], "--decode_threads must be >= 0"),
    ],
)
def test_bad_options_fail_before_the_pipeline_starts(corpus, tmp_path, capsys, args, message):
    prefix = tmp_path / "earlier"
    prefix.mkdir()
    (prefix / "run_summary.json").write_text('{"status": "complete"}')  # a launch would replace it first
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", str(prefix), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert (prefix / "run_summary.json").read_text() == '{"status": "complete"}'  # nothing ran, nothing cleared


def test_bad_inputs_fail_at_launch(tmp_path, capsys):
    assert extract.main(["--input", str(tmp_path / "nothing*.mp4"), "--output_prefix", str(tmp_path / "o")]) == 2
    assert "matches no files" in capsys.readouterr().err
    bad_csv = tmp_path / "m.csv"
    bad_csv.write_text("path,id\n/x.mp4,1\n")
    assert extract.main(["--input", str(bad_csv), "--output_prefix", str(tmp_path / "o")]) == 2
    assert "no 'uri' column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        extract.main(["--input", str(bad_csv), "--fps", "fast"])
    assert "--fps takes a number or 'native'" in capsys.readouterr().err


def test_the_graph_itself_writes_the_summary_when_the_tables_are_final(corpus, standin_dir, tmp_path):
    """No launcher waiting (a Flex Template launch): the job still marks its own completion."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import ExtractOptions, IOOptions, ModelOptions
    from pipeline.runner import create_pipeline

    prefix = str(tmp_path / "graph_only")
    manifest = write_manifest(str(tmp_path / "m.csv"), [{"video_id": "a", "uri": corpus["good"]["a"]},
                                                        {"video_id": "text", "uri": str(corpus["dir"] / "text.mp4")}])
    options = PipelineOptions(["--input", manifest, "--output_prefix", prefix, "--model", standin_dir, *FAST])
    p = create_pipeline(options)
    opts = options.view_as(ExtractOptions)
    io = options.view_as(IOOptions)
    extract.build_pipeline(p, io.input, io.output_prefix, opts, options.view_as(ModelOptions), opts.decode_options())
    p.run().wait_until_finish()
    summary = read_summary(prefix)
    assert summary["status"] == "complete" and "counters" not in summary  # written by the graph, not the launcher
    assert summary["counts"] == {"videos_ok": 1, "videos_failed": 1, "clips": 2}
    assert summary["rows"]["clips"] == read_table(prefix, "clips").num_rows == 2


def test_failure_reasons_read_without_arrows_dataset_layer(run, monkeypatch):
    """pq.read_table on a Python file object let Arrow's threads drop the file during interpreter
    exit, aborting one process in a dozen after its job had finished (a core dump showed
    PyReadableFile's destructor taking the GIL in an Arrow thread); the report must not use it."""
    from pipeline.report import failure_reasons

    def refuse(*args, **kwargs):
        raise AssertionError("failure_reasons must read with pq.ParquetFile, not pq.read_table")

    monkeypatch.setattr(pq, "read_table", refuse)
    reasons = {(r["stage"], r["error_type"]): r["count"] for r in failure_reasons(run)}
    assert reasons[("open", "OpenError")] == 3 and reasons[("decode", "CorruptStreamError")] == 1
    assert sum(reasons.values()) == 9


def test_a_local_dry_run_builds_the_job_and_writes_nothing(standin_dir, tmp_path, capsys):
    """Beam's local runner ignores --dry_run (it would run the job): the launcher must not run it."""
    video = write_video(str(tmp_path / "v.mp4"), 20, fps=10)
    prefix = tmp_path / "out"
    assert extract.main(["--input", video, "--output_prefix", str(prefix), "--model", standin_dir, *FAST,
                         "--dry_run", "true"]) == 0
    assert "dry run" in capsys.readouterr().err and not prefix.exists()
