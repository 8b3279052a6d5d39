"""storage.runs: what a run is, and when two runs' features may be used together (one definition for all readers)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.runs import (
    RunError,
    check_complete,
    comparable,
    done_identity,
    interchangeable,
    shared_metadata,
    split_list,
    split_prefixes,
)
from transforms.incremental import matching_table_files
from transforms.tables import VIDEOS_SCHEMA, with_run_metadata, write_summary

F32 = {"model": "m", "preprocessing": {"fps": 10, "size": 224}, "precision": "float32"}
BF16 = {**F32, "precision": "bfloat16"}


def test_comparable_is_model_and_preprocessing_and_interchangeable_adds_precision():
    reordered = {"model": "m", "preprocessing": {"size": 224, "fps": 10}}  # key order does not matter
    assert comparable(F32) == comparable(BF16) == comparable(reordered)
    assert interchangeable(F32) != interchangeable(BF16)
    assert interchangeable(reordered) == interchangeable(F32)  # files from before --precision: float32
    assert comparable({**F32, "model": "n"}) != comparable(F32)
    assert comparable({**F32, "preprocessing": {"fps": 5, "size": 224}}) != comparable(F32)


def test_a_run_with_captions_is_done_only_by_runs_with_the_same_captions_settings():
    narrated = {**F32, "captions": {"source": "column", "align_window_sec": 5.0}}
    other = {**F32, "captions": {"source": "column", "align_window_sec": 2.0}}
    assert done_identity(F32, F32) == done_identity(narrated, F32)  # a plain run may reuse a captioned one's videos
    assert done_identity(F32, narrated) != done_identity(narrated, narrated)  # ... not the other way round
    assert done_identity(other, narrated) != done_identity(narrated, narrated)
    assert done_identity(BF16, narrated) != done_identity({**narrated, "precision": "bfloat16"}, narrated)
    assert done_identity(F32, F32) == interchangeable(F32)  # without captions: interchangeable, as before


def _run(prefix, metadata: dict, complete: bool = True) -> str:
    path = f"{prefix}/videos/videos-00000-of-00001.parquet"
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist([], schema=VIDEOS_SCHEMA).cast(with_run_metadata(VIDEOS_SCHEMA, metadata)),
                   path)
    if complete:
        write_summary(str(prefix), {"status": "complete"})
    return path


def test_search_and_the_index_take_runs_of_two_precisions_and_skip_done_does_not(tmp_path):
    f32, bf16 = _run(tmp_path / "f32", F32), _run(tmp_path / "bf16", BF16)
    assert shared_metadata([f32, bf16])["model"] == "m"  # one space: ranked together
    other = _run(tmp_path / "other", {**F32, "model": "n"})
    with pytest.raises(RunError, match="model 'n', this run's 'm'"):
        shared_metadata([f32, other])
    # --skip_done: only the float32 run's videos count as done for a float32 run.
    assert matching_table_files([str(tmp_path / "f32"), str(tmp_path / "bf16")], "videos", F32) == [f32]


def test_an_incomplete_run_is_refused_unless_forced(tmp_path):
    _run(tmp_path / "half", F32, complete=False)
    with pytest.raises(RunError, match="did not complete"):
        check_complete(str(tmp_path / "half"))
    check_complete(str(tmp_path / "half"), force=True)


def test_comma_lists():
    assert split_list(" open, decode ,,") == ["open", "decode"] and split_list(None) == []
    assert split_prefixes("gs://b/a/, gs://b/b,gs://b/a") == ["gs://b/a", "gs://b/b"]
    with pytest.raises(RunError, match="names no run"):
        split_prefixes(" , ")


def test_the_summary_counts_rows_from_the_final_tables_not_from_what_the_finalize_said(tmp_path):
    """A retried finalize skips the shards it renamed the first time and emits fewer file names: the summary
    must still count every final file (it lists the tables) and never a temp file."""
    import json
    import os

    from storage.layout import table_prefix
    from transforms.tables import FAILURES_SCHEMA, WriteTables

    prefix = str(tmp_path / "run")
    for shard, count in enumerate((3, 4)):
        rows = [{"video_id": f"v{shard}{i}", "uri": "u", "segment_start_sec": None, "segment_end_sec": None,
                 "stage": "open", "error_type": "OpenError", "message": "m", "transient": False, "clips_kept": 0}
                for i in range(count)]
        path = f"{table_prefix(prefix, 'failures')}-{shard:05d}-of-00002.parquet"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=FAILURES_SCHEMA), path)
    temp = tmp_path / "run" / "failures" / "beam-temp-failures-1" / "leftover.parquet"
    temp.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=FAILURES_SCHEMA), str(temp))
    writer = WriteTables(prefix, {"job": "extract"}, {"videos_failed": "failures"})
    only_the_second = [("failures", f"{table_prefix(prefix, 'failures')}-00001-of-00002.parquet")]
    summary = json.loads(open(writer._write_summary(only_the_second, ["failures"])).read())
    assert summary["rows"] == {"failures": 7} and summary["counts"] == {"videos_failed": 7}


# ---- whole objects (storage.objects.write_object, copy_object) ------------------------------------


def test_a_whole_object_replaces_the_old_one_at_once_or_not_at_all(tmp_path, monkeypatch, gcs_store):
    from storage import objects
    from storage.objects import copy_object, open_object, write_object

    target = tmp_path / "d" / "summary.json"
    write_object(str(target), b"first")
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * (3 << 20))

    def broken_copy(src, dst, chunk):  # the copy dies half way (a disk full, a reset connection)
        dst.write(src.read(1 << 20))
        raise OSError("no space left on device")

    monkeypatch.setattr(objects.shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="no space"):
        copy_object(str(source), str(target))
    assert target.read_bytes() == b"first" and os.listdir(target.parent) == ["summary.json"]  # no .part left
    monkeypatch.undo()
    copy_object(str(source), str(target))
    assert target.read_bytes() == source.read_bytes()
    # On a store: written and copied whole, both ways.
    remote = gcs_store.root("whole") + "/summary.json"
    write_object(remote, b"on the store")
    with open_object(remote) as f:
        assert f.read() == b"on the store"
    copy_object(remote, str(tmp_path / "back.json"))
    assert (tmp_path / "back.json").read_bytes() == b"on the store"
