"""Text embeddings and text-to-video search: the embed_text job, streaming top-k, refusals, the HTML page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from floats import assert_features_close

from pipeline import embed_text, extract, search
from storage.layout import read_summary
from storage.runs import METADATA_KEY, RunError, level_files, shared_metadata
from synthetic.videos import write_video
from transforms.tables import CLIPS_SCHEMA, with_run_metadata, write_summary

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5"]


def write_features(prefix: str, embeddings: np.ndarray, model: str, files: int, row_group_size: int) -> list[dict]:
    """A clips table of the given embeddings split over `files` Parquet files, plus a run summary."""
    n = len(embeddings)
    rows = [{"video_id": f"v{i // 7:05d}", "uri": f"/videos/v{i // 7:05d}.mp4", "clip_index": i % 7,
             "start_sec": 3.2 * (i % 7), "end_sec": 3.2 * (i % 7 + 1), "num_frames": 32, "padded": False,
             "mixed_5c": np.zeros(1024, np.float32), "video_embedding": embeddings[i]} for i in range(n)]
    schema = with_run_metadata(CLIPS_SCHEMA, {"model": model, "preprocessing": {"fps": 10}})
    os.makedirs(os.path.join(prefix, "clips"), exist_ok=True)
    for f, chunk in enumerate(np.array_split(np.arange(n), files)):
        table = pa.Table.from_pylist([rows[i] for i in chunk], schema=schema)
        pq.write_table(table, os.path.join(prefix, "clips", f"clips-{f:05d}-of-{files:05d}.parquet"), row_group_size=row_group_size)
    write_summary(prefix, {"status": "complete"})
    return rows


def brute_force(embeddings: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    scores = embeddings.astype(np.float64) @ queries.astype(np.float64).T
    return [list(np.argsort(-scores[:, q], kind="stable")[:k]) for q in range(queries.shape[0])]


@pytest.fixture(scope="module")
def random_features(tmp_path_factory):
    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(3000, 512)).astype(np.float32)
    many = str(tmp_path_factory.mktemp("many"))
    one = str(tmp_path_factory.mktemp("one"))
    rows = write_features(many, embeddings, "m", files=9, row_group_size=97)
    write_features(one, embeddings, "m", files=1, row_group_size=100_000)
    return {"embeddings": embeddings, "rows": rows, "many": many, "one": one}


def test_streaming_ranking_equals_brute_force(random_features):
    queries = np.random.default_rng(8).normal(size=(4, 512)).astype(np.float32)
    files = level_files(random_features["many"], "clip")
    assert len(files) == 9
    top = search.search(files, queries, "clip", k=15, threads=3)
    expected = brute_force(random_features["embeddings"], queries, 15)
    for q in range(4):
        got = [(r["video_id"], r["clip_index"]) for r in top.rows[q]]
        want = [(random_features["rows"][i]["video_id"], random_features["rows"][i]["clip_index"]) for i in expected[q]]
        assert got == want
        np.testing.assert_allclose(top.scores[q], random_features["embeddings"][expected[q]] @ queries[q], rtol=1e-5)


def test_many_small_files_give_the_same_top_k_as_one_big_file(random_features):
    queries = np.random.default_rng(9).normal(size=(2, 512)).astype(np.float32)
    a = search.search(level_files(random_features["many"], "clip"), queries, "clip", k=20, threads=4)
    b = search.search(level_files(random_features["one"], "clip"), queries, "clip", k=20, threads=1)
    assert a.rows == b.rows and len(a.rows[0]) == 20
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_top_k_larger_than_the_table(random_features, tmp_path):
    emb = np.random.default_rng(1).normal(size=(5, 512)).astype(np.float32)
    write_features(str(tmp_path), emb, "m", files=2, row_group_size=2)
    top = search.search(level_files(str(tmp_path), "clip"), emb[:1], "clip", k=50)
    assert len(top.rows[0]) == 5 and top.rows[0][0]["video_id"] == "v00000" and top.rows[0][0]["clip_index"] == 0


# ---- on real extraction output -------------------------------------------------------------------


@pytest.fixture(scope="module")
def extracted(standin_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("search_videos")
    for i, (w, h) in enumerate([(96, 64), (64, 96), (80, 80)]):
        write_video(str(d / f"v{i}.mp4"), 40 + 10 * i, fps=10, width=w, height=h)
    prefix = str(tmp_path_factory.mktemp("search_out") / "run")
    assert extract.main(["--input", str(d / "*.mp4"), "--output_prefix", prefix, "--model", standin_dir, *FAST]) == 0
    return prefix


def test_video_level_scores_are_dot_products_with_the_mean_embedding(extracted, standin_dir, standin_model, capsys, tmp_path):
    out = str(tmp_path / "ranking.parquet")
    assert search.main(["--features", extracted, "--query", "cut the tomato", "--level", "video", "--output", out]) == 0
    ranking = pq.read_table(out).to_pylist()
    videos = {r["video_id"]: np.array(r["video_embedding"]) for r in ds.dataset(os.path.join(extracted, "videos")).to_table().to_pylist()}
    assert len(ranking) == 3 == len(videos)
    query = standin_model.embed_text(["cut the tomato"])[0]
    for row in ranking:
        assert row["score"] == pytest.approx(float(videos[row["video_id"]] @ query), rel=1e-5, abs=1e-5)
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
    assert "cut the tomato" in capsys.readouterr().out


def test_clip_level_csv_output_and_printout(extracted, tmp_path, capsys):
    out = str(tmp_path / "ranking.csv")
    assert search.main(["--features", extracted, "--query", "a dog", "--query", "the knife", "--top_k", "4", "--output", out]) == 0
    with open(out) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("query_id,query,rank,score,level,video_id,uri,clip_index,start_sec,end_sec")
    assert len(lines) == 1 + 2 * 4
    printed = capsys.readouterr().out
    assert "'a dog'" in printed and "'the knife'" in printed


def test_a_query_from_another_model_is_refused(extracted, other_standin_dir, capsys):
    other = other_standin_dir
    assert search.main(["--features", extracted, "--query", "cut the tomato", "--model", other]) == 2
    err = capsys.readouterr().err
    assert "were made with model" in err and other in err


def test_a_texts_table_from_another_model_is_refused(extracted, other_standin_dir, tmp_path, capsys):
    other = other_standin_dir
    sentences = tmp_path / "s.txt"
    sentences.write_text("cut the tomato\n")
    texts = str(tmp_path / "texts")
    assert embed_text.main(["--input", str(sentences), "--output_prefix", texts, "--model", other]) == 0
    assert search.main(["--features", extracted, "--texts", texts]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_empty_and_non_ascii_queries(extracted, capsys):
    assert search.main(["--features", extracted, "--query", "   "]) == 2
    assert "query 1 is empty" in capsys.readouterr().err
    # Non-ASCII words are lower-cased and split like the reference; unknown ones are reported, not fatal.
    assert search.main(["--features", extracted, "--query", "Crème brûlée", "--top_k", "2"]) == 0
    captured = capsys.readouterr()
    assert "no word of 'Crème brûlée' is in the model's vocabulary" in captured.err
    assert "'Crème brûlée'" in captured.out


def test_a_process_that_searches_twice_loads_the_model_once(standin_dir, tmp_path, monkeypatch):
    from s3d import loader

    handle = str(tmp_path / "model")
    os.symlink(standin_dir, handle)  # a handle of its own: no earlier load in this process
    loads = []
    load_s3d = loader.load_s3d
    monkeypatch.setattr(loader, "load_s3d", lambda *a, **k: loads.append(a) or load_s3d(*a, **k))
    first = search.embed_queries(["cut the tomato"], handle)
    again = search.embed_queries(["cut the tomato", "a dog"], handle)
    assert len(loads) == 1
    assert again.embeddings.shape == (2, 512)
    assert_features_close(again.embeddings[0], first.embeddings[0], "the same query in another batch")


def test_an_incomplete_run_is_refused_unless_forced(random_features, tmp_path, capsys):
    prefix = str(tmp_path / "partial")
    shutil.copytree(random_features["one"], prefix)
    os.remove(os.path.join(prefix, "run_summary.json"))
    queries = tmp_path / "q.txt"
    queries.write_text("cut the tomato\n")
    assert search.main(["--features", prefix, "--queries", str(queries)]) == 2
    assert "did not complete" in capsys.readouterr().err


def test_embed_text_job_writes_flagged_rows(standin_dir, standin_model, tmp_path):
    sentences = tmp_path / "s.jsonl"
    sentences.write_text('{"text_id": "t1", "text": "Cut the TOMATO"}\n{"text": "qwerty zxcv"}\n{"text": ""}\n'
                         '{"text_id": "bad"}\n{"text": "Crème brûlée, à la carte"}\n')
    prefix = str(tmp_path / "texts")
    assert embed_text.main(["--input", str(sentences), "--output_prefix", prefix, "--model", standin_dir]) == 0
    table = ds.dataset(os.path.join(prefix, "texts")).to_table()
    rows = {r["text"]: r for r in table.to_pylist()}
    assert set(rows) == {"Cut the TOMATO", "qwerty zxcv", "", "Crème brûlée, à la carte"}
    assert rows["Cut the TOMATO"]["text_id"] == "t1" and rows["Cut the TOMATO"]["known_words"] == 3
    assert not rows["Cut the TOMATO"]["no_known_words"]
    assert rows["qwerty zxcv"]["known_words"] == 0 and rows["qwerty zxcv"]["no_known_words"]
    assert rows[""]["no_known_words"]
    expected = standin_model.embed_text(["Cut the TOMATO"])[0]
    np.testing.assert_allclose(rows["Cut the TOMATO"]["text_embedding"], expected, rtol=1e-4, atol=1e-5)
    assert table.schema.metadata[METADATA_KEY]
    failures = ds.dataset(os.path.join(prefix, "text_failures")).to_table().to_pylist()
    assert [(f["text_id"], f["stage"]) for f in failures] == [("bad", "input")]


def test_embed_text_records_its_precision_and_keeps_the_text_tower_float32(standin_dir, standin_model, tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("cut the tomato\nwash the dog\n")
    prefix = str(tmp_path / "texts_bf16")
    assert embed_text.main(["--input", str(sentences), "--output_prefix", prefix, "--model", standin_dir,
                            "--precision", "bfloat16"]) == 0
    table = ds.dataset(os.path.join(prefix, "texts")).to_table()
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    assert (meta["precision"], meta["precision_requested"]) == ("float32", "bfloat16")  # the tower that ran
    summary = read_summary(prefix)
    assert (summary["precision"], summary["precision_requested"]) == ("float32", "bfloat16")
    rows = {r["text"]: r["text_embedding"] for r in table.to_pylist()}
    expected = standin_model.embed_text(["cut the tomato"])[0]
    # float32 to float32's rounding (batching changes the last bits); bfloat16 would be off by ~1e-2
    np.testing.assert_allclose(rows["cut the tomato"], expected, rtol=1e-4, atol=1e-5)


# ---- the HTML page in a real browser --------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_page_renders_its_thumbnails_in_a_headless_browser(extracted, tmp_path):
    page = str(tmp_path / "results.html")
    assert search.main(["--features", extracted, "--query", "cut the tomato", "--top_k", "3", "--html", page]) == 0
    html_text = open(page, encoding="utf-8").read()
    assert html_text.count('class="thumb"') == 3 * 4
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium where apt-get is available)")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", f"file://{page}"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
    assert 'data-images="12"' in dom
    assert 'data-rendered="12"' in dom  # every thumbnail decoded by the browser, none broken


@pytest.mark.parametrize("level", ["clip", "video"])
def test_an_index_of_real_output_answers_as_exact_search_does(extracted, tmp_path, level):
    from pipeline import index as index_job

    output = str(tmp_path / "index")
    assert index_job.main(["--features", extracted, "--output", output, "--level", level,
                           "--quantization", "f32"]) == 0
    approx, ref, page = str(tmp_path / "a.parquet"), str(tmp_path / "e.parquet"), str(tmp_path / "r.html")
    # Every rank of a small run: its shard is flat, searched exhaustively (an HNSW graph this small once
    # gave another clip at rank 5 than exact search).
    query = ["--query", "cut the tomato", "--query", "a dog", "--top_k", "10"]
    assert search.main(["--index", output, *query, "--output", approx, "--html", page]) == 0
    assert search.main(["--features", extracted, "--level", level, *query, "--output", ref]) == 0
    a, e = pq.read_table(approx).to_pylist(), pq.read_table(ref).to_pylist()
    assert len(a) == len(e) >= 2 * 3 and [r["level"] for r in a] == [level] * len(a)
    assert [{k: v for k, v in r.items() if k != "score"} for r in a] == [{k: v for k, v in r.items() if k != "score"}
                                                                        for r in e]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in e], rtol=1e-5, atol=1e-6)
    assert open(page, encoding="utf-8").read().count('class="result"') == len(a)


def test_force_searches_an_incomplete_run(standin_dir, standin_model, tmp_path):
    import csv

    embeddings = np.random.default_rng(3).normal(size=(60, 512)).astype(np.float32)
    prefix = str(tmp_path / "partial")
    rows = write_features(prefix, embeddings, standin_dir, files=2, row_group_size=16)
    os.remove(os.path.join(prefix, "run_summary.json"))  # the run never completed
    out = tmp_path / "ranking.csv"
    assert search.main(["--features", prefix, "--query", "cut the tomato", "--top_k", "5", "--force",
                        "--output", str(out)]) == 0
    expected = brute_force(embeddings, standin_model.embed_text(["cut the tomato"]), 5)[0]
    with open(out, newline="") as f:
        got = [(r["video_id"], int(r["clip_index"])) for r in csv.DictReader(f)]
    assert got == [(rows[i]["video_id"], rows[i]["clip_index"]) for i in expected]


def test_a_prefix_that_mixes_preprocessing_or_models_is_refused(tmp_path):
    embeddings = np.zeros((14, 512), np.float32)
    prefix = str(tmp_path / "mixed")
    write_features(prefix, embeddings, "m", files=1, row_group_size=100)
    for name, meta in (("other_fps", {"model": "m", "preprocessing": {"fps": 5}}),
                       ("other_model", {"model": "n", "preprocessing": {"fps": 10}})):
        table = pq.read_table(os.path.join(prefix, "clips", "clips-00000-of-00001.parquet"))
        odd = os.path.join(prefix, "clips", f"clips-{name}.parquet")
        pq.write_table(table.cast(with_run_metadata(CLIPS_SCHEMA, meta)), odd)
        with pytest.raises(RunError, match="were made differently .*one model and preprocessing together"):
            shared_metadata(level_files(prefix, "clip"))
        os.remove(odd)
    assert shared_metadata(level_files(prefix, "clip"))["model"] == "m"
