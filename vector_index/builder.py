"""Building the index's shards, without Beam: plan shards over a run's features, build one from its row groups.

A shard is a run of consecutive row groups of one extraction run's table (at most --shard_rows
rows), built from those row groups only, so shards build side by side and adding a run adds shards
without touching the others. The Beam wrapping (one shard per worker thread, the manifest once
every shard is done) is transforms.index; the searcher that reads shards is vector_index.searcher.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.layout import EMBEDDING, LEVEL_COLUMNS
from storage.objects import copy_object, open_parquet
from vector_index import library
from vector_index.manifest import (
    INDEX_SUFFIX,
    LOCATORS_SUFFIX,
    SOURCE_FILE,
    SOURCE_ROW,
    SOURCE_ROW_GROUP,
    file_digest,
    shard_path,
)

LOCATOR_ROW_GROUP = 65_536  # rows per row group of a locators file (search reads them whole)
PROGRESS_EVERY_SEC = 30  # a shard of a million rows takes minutes: say how far it is

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSpec:
    name: str
    features: str  # the run's output prefix
    parts: tuple[tuple[str, int, int], ...]  # (features file, row group, rows), in file order

    @property
    def rows(self) -> int:
        return sum(n for _, _, n in self.parts)


def plan_shards(features: str, files: list[str], shard_rows: int, name_prefix: str) -> list[ShardSpec]:
    """Consecutive row groups of `files` in shards of at most `shard_rows` rows (a larger row group is
    a shard of its own). Reads the files' footers only."""
    if shard_rows < 1:
        raise ValueError(f"--shard_rows must be >= 1, got {shard_rows}")
    shards, parts, rows = [], [], 0
    for path in files:
        footer = open_parquet(path).metadata
        for group in range(footer.num_row_groups):
            n = footer.row_group(group).num_rows
            if parts and rows + n > shard_rows:
                shards.append(ShardSpec(f"{name_prefix}-{len(shards):05d}", features, tuple(parts)))
                parts, rows = [], 0
            if n:
                parts.append((path, group, n))
                rows += n
    if parts:
        shards.append(ShardSpec(f"{name_prefix}-{len(shards):05d}", features, tuple(parts)))
    return shards


class ShardBuilder:
    """Builds shards of one index: the library's index of a shard's vectors and the locators of its rows."""

    def __init__(self, index_dir: str, level: str, quantization: str, m: int, ef_construction: int, dim: int):
        self._index_dir = index_dir
        self._level = level
        self._quantization = quantization
        self._m = m
        self._ef_construction = ef_construction
        self._dim = dim

    def build(self, spec: ShardSpec) -> dict[str, Any]:
        """Builds and writes a shard; returns its record for the manifest (name, rows, files' sizes and sums)."""
        columns = LEVEL_COLUMNS[self._level]
        index = library.new_index(self._dim, self._quantization, self._m, self._ef_construction, spec.rows)
        if library.needs_training(self._quantization):
            # An even sample of the shard, for the quantizer's per-dimension ranges.
            every = max(1, spec.rows // library.TRAIN_SAMPLE)
            sample = [self._vectors(t, p)[::every] for p, _, t in self._read(spec, [EMBEDDING])]
            library.train(index, np.concatenate(sample))
        adder = _Adder(index, spec)
        locators = []
        for path, group, table in self._read(spec, [*columns, EMBEDDING]):
            adder.add(self._vectors(table, path))
            rows = np.arange(table.num_rows, dtype=np.int32)
            locators.append(table.select(columns).append_column(
                SOURCE_FILE, pa.array([path] * table.num_rows, pa.string()).dictionary_encode()
            ).append_column(SOURCE_ROW_GROUP, pa.array(np.full(table.num_rows, group, np.int32))
            ).append_column(SOURCE_ROW, pa.array(rows)))
        adder.flush()
        return {"name": spec.name, "features": spec.features, "rows": int(index.ntotal),
                "files": self._write(spec, index, pa.concat_tables(locators).combine_chunks())}

    def _write(self, spec: ShardSpec, index, locators: pa.Table) -> dict[str, dict]:
        """The shard's two files, written locally, then copied whole to the index's directory."""
        files = {}
        with tempfile.TemporaryDirectory(prefix="s3d-shard-") as tmp:
            local = {INDEX_SUFFIX: os.path.join(tmp, "index"), LOCATORS_SUFFIX: os.path.join(tmp, "locators")}
            library.save(index, local[INDEX_SUFFIX])
            pq.write_table(locators, local[LOCATORS_SUFFIX], row_group_size=LOCATOR_ROW_GROUP)
            for suffix, path in local.items():
                size, sha = file_digest(path)
                copy_object(path, shard_path(self._index_dir, spec.name, suffix))
                files[suffix] = {"bytes": size, "sha256": sha}
        return files

    @staticmethod
    def _read(spec: ShardSpec, columns: list[str]) -> Iterator[tuple[str, int, pa.Table]]:
        """(path, row group, table) per part, in order. Every row of a clips or videos table has an embedding."""
        files: dict[str, pq.ParquetFile] = {}
        for path, group, _ in spec.parts:
            try:
                pf = files.get(path) or files.setdefault(path, open_parquet(path))
                yield path, group, pf.read_row_group(group, columns=columns)
            except (OSError, ValueError) as e:  # pyarrow's errors do not name the file
                raise type(e)(f"{path}, row group {group}: {e}") from e

    def _vectors(self, table: pa.Table, path: str) -> np.ndarray:
        column = table.column(EMBEDDING).combine_chunks()
        vectors = column.flatten().to_numpy().reshape(len(column), -1)
        if vectors.shape[1] != self._dim:
            raise ValueError(f"{path}: {EMBEDDING} has {vectors.shape[1]} dimensions, the index {self._dim}")
        return vectors


class _Adder:
    """Adds vectors to an index in batches of library.ADD_BATCH, saying how far a long shard is."""

    def __init__(self, index, spec: ShardSpec):
        self._index, self._spec = index, spec
        self._pending: list[np.ndarray] = []
        self._said = time.monotonic()

    def add(self, vectors: np.ndarray) -> None:
        self._pending.append(vectors)
        if sum(len(p) for p in self._pending) >= library.ADD_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        library.add(self._index, np.concatenate(self._pending))
        self._pending.clear()
        if time.monotonic() - self._said > PROGRESS_EVERY_SEC:
            self._said = time.monotonic()
            log.info("index shard %s: %d of %d rows added", self._spec.name, self._index.ntotal, self._spec.rows)
