"""The approximate index (pipeline.index, search --index) against exact search, which is the reference.

The runs are clips tables of generated embeddings (videos of clips around topics, the way a
real run's are grouped); the queries come as a texts table, so no model is loaded here.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import index as index_job
from pipeline import search
from storage.runs import level_files
from synthetic.embeddings import clip_embeddings, queries_near, topics
from transforms.tables import CLIPS_SCHEMA, TEXTS_SCHEMA, with_run_metadata, write_summary
from vector_index import IndexDamaged, read_manifest
from vector_index.searcher import IndexSearcher

PREPROCESSING = {"fps": 10, "size": 224}


def write_run(prefix: str, embeddings: np.ndarray, files: int = 3, row_group: int = 100, model: str = "m",
              preprocessing: dict | None = None, tag: str = "a") -> list[dict]:
    """A completed run: a clips table of `embeddings` (20 clips a video) in `files` files, and its summary."""
    n = len(embeddings)
    rows = [{"video_id": f"{tag}{i // 20:05d}", "uri": f"/videos/{tag}{i // 20:05d}.mp4", "clip_index": i % 20,
             "start_sec": 3.2 * (i % 20), "end_sec": 3.2 * (i % 20 + 1), "num_frames": 32, "padded": False,
             "mixed_5c": None, "video_embedding": embeddings[i]} for i in range(n)]
    schema = with_run_metadata(CLIPS_SCHEMA, {"model": model, "preprocessing": preprocessing or PREPROCESSING})
    os.makedirs(os.path.join(prefix, "clips"), exist_ok=True)
    for f, chunk in enumerate(np.array_split(np.arange(n), files)):
        table = pa.Table.from_pylist([rows[i] for i in chunk], schema=schema)
        pq.write_table(table, os.path.join(prefix, "clips", f"clips-{f:05d}-of-{files:05d}.parquet"),
                       row_group_size=row_group)
    write_summary(prefix, {"status": "complete", "tag": tag})
    return rows


def write_texts(prefix: str, queries: np.ndarray, model: str = "m") -> str:
    """A texts table (as pipeline.embed_text writes) whose embeddings are `queries`."""
    rows = [{"text_id": f"t{i}", "text": f"query {i}", "known_words": 2, "no_known_words": False,
             "text_embedding": q} for i, q in enumerate(queries)]
    os.makedirs(os.path.join(prefix, "texts"), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=with_run_metadata(TEXTS_SCHEMA, {"model": model})),
                   os.path.join(prefix, "texts", "texts-00000-of-00001.parquet"))
    return prefix


def generated(videos: int, seed: int) -> np.ndarray:
    return clip_embeddings(topics(200), videos, np.random.default_rng(seed))


def build(features: str | list[str], output: str, *flags: str) -> int:
    prefixes = features if isinstance(features, str) else ",".join(features)
    return index_job.main(["--features", prefixes, "--output", output, *flags])


def keys(rows: list[dict]) -> list[tuple[str, int]]:
    return [(r["video_id"], r["clip_index"]) for r in rows]


def recall(approx, exact) -> float:
    return float(np.mean([len(set(keys(a)) & set(keys(e))) / len(e) for a, e in zip(approx, exact, strict=True)]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("index_runs")
    a, b = generated(60, 1), generated(40, 2)
    write_run(str(base / "a"), a, tag="a")
    write_run(str(base / "b"), b, files=2, tag="b")
    return {"a": str(base / "a"), "b": str(base / "b"), "a_emb": a, "b_emb": b, "base": base}


def exact(prefixes: list[str], queries: np.ndarray, k: int):
    files = [f for p in prefixes for f in level_files(p, "clip")]
    return search.search(files, queries, "clip", k)


@pytest.mark.parametrize("quantization", ["f32", "f16"])
def test_on_a_small_run_the_index_gives_the_exact_top_k(runs, tmp_path, quantization):
    output = str(tmp_path / "index")
    # 1,200 clips in shards of at most 500 rows: three shards, merged per query.
    assert build(runs["a"], output, "--quantization", quantization, "--shard_rows", "500") == 0
    manifest = read_manifest(output)
    assert len(manifest.shards) == 3 and manifest.rows == 1200 and manifest.quantization == quantization
    queries = queries_near(runs["a_emb"], 30)
    searcher = IndexSearcher(output)
    hits = searcher.search(queries, 10)
    want = exact([runs["a"]], queries, 10)
    assert recall(hits.rows, want.rows) == 1.0
    for q in range(len(queries)):
        if quantization == "f32":  # the same vectors: the same order and scores
            assert keys(hits.rows[q]) == keys(want.rows[q])
            np.testing.assert_allclose(hits.scores[q], want.scores[q], rtol=1e-5, atol=1e-6)
        else:  # float16 vectors: scores within its rounding
            np.testing.assert_allclose(np.sort(hits.scores[q]), np.sort(want.scores[q]), atol=2e-3)
    # Each result carries the row's columns and where it came from.
    first = hits.rows[0][0]
    assert set(first) == {"video_id", "uri", "clip_index", "start_sec", "end_sec"}
    assert first == want.rows[0][0]


def test_recall_at_10_on_50k_generated_clips(tmp_path):
    """A graph index (50k rows: more than a shard searched exactly) at the defaults; 1M clips: make bench."""
    import faiss

    embeddings = generated(2500, 3)
    prefix = str(tmp_path / "run")
    write_run(prefix, embeddings, files=4, row_group=8192)
    output = str(tmp_path / "index")
    assert build(prefix, output) == 0  # the defaults: f16, one shard
    queries = queries_near(embeddings, 200, seed=5)
    scores = queries @ embeddings.T
    truth = np.argpartition(-scores, 10, axis=1)[:, :10]
    want = [{f"a{i // 20:05d}/{i % 20}" for i in t} for t in truth]
    searcher = IndexSearcher(output)

    def recall_at_10(ef_search: int | None) -> tuple[float, int]:
        """Recall@10, and the distances the graph search computed (faiss's own counter)."""
        faiss.cvar.hnsw_stats.reset()
        hits = searcher.search(queries, 10, ef_search)
        found = [{r["video_id"] + "/" + str(r["clip_index"]) for r in rows} for rows in hits.rows]
        return float(np.mean([len(f & w) / 10 for f, w in zip(found, want, strict=True)])), faiss.cvar.hnsw_stats.ndis

    r, work = recall_at_10(None)  # the index's ef_search
    assert r >= 0.95, r
    # A smaller ef_search reaches the graph search: it computes far fewer distances, and finds no more.
    small, small_work = recall_at_10(10)
    assert small_work < 0.5 * work and small <= r, (small_work, work, small, r)


def test_shards_built_separately_and_merged_equal_one_index(runs, tmp_path):
    queries = np.concatenate([queries_near(runs["a_emb"], 15, seed=2), queries_near(runs["b_emb"], 15, seed=3)])
    one = str(tmp_path / "one")
    assert build([runs["a"], runs["b"]], one, "--quantization", "f32", "--shard_rows", "100000") == 0
    many = str(tmp_path / "many")
    assert build(runs["a"], many, "--quantization", "f32", "--shard_rows", "300") == 0
    assert build(runs["b"], many, "--shard_rows", "300") == 0  # f32 from the index
    assert len(read_manifest(one).shards) == 2 and len(read_manifest(many).shards) == 4 + 3
    a, b = IndexSearcher(one).search(queries, 12), IndexSearcher(many).search(queries, 12)
    assert a.rows == b.rows
    np.testing.assert_allclose(np.stack(a.scores), np.stack(b.scores), rtol=1e-6)
    want = exact([runs["a"], runs["b"]], queries, 12)
    assert [keys(r) for r in a.rows] == [keys(r) for r in want.rows]


def test_adding_a_run_finds_its_clips_keeps_the_old_ones_and_leaves_their_shards(runs, tmp_path, capsys):
    output = str(tmp_path / "index")
    assert build(runs["a"], output, "--shard_rows", "500") == 0
    shard_dir = os.path.join(output, "shards")
    before = {name: os.stat(os.path.join(shard_dir, name)).st_mtime_ns for name in os.listdir(shard_dir)}
    near_b = queries_near(runs["b_emb"], 10, seed=4)
    near_a = queries_near(runs["a_emb"], 10, seed=4)
    old = IndexSearcher(output).search(near_b, 5)
    assert all(r["video_id"].startswith("a") for rows in old.rows for r in rows)  # b is not in it yet

    assert build([runs["a"], runs["b"]], output, "--shard_rows", "500") == 0
    err = capsys.readouterr().err
    assert f"{runs['a']}: already in the index (1,200 rows), skipped" in err
    after = {name: os.stat(os.path.join(shard_dir, name)).st_mtime_ns for name in os.listdir(shard_dir)}
    assert {k: after[k] for k in before} == before  # the old shards were not touched
    assert len(after) == len(before) + 2 * 2  # b: 800 rows in two shards, two files each
    manifest = read_manifest(output)
    assert [r["features"] for r in manifest.runs] == [runs["a"], runs["b"]]

    searcher = IndexSearcher(output)
    new = searcher.search(near_b, 5)
    assert all(rows[0]["video_id"].startswith("b") for rows in new.rows)
    both = exact([runs["a"], runs["b"]], np.concatenate([near_a, near_b]), 5)
    got = searcher.search(np.concatenate([near_a, near_b]), 5)
    assert recall(got.rows, both.rows) == 1.0

    assert build([runs["a"], runs["b"]], output) == 0  # nothing new: nothing built
    assert "already holds every run given" in capsys.readouterr().err
    assert read_manifest(output).shards == manifest.shards


def test_a_mismatched_model_preprocessing_level_or_quantization_is_refused(runs, tmp_path, capsys):
    output = str(tmp_path / "index")
    assert build(runs["a"], output, "--shard_rows", "600") == 0
    other_model = str(tmp_path / "other_model")
    write_run(other_model, generated(5, 6), model="another-model", tag="o")
    other_prep = str(tmp_path / "other_prep")
    write_run(other_prep, generated(5, 7), preprocessing={"fps": 5, "size": 224}, tag="p")
    capsys.readouterr()
    assert build(other_model, output) == 2
    err = capsys.readouterr().err
    assert "'another-model'" in err and "not comparable" in err
    assert build(other_prep, output) == 2
    assert '"fps": 5' in capsys.readouterr().err
    assert build([runs["a"], other_model], str(tmp_path / "new")) == 2  # two models in one new index
    assert "one index holds embeddings of one model" in capsys.readouterr().err
    assert build(runs["b"], output, "--quantization", "i8") == 2
    assert "--quantization i8 but the index" in capsys.readouterr().err
    assert len(read_manifest(output).runs) == 1  # nothing was added

    texts = write_texts(str(tmp_path / "texts"), queries_near(runs["a_emb"], 2))
    other_texts = write_texts(str(tmp_path / "other_texts"), queries_near(runs["a_emb"], 2), model="another-model")
    assert search.main(["--index", output, "--texts", other_texts]) == 2
    assert "not comparable" in capsys.readouterr().err
    assert search.main(["--index", output, "--query", "a dog", "--model", "another-model"]) == 2
    assert "not comparable" in capsys.readouterr().err
    assert search.main(["--index", output, "--texts", texts, "--level", "video"]) == 2
    assert "the index at" in capsys.readouterr().err
    assert search.main(["--index", output, "--features", runs["a"], "--texts", texts]) == 2
    assert search.main(["--features", runs["a"], "--texts", texts, "--exact"]) == 2


def test_search_index_writes_the_same_outputs_as_exact_search(runs, tmp_path, capsys):
    output = str(tmp_path / "index")
    assert build([runs["a"], runs["b"]], output, "--quantization", "f32") == 0
    texts = write_texts(str(tmp_path / "texts"), queries_near(runs["b_emb"], 3))
    approx, ref = str(tmp_path / "approx.parquet"), str(tmp_path / "exact.parquet")
    assert search.main(["--index", output, "--texts", texts, "--top_k", "7", "--output", approx]) == 0
    printed = capsys.readouterr().out
    assert "'query 0'" in printed and "/videos/b" in printed
    assert search.main(["--features", f"{runs['a']},{runs['b']}", "--texts", texts, "--top_k", "7",
                        "--output", ref]) == 0
    a, b = pq.read_table(approx).to_pylist(), pq.read_table(ref).to_pylist()
    assert len(a) == 21 and [{k: v for k, v in r.items() if k != "score"} for r in a] == \
        [{k: v for k, v in r.items() if k != "score"} for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=1e-5)
    # --exact searches the runs the index holds, the same way.
    again = str(tmp_path / "again.parquet")
    assert search.main(["--index", output, "--exact", "--texts", texts, "--top_k", "7", "--output", again]) == 0
    assert pq.read_table(again).to_pylist() == b


def _corrupt(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    open(path, "wb").write(bytes(data))


def _corrupt_page(path: str, row_group: int) -> None:
    """Overwrites the header of a row group's first embedding page; the footer stays readable."""
    meta = pq.ParquetFile(path).metadata
    column = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.startswith("video_embedding"))
    offset = meta.row_group(row_group).column(column).data_page_offset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 48)


