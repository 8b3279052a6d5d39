"""Loads an index's shards and answers queries: each shard's top k, merged into one ranking.

Every file is checked against the manifest (size and sha256) before it is used, so a
missing, truncated or altered file is named in an IndexDamaged error instead of giving
wrong answers. Remote indexes (gs://, s3://) are copied to a local cache directory first.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from storage.layout import LEVEL_COLUMNS
from storage.objects import copy_object
from storage.paths import is_local, local_path
from vector_index import library
from vector_index.manifest import (
    INDEX_SUFFIX,
    LOCATORS_SUFFIX,
    IndexDamaged,
    IndexProblem,
    Manifest,
    file_digest,
    read_manifest,
    shard_path,
)

log = logging.getLogger(__name__)


@dataclass
class Hits:
    """Per query, the best rows first: their scores and their locator rows (the result's columns)."""

    scores: list[np.ndarray]
    rows: list[list[dict]]


class _Shard:
    """One shard, loaded: its graph, and its locators' result columns in memory (tens of bytes a row, against
    the graph's kilobyte), so a result costs a lookup and not a file read."""

    def __init__(self, name: str, index, locators: str, columns: list[str]):
        self.name = name
        self.index = index
        # One chunk: `take` on a table of many chunks concatenates them first, on every call.
        self.locators = pq.read_table(locators, columns=columns, memory_map=False).combine_chunks()

    def rows(self, ids: list[int]) -> dict[int, dict]:
        """The locator rows of `ids`."""
        return dict(zip(ids, self.locators.take(pa.array(ids, pa.int64())).to_pylist(), strict=True))


class IndexSearcher:
    """An index directory, loaded: `search(queries, k)` gives the top k of all its shards."""

    def __init__(self, index_dir: str, cache_dir: str | None = None, threads: int | None = None):
        self.index_dir = index_dir.rstrip("/")
        manifest = read_manifest(self.index_dir)
        if manifest is None:
            raise IndexDamaged(f"no index at {self.index_dir!r} (no {self.index_dir}/index.json): build one with "
                               "python -m pipeline.index, or search the runs exactly with --features")
        self.manifest: Manifest = manifest
        if not manifest.shards:
            raise IndexProblem(f"the index at {self.index_dir!r} has no shards (every shard failed to build: "
                               f"{[f['error'] for f in manifest.failures][:3]})")
        for failure in manifest.failures:
            log.warning("the index misses shard %s of %s (%s): re-run pipeline.index with that run to add it",
                        failure["name"], failure["features"], failure["error"])
        library.set_threads(threads)
        self._own_cache = None
        if not is_local(self.index_dir) and cache_dir is None:
            cache_dir = self._own_cache = tempfile.mkdtemp(prefix="s3d-index-")
        self._cache = cache_dir
        self.columns = LEVEL_COLUMNS[manifest.level]
        self.shards = [self._load(entry) for entry in manifest.shards]
        pa.default_memory_pool().release_unused()  # the locators' read buffers, kept by the allocator otherwise

    def close(self) -> None:
        if self._own_cache:
            shutil.rmtree(self._own_cache, ignore_errors=True)

    def _local_copy(self, name: str, suffix: str, expected: dict) -> str:
        """A checked local copy of one shard file (the file itself when the index is local)."""
        source = shard_path(self.index_dir, name, suffix)
        if is_local(source):
            path = local_path(source)
            if not os.path.exists(path):
                raise IndexDamaged(f"{source} is missing: rebuild the index with pipeline.index, or search "
                                   "exactly with --exact")
        else:
            path = os.path.join(self._cache, f"{name}{suffix}")
            if not os.path.exists(path) or os.path.getsize(path) != expected["bytes"]:
                if not FileSystems.exists(source):
                    raise IndexDamaged(f"{source} is missing: rebuild the index, or search exactly with --exact")
                copy_object(source, path)
        size, sha = file_digest(path)
        if (size, sha) != (expected["bytes"], expected["sha256"]):
            raise IndexDamaged(f"{source} is damaged: {size} bytes with sha256 {sha[:12]}..., the manifest says "
                               f"{expected['bytes']} bytes with {expected['sha256'][:12]}...; rebuild the index "
                               "with pipeline.index, or search exactly with --exact")
        return path

    def _load(self, entry: dict) -> _Shard:
        index_file = self._local_copy(entry["name"], INDEX_SUFFIX, entry["files"][INDEX_SUFFIX])
        locators = self._local_copy(entry["name"], LOCATORS_SUFFIX, entry["files"][LOCATORS_SUFFIX])
        try:
            index = library.load(index_file)
        except ValueError as e:
            raise IndexDamaged(f"{index_file} cannot be read ({e}); rebuild the index, or search exactly with "
                               "--exact") from e
        if index.ntotal != entry["rows"]:
            raise IndexDamaged(f"{index_file} holds {index.ntotal} vectors, the manifest says {entry['rows']}")
        try:
            shard = _Shard(entry["name"], index, locators, self.columns)
        except (OSError, ValueError) as e:
            raise IndexDamaged(f"{locators} cannot be read ({e}); rebuild the index, or search exactly with "
                               "--exact") from e
        if shard.locators.num_rows != entry["rows"]:
            raise IndexDamaged(f"{locators} has {shard.locators.num_rows} rows, the manifest says {entry['rows']}")
        return shard

    def search(self, queries: np.ndarray, k: int, ef_search: int | None = None) -> Hits:
        """The top k rows per query over every shard, best first; equal scores in shard, then row order."""
        if k < 1:
            raise IndexProblem(f"--top_k must be >= 1, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest.dim:
            raise IndexProblem(f"queries must be [Q, {self.manifest.dim}], got {list(queries.shape)}")
        ef = ef_search or self.manifest.params["ef_search"]
        scores, shard_ids, row_ids = [], [], []
        for s, shard in enumerate(self.shards):
            d, i = library.search(shard.index, queries, k, ef)
            scores.append(d)
            shard_ids.append(np.full_like(i, s))
            row_ids.append(i)
        scores, shard_ids, row_ids = (np.concatenate(a, axis=1) for a in (scores, shard_ids, row_ids))
        hits = Hits([], [])
        wanted: dict[int, set[int]] = {}
        chosen = []
        for q in range(len(queries)):
            valid = row_ids[q] >= 0
            order = np.lexsort((row_ids[q][valid], shard_ids[q][valid], -scores[q][valid]))[:k]
            picked = [(int(shard_ids[q][valid][j]), int(row_ids[q][valid][j])) for j in order]
            chosen.append(picked)
            hits.scores.append(scores[q][valid][order])
            for s, r in picked:
                wanted.setdefault(s, set()).add(r)
        fields = {s: self.shards[s].rows(sorted(rows)) for s, rows in wanted.items()}
        hits.rows = [[fields[s][r] for s, r in picked] for picked in chosen]
        return hits
