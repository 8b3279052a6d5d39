"""Beam building blocks of the index job: plan shards over the features, build them in parallel,
write the manifest once every shard is done.

A shard is a run of consecutive row groups of one extraction run's table (at most
--shard_rows rows). Each is built by one DoFn call from its row groups only, so shards
build side by side on as many workers as there are shards, and adding a run adds shards
without touching the others. A shard that cannot be built (an unreadable file) is
recorded in the manifest as a failure with its error, never dropped unnoticed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from storage.layout import EMBEDDING, LEVEL_COLUMNS
from storage.objects import copy_object
from transforms.records import NAMESPACE
from transforms.tables import open_parquet
from vector_index import library
from vector_index.manifest import (
    INDEX_SUFFIX,
    LOCATORS_SUFFIX,
    SOURCE_FILE,
    SOURCE_ROW,
    SOURCE_ROW_GROUP,
    Manifest,
    file_digest,
    shard_path,
    write_manifest,
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


class BuildShardFn(beam.DoFn):
    """ShardSpec -> a record of the shard's files (name, rows, sizes, checksums), or of why it failed."""

    def __init__(self, index_dir: str, level: str, quantization: str, m: int, ef_construction: int, dim: int):
        self._index_dir = index_dir
        self._level = level
        self._quantization = quantization
        self._m = m
        self._ef_construction = ef_construction
        self._dim = dim
        self._built = Metrics.counter(NAMESPACE, "index_shards_built")
        self._failed = Metrics.counter(NAMESPACE, "index_shards_failed")
        self._rows = Metrics.counter(NAMESPACE, "index_rows")

    def setup(self):
        library.set_threads(None)  # the graph build uses every core of the worker

    def process(self, spec: ShardSpec):
        start = time.monotonic()
        try:
            record = self._build(spec)
        except Exception as e:  # noqa: BLE001 - recorded in the manifest with its error, never lost
            self._failed.inc()
            log.warning("index shard %s of %s failed: %s: %s", spec.name, spec.features, type(e).__name__, e)
            yield {"name": spec.name, "features": spec.features, "rows": spec.rows,
                   "error": f"{type(e).__name__}: {e}"}
            return
        self._built.inc()
        self._rows.inc(record["rows"])
        log.info("index shard %s: %d rows in %.1fs", spec.name, record["rows"], time.monotonic() - start)
        yield record

    def _read(self, spec: ShardSpec, columns: list[str]):
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

    def _build(self, spec: ShardSpec) -> dict[str, Any]:
        columns = LEVEL_COLUMNS[self._level]
        index = library.new_index(self._dim, self._quantization, self._m, self._ef_construction, spec.rows)
        if library.needs_training(self._quantization):
            # An even sample of the shard, for the quantizer's per-dimension ranges.
            every = max(1, spec.rows // library.TRAIN_SAMPLE)
            sample = [self._vectors(t, p)[::every] for p, _, t in self._read(spec, [EMBEDDING])]
            library.train(index, np.concatenate(sample))
        locators, pending, said = [], [], time.monotonic()

        def add_pending():
            nonlocal said
            library.add(index, np.concatenate(pending))
            pending.clear()
            if time.monotonic() - said > PROGRESS_EVERY_SEC:
                said = time.monotonic()
                log.info("index shard %s: %d of %d rows added", spec.name, index.ntotal, spec.rows)

        for path, group, table in self._read(spec, [*columns, EMBEDDING]):
            pending.append(self._vectors(table, path))
            if sum(len(p) for p in pending) >= library.ADD_BATCH:
                add_pending()
            rows = np.arange(table.num_rows, dtype=np.int32)
            locators.append(table.select(columns).append_column(
                SOURCE_FILE, pa.array([path] * table.num_rows, pa.string()).dictionary_encode()
            ).append_column(SOURCE_ROW_GROUP, pa.array(np.full(table.num_rows, group, np.int32))
            ).append_column(SOURCE_ROW, pa.array(rows)))
        if pending:
            add_pending()
        files = {}
        with tempfile.TemporaryDirectory(prefix="s3d-shard-") as tmp:
            local = {INDEX_SUFFIX: os.path.join(tmp, "index"), LOCATORS_SUFFIX: os.path.join(tmp, "locators")}
            library.save(index, local[INDEX_SUFFIX])
            pq.write_table(pa.concat_tables(locators).combine_chunks(), local[LOCATORS_SUFFIX],
                           row_group_size=LOCATOR_ROW_GROUP)
            for suffix, path in local.items():
                size, sha = file_digest(path)
                copy_object(path, shard_path(self._index_dir, spec.name, suffix))
                files[suffix] = {"bytes": size, "sha256": sha}
        return {"name": spec.name, "features": spec.features, "rows": int(index.ntotal), "files": files}




class WriteManifestFn(beam.DoFn):
    """All shard records -> the manifest: the earlier index's runs and shards plus the new ones."""

    def __init__(self, index_dir: str, base: Manifest, runs: list[dict]):
        self._index_dir = index_dir
        self._base = base
        self._runs = runs

    def process(self, records: list[dict]):
        manifest = Manifest(**{**self._base.__dict__})
        failed = [r for r in records if "error" in r]
        built = sorted((r for r in records if "error" not in r), key=lambda r: r["name"])
        manifest.shards = [*self._base.shards, *built]
        manifest.failures = [*self._base.failures, *sorted(failed, key=lambda r: r["name"])]
        runs = []
        for run in self._runs:
            mine = [r for r in records if r["features"] == run["features"]]
            runs.append({**run, "shards": sorted(r["name"] for r in mine if "error" not in r),
                         "indexed_rows": sum(r["rows"] for r in mine if "error" not in r),
                         "complete": not any("error" in r for r in mine)})
        manifest.runs = [*self._base.runs, *runs]
        yield write_manifest(self._index_dir, manifest)


class BuildIndex(beam.PTransform):
    """Shard specs -> shards built in parallel -> the manifest (written once, after every shard)."""

    def __init__(self, index_dir: str, specs: list[ShardSpec], base: Manifest, runs: list[dict]):
        super().__init__()
        self._index_dir = index_dir
        self._specs = specs
        self._base = base
        self._runs = runs

    def expand(self, pipeline):
        b = self._base
        records = (pipeline
                   | "Shards" >> beam.Create(self._specs)
                   | "Spread" >> beam.Reshuffle()  # one shard per worker thread, not all on the first worker
                   | "BuildShard" >> beam.ParDo(BuildShardFn(self._index_dir, b.level, b.quantization, b.params["m"],
                                                             b.params["ef_construction"], b.dim)))
        return (records
                | "AllShards" >> beam.combiners.ToList()
                | "WriteManifest" >> beam.ParDo(WriteManifestFn(self._index_dir, b, self._runs)))