@pytest.mark.parametrize("damage", ["missing shard", "altered shard", "truncated locators", "bad manifest",
                                    "no manifest"])
def test_a_missing_or_corrupt_index_file_is_named_and_exact_search_still_works(runs, tmp_path, capsys, damage):
    output = str(tmp_path / "index")
    assert build(runs["a"], output, "--shard_rows", "500") == 0
    texts = write_texts(str(tmp_path / "texts"), queries_near(runs["a_emb"], 2))
    shard = read_manifest(output).shards[1]["name"]
    target = {
        "missing shard": os.path.join(output, "shards", f"{shard}.faiss"),
        "altered shard": os.path.join(output, "shards", f"{shard}.faiss"),
        "truncated locators": os.path.join(output, "shards", f"{shard}.locators.parquet"),
        "bad manifest": os.path.join(output, "index.json"),
        "no manifest": os.path.join(output, "index.json"),
    }[damage]
    if damage in ("missing shard", "no manifest"):
        os.remove(target)
    elif damage == "truncated locators":
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
    elif damage == "bad manifest":
        with open(target, "w") as f:
            f.write('{"format": 1, "level": "clip", "runs": [')
    else:
        _corrupt(target)
    capsys.readouterr()
    assert search.main(["--index", output, "--texts", texts]) == 2
    err = capsys.readouterr().err
    named = target if damage != "no manifest" else output
    assert named in err, err
    assert {"missing shard": "is missing", "altered shard": "is damaged", "truncated locators": "is damaged",
            "bad manifest": "cannot be read", "no manifest": "no index at"}[damage] in err
    with pytest.raises(IndexDamaged):
        IndexSearcher(output)
    # Exact search still answers: over the index's runs (--exact) while its manifest is readable, else --features.
    if damage in ("missing shard", "altered shard", "truncated locators"):
        assert "--exact" in err
        assert search.main(["--index", output, "--exact", "--texts", texts]) == 0
    else:
        assert "--features" in err
        assert search.main(["--features", runs["a"], "--texts", texts]) == 0
    assert "'query 0'" in capsys.readouterr().out


