"""--captions in the extraction job: captions read from a manifest column, beside the videos or from a table,
embedded with the text tower, aligned with the clips, and the README's query over the captions table."""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pytest
from floats import assert_features_close

from captions.align import align
from pipeline import extract
from storage.layout import read_summary, table_files
from synthetic.videos import write_video

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5", "--stride", "8"]
CUES = [(0.0, 1.5, "cut the <b>tomato</b>"), (1.5, 4.0, "a dog runs on the beach"), (4.5, 7.5, "slice an onion")]


def vtt(cues) -> str:
    return "WEBVTT\n\n" + "".join(f"00:00:{s:06.3f} --> 00:00:{e:06.3f}\n{t}\n\n" for s, e, t in cues)


def rows(prefix: str, table: str) -> list[dict]:
    files = table_files(prefix, table)
    return ds.dataset(files, format="parquet").to_table().to_pylist() if files else []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A: 8 s with a captions file; B: a captions file that is not there; C: no captions."""
    d = tmp_path_factory.mktemp("narrated")
    videos = {k: write_video(str(d / f"{k}.mp4"), 80, fps=10, width=64, height=48) for k in "ABC"}
    (d / "A.vtt").write_text(vtt(CUES), encoding="utf-8")
    manifest = d / "m.csv"
    manifest.write_text("video_id,uri,captions\n"
                        f"A,{videos['A']},{d / 'A.vtt'}\nB,{videos['B']},{d / 'B_missing.vtt'}\nC,{videos['C']},\n")
    table = d / "captions.csv"
    plain = [(s, e, re.sub(r"</?b>", "", t)) for s, e, t in CUES]  # a table holds plain sentences
    table.write_text("video_id,start_sec,end_sec,text\n" + "".join(f'A,{s},{e},"{t}"\n' for s, e, t in plain))
    return {"dir": d, "videos": videos, "manifest": str(manifest), "table": str(table)}


@pytest.fixture(scope="module")
def column_run(corpus, standin_dir, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("narrated_run") / "out")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", prefix, "--model", standin_dir, *FAST,
                         "--captions", "column"]) == 0
    return prefix


def _key(r):
    return r["video_id"], r["caption_index"]


def _same_captions(got: list[dict], want: list[dict]) -> None:
    got, want = sorted(got, key=_key), sorted(want, key=_key)
    assert [_key(r) for r in got] == [_key(r) for r in want] and got
    for x, y in zip(got, want, strict=True):
        plain = {"text", "start_sec", "end_sec", "best_clip_index", "grounded", "known_words", "uri"}
        assert {k: x[k] for k in plain} == {k: y[k] for k in plain}, _key(x)
        assert_features_close(x["text_embedding"], y["text_embedding"], f"{_key(x)} text_embedding")


def test_captions_are_embedded_and_aligned_with_the_clips(column_run, standin_model):
    captions = sorted(rows(column_run, "captions"), key=_key)
    assert [(r["video_id"], r["caption_index"], r["start_sec"], r["end_sec"], r["text"]) for r in captions] == [
        ("A", i, s, e, re.sub(r"</?b>", "", t)) for i, (s, e, t) in enumerate(CUES)]  # styling tags dropped
    texts = [r["text"] for r in captions]
    want = standin_model.embed_text(texts)
    for r, w in zip(captions, want, strict=True):
        assert_features_close(r["text_embedding"], w, r["text"])  # the text tower's embedding
    assert [r["known_words"] for r in captions] == standin_model.known_words(texts)
    # The alignment is captions.align's on the run's own clips of A (tested on known answers in test_align).
    clips = sorted((c for c in rows(column_run, "clips") if c["video_id"] == "A"), key=lambda c: c["clip_index"])
    assert len(clips) >= 3
    direct = align(np.array([[r["start_sec"], r["end_sec"]] for r in captions]),
                   np.array([r["text_embedding"] for r in captions]),
                   np.array([[c["start_sec"], c["end_sec"]] for c in clips]), np.array([c["clip_index"] for c in clips]),
                   np.array([c["video_embedding"] for c in clips]), 5.0)
    for r, a in zip(captions, direct, strict=True):
        assert (r["best_clip_index"], r["grounded"]) == (a.best_clip_index, a.grounded), r["text"]
        assert r["best_clip_score"] == pytest.approx(a.best_clip_score, rel=1e-5)
        assert r["best_clip_offset_sec"] == pytest.approx(a.best_clip_offset_sec)
        assert (r["overlap_score"] is None) == (a.overlap_score is None)
        if a.overlap_score is not None:
            assert r["overlap_score"] == pytest.approx(a.overlap_score, rel=1e-5, abs=1e-3)


def test_every_video_is_written_and_a_captions_failure_is_its_own_row(column_run, corpus):
    videos = {r["video_id"]: r for r in rows(column_run, "videos")}
    assert set(videos) == {"A", "B", "C"} and rows(column_run, "failures") == []  # B's clips are there too
    grounded = [r["grounded"] for r in rows(column_run, "captions")]
    judged = [g for g in grounded if g is not None]
    a = videos["A"]
    assert (a["captions"], a["grounded_captions"]) == (3, sum(judged))
    assert a["grounded_fraction"] == (pytest.approx(sum(judged) / len(judged)) if judged else None)
    for quiet in ("B", "C"):  # B's file is missing, C has none: no captions columns
        assert (videos[quiet]["captions"], videos[quiet]["grounded_fraction"]) == (None, None)
    failed = rows(column_run, "captions_failures")
    assert [(f["video_id"], f["stage"], f["error_type"]) for f in failed] == [("B", "captions", "FileNotFoundError")]
    assert "B_missing.vtt" in failed[0]["message"]
    summary = read_summary(column_run)
    assert summary["counts"]["captions"] == 3 and summary["counts"]["captions_failed"] == 1
    assert summary["rows"]["videos"] == 3 and summary["counts"]["videos_failed"] == 0


def test_captions_the_text_tower_fails_on_are_their_videos_failure_row(corpus, standin_dir, tmp_path, monkeypatch):
    from transforms.inference import S3DModelHandler

    embed_texts = S3DModelHandler._embed_texts

    def failing(batch, model):
        if any("onion" in item.text for item in batch):  # A's last caption: its shard fails
            raise RuntimeError("text tower failed (simulated)")
        return embed_texts(batch, model)

    monkeypatch.setattr(S3DModelHandler, "_embed_texts", staticmethod(failing))
    prefix = str(tmp_path / "out")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", prefix, "--model", standin_dir, *FAST,
                         "--captions", "column"]) == 0
    failed = {r["video_id"]: r for r in rows(prefix, "captions_failures")}
    assert sorted(failed) == ["A", "B"]  # B: its file is missing
    assert (failed["A"]["stage"], failed["A"]["error_type"]) == ("captions", "RuntimeError")
    assert failed["A"]["message"].startswith(f"{len(CUES)} caption(s) failed in the text tower: ")
    assert "text tower failed (simulated)" in failed["A"]["message"]
    assert failed["A"]["uri"] == corpus["videos"]["A"]
    assert rows(prefix, "captions") == []
    videos = {r["video_id"]: r for r in rows(prefix, "videos")}
    assert sorted(videos) == ["A", "B", "C"] and videos["A"]["num_clips"] > 0  # the clips are written all the same
    assert (videos["A"]["captions"], videos["A"]["grounded_fraction"]) == (len(CUES), None)


def test_sidecar_files_and_a_captions_table_give_the_same_rows(column_run, corpus, standin_dir, tmp_path):
    sidecar = str(tmp_path / "sidecar")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", sidecar, "--model", standin_dir, *FAST,
                         "--captions", "sidecar"]) == 0  # A.vtt is beside A.mp4; B and C have none
    _same_captions(rows(sidecar, "captions"), rows(column_run, "captions"))
    assert rows(sidecar, "captions_failures") == []  # no sidecar is not an error
    table = str(tmp_path / "table")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", table, "--model", standin_dir, *FAST,
                         "--captions", corpus["table"]]) == 0
    _same_captions(rows(table, "captions"), rows(column_run, "captions"))


def test_split_parts_shards_and_chunks_give_the_same_captions(column_run, corpus, standin_dir, tmp_path, monkeypatch,
                                                             capsys):
    """--split_sec parts join before alignment; captions are aligned in shards (here of 2, so A's 3 captions
    are two keys, each given A's clips); a run in chunks writes the same rows, and its plan refuses a
    relaunch with other captions settings."""
    from transforms import captions as captions_module

    monkeypatch.setattr(captions_module, "SHARD_CAPTIONS", 2)
    split = str(tmp_path / "split")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", split, "--model", standin_dir, *FAST,
                         "--captions", "column", "--split_sec", "3"]) == 0
    assert read_summary(split)["counts"]["video_parts"] >= 6
    _same_captions(rows(split, "captions"), rows(column_run, "captions"))
    chunked = str(tmp_path / "chunked")
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", chunked, "--model", standin_dir, *FAST,
                         "--captions", "column", "--chunk_videos", "2"]) == 0
    _same_captions(rows(chunked, "captions"), rows(column_run, "captions"))
    assert {r["video_id"]: r["captions"] for r in rows(chunked, "videos")} == {"A": 3, "B": None, "C": None}
    capsys.readouterr()
    assert extract.main(["--input", corpus["manifest"], "--output_prefix", chunked, "--model", standin_dir, *FAST,
                         "--captions", "sidecar", "--chunk_videos", "2"]) == 2  # the plan was made with 'column'
    assert "captions" in capsys.readouterr().err


def test_captions_settings_are_part_of_what_a_run_is(column_run, corpus, standin_dir, tmp_path):
    """The run metadata records --captions and --align_window_sec; --skip_done counts an earlier run's videos
    as done only when it aligned the same captions, or when this run aligns none; a run without --captions
    clears an earlier run's captions tables from its prefix."""
    from storage.runs import file_run_metadata

    settings = {"source": "column", "align_window_sec": 5.0}
    summary = read_summary(column_run)
    assert summary["captions"] == settings
    # Both towers' handlers report their model load under one name: the summary counts both.
    assert summary["distributions"]["load_model_latency_milli_secs"]["count"] == 2, summary["distributions"]
    assert {file_run_metadata(f)["captions"].get("source") for f in table_files(column_run, "captions")} == {"column"}
    prefix = str(tmp_path / "out")
    base = ["--input", corpus["manifest"], "--output_prefix", prefix, "--model", standin_dir, *FAST,
            "--skip_done", column_run]
    assert extract.main([*base, "--captions", "sidecar"]) == 0
    assert read_summary(prefix)["counts"]["videos_skipped_done"] == 0  # column_run aligned other captions
    assert [r["video_id"] for r in rows(prefix, "captions")] == ["A"] * len(CUES)
    assert extract.main(base) == 0
    assert read_summary(prefix)["counts"]["videos_skipped_done"] == 3  # a run without captions: all done
    assert "captions" not in read_summary(prefix)
    assert table_files(prefix, "captions") == [] and table_files(prefix, "captions_failures") == []


def test_the_readme_query_lists_a_videos_best_grounded_captions(column_run):
    readme = open("README.md", encoding="utf-8").read()
    query = re.search(r"```sql\n(-- a video's best-grounded captions.*?)```", readme, re.S).group(1)
    got = duckdb.sql(query.replace("out/run1", column_run).replace("'VIDEO_ID'", "'A'")).fetchall()
    want = sorted((r for r in rows(column_run, "captions") if r["video_id"] == "A" and r["best_clip_score"] is not None),
                  key=lambda r: -r["best_clip_score"])
    assert [g[0] for g in got] == [r["text"] for r in want][:len(got)] and got


def test_bad_captions_flags_are_named(corpus, standin_dir, tmp_path, capsys):
    args = ["--input", corpus["manifest"], "--output_prefix", str(tmp_path / "x"), "--model", standin_dir]
    assert extract.main([*args, "--captions", "subtitles.txt"]) == 2
    assert "--captions is 'column', 'sidecar' or a .parquet, .csv or .jsonl table" in capsys.readouterr().err
    assert extract.main([*args, "--captions", str(tmp_path / "none.csv")]) == 2
    assert "no such captions table" in capsys.readouterr().err
    assert extract.main([*args, "--captions", "column", "--align_window_sec", "-1"]) == 2
    assert "--align_window_sec must be >= 0" in capsys.readouterr().err