def test_a_shard_that_cannot_be_built_is_recorded_and_built_again_on_the_next_run(runs, tmp_path, capsys):
    prefix = str(tmp_path / "run")
    shutil.copytree(runs["a"], prefix)
    victim = sorted(os.listdir(os.path.join(prefix, "clips")))[1]
    good = os.path.join(tmp_path, "good.parquet")
    shutil.copy(os.path.join(prefix, "clips", victim), good)
    _corrupt_page(os.path.join(prefix, "clips", victim), 1)  # the footer is intact: the damage shows when read
    output = str(tmp_path / "index")
    assert build(prefix, output, "--shard_rows", "200") == 1
    err = capsys.readouterr().err
    assert "failed" in err and victim in err
    manifest = read_manifest(output)
    assert manifest.failures and all(f["features"] == prefix for f in manifest.failures)
    run = manifest.runs[0]
    assert not run["complete"] and run["indexed_rows"] + sum(f["rows"] for f in manifest.failures) == 1200
    assert IndexSearcher(output).manifest.rows == run["indexed_rows"]  # what was built is searchable

    shutil.copy(good, os.path.join(prefix, "clips", victim))  # repaired
    assert build(prefix, output, "--shard_rows", "200") == 0
    assert "building it again" in capsys.readouterr().err
    manifest = read_manifest(output)
    assert not manifest.failures and manifest.runs[0]["complete"] and manifest.rows == 1200
    # The first attempt's shards of that run were replaced, and their files deleted.
    assert sorted(os.listdir(os.path.join(output, "shards"))) == sorted(
        f"{s['name']}{suffix}" for s in manifest.shards for suffix in (".faiss", ".locators.parquet"))
    assert not set(run["shards"]) & {s["name"] for s in manifest.shards}


def test_bad_flags_and_inputs_are_named(runs, tmp_path, capsys):
    output = str(tmp_path / "index")
    assert index_job.main(["--output", output]) == 2
    assert "--features is required" in capsys.readouterr().err
    assert build(runs["a"], output, "--shard_rows", "0") == 2
    assert "--shard_rows must be >= 1, got 0" in capsys.readouterr().err
    assert build(str(tmp_path / "nothing"), output) == 2
    assert "did not complete" in capsys.readouterr().err
    assert not os.path.exists(output)
    with pytest.raises(SystemExit) as e:
        index_job.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--quantization {f32,f16,i8}" in out and "--shard_rows" in out


def test_video_level_index(runs, tmp_path):
    prefix = str(tmp_path / "run")
    write_run(prefix, runs["a_emb"], tag="a")
    videos = runs["a_emb"].reshape(-1, 20, 512).mean(axis=1)
    os.makedirs(os.path.join(prefix, "videos"))
    from transforms.tables import VIDEOS_SCHEMA

    rows = [{"video_id": f"a{i:05d}", "uri": f"/videos/a{i:05d}.mp4", "duration_sec": 64.0, "num_clips": 20,
             "video_embedding": v} for i, v in enumerate(videos)]
    meta = {"model": "m", "preprocessing": PREPROCESSING}
    pq.write_table(pa.Table.from_pylist(rows, schema=with_run_metadata(VIDEOS_SCHEMA, meta)),
                   os.path.join(prefix, "videos", "videos-00000-of-00001.parquet"))
    output = str(tmp_path / "index")
    assert build(prefix, output, "--level", "video") == 0
    manifest = read_manifest(output)
    assert manifest.level == "video" and manifest.rows == 60
    queries = videos[:5] + 0.01
    hits = IndexSearcher(output).search(queries, 3)
    assert [r[0]["video_id"] for r in hits.rows] == [f"a{i:05d}" for i in range(5)]
    assert set(hits.rows[0][0]) == {"video_id", "uri", "duration_sec", "num_clips"}
    with open(os.path.join(output, "index.json")) as f:
        assert json.load(f)["level"] == "video"


def _upload_tree(store, local_dir: str, uri: str) -> str:
    """Every file under `local_dir`, uploaded under `uri` with the same relative paths."""
    for folder, _, names in os.walk(local_dir):
        for name in names:
            path = os.path.join(folder, name)
            store.upload(path, f"{uri}/{os.path.relpath(path, local_dir)}")
    return uri


def _store_files(uri: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for m in FileSystems.match([f"{uri}/**"])[0].metadata_list)


def test_runs_and_index_on_an_object_store(runs, gcs_store, tmp_path, capsys):
    """The index's object-store paths (uploads, downloads to a cache, the checksum check) on the GCS emulator."""
    from apache_beam.io.filesystems import FileSystems

    root = gcs_store.root("index")
    features, output = _upload_tree(gcs_store, runs["a"], f"{root}/a"), f"{root}/index"
    assert build(features, output, "--shard_rows", "500", *gcs_store.beam_args) == 0
    shards = [p for p in _store_files(output) if "/shards/" in p]
    assert len(shards) == 3 * 2  # uploaded through FileSystems
    manifest = read_manifest(output)
    assert manifest.runs[0]["features"] == features and manifest.rows == 1200
    texts = write_texts(str(tmp_path / "texts"), queries_near(runs["a_emb"], 3))
    approx, ref = str(tmp_path / "a.parquet"), str(tmp_path / "e.parquet")
    assert search.main(["--index", output, "--texts", texts, "--output", approx]) == 0
    assert search.main(["--features", runs["a"], "--texts", texts, "--output", ref]) == 0
    assert recall([[r for r in pq.read_table(approx).to_pylist() if r["query_id"] == q] for q in ("t0", "t1", "t2")],
                  [[r for r in pq.read_table(ref).to_pylist() if r["query_id"] == q] for q in ("t0", "t1", "t2")]) == 1.0
    cache = tmp_path / "cache"
    cache.mkdir()
    searcher = IndexSearcher(output, cache_dir=str(cache))  # shard files are downloaded, then checked
    assert len(os.listdir(cache)) == 3 * 2 and searcher.search(queries_near(runs["a_emb"], 1), 3).rows[0]
    damaged = f"{output}/shards/{manifest.shards[0]['name']}.faiss"
    local_copy = str(tmp_path / "damaged.faiss")
    with FileSystems.open(damaged) as src, open(local_copy, "wb") as dst:
        dst.write(src.read())
    _corrupt(local_copy)
    gcs_store.upload(local_copy, damaged)
    with pytest.raises(IndexDamaged, match="is damaged"):
        IndexSearcher(output)  # a fresh download of the altered file
    capsys.readouterr()
    assert search.main(["--index", output, "--exact", "--texts", texts]) == 0  # the runs, read from the store


def test_a_small_shard_gives_the_exact_top_k(tmp_path):
    """HNSW with inner product misses nodes on tiny graphs; a shard of at most EXACT_SHARD_ROWS rows is flat
    and searched exhaustively, so every rank equals exact search's."""
    embeddings = np.random.default_rng(11).normal(size=(60, 512)).astype(np.float32)
    embeddings *= np.random.default_rng(12).uniform(0.2, 3.0, size=(60, 1)).astype(np.float32)  # unequal norms
    prefix = str(tmp_path / "run")
    write_run(prefix, embeddings, files=2, row_group=16)
    output = str(tmp_path / "index")
    assert build(prefix, output, "--quantization", "f32") == 0
    queries = np.random.default_rng(13).normal(size=(100, 512)).astype(np.float32)
    truth = np.argsort(-(queries @ embeddings.T), axis=1, kind="stable")[:, :10]
    searcher = IndexSearcher(output)
    import faiss

    assert not isinstance(searcher.shards[0].index, faiss.IndexHNSW)  # flat: every row scored
    hits = searcher.search(queries, 10)
    found = [[20 * int(r["video_id"][1:]) + r["clip_index"] for r in rows] for rows in hits.rows]
    assert found == truth.tolist()
