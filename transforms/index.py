"""The index job's Beam wrapping: shards built in parallel, the manifest written once every shard is done.

What a shard is and how one is planned and built is vector_index.builder; here each is one DoFn
call, so shards build side by side on as many workers as there are shards. A shard that cannot
be built (an unreadable file) is recorded in the manifest as a failure with its error, never
dropped unnoticed.
"""

from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.records import NAMESPACE
from vector_index import library
from vector_index.builder import ShardBuilder, ShardSpec
from vector_index.manifest import Manifest, write_manifest

log = logging.getLogger(__name__)


class BuildShardFn(beam.DoFn):
    """ShardSpec -> a record of the shard's files (name, rows, sizes, checksums), or of why it failed."""

    def __init__(self, index_dir: str, level: str, quantization: str, m: int, ef_construction: int, dim: int):
        self._builder = ShardBuilder(index_dir, level, quantization, m, ef_construction, dim)
        self._built = Metrics.counter(NAMESPACE, "index_shards_built")
        self._failed = Metrics.counter(NAMESPACE, "index_shards_failed")
        self._rows = Metrics.counter(NAMESPACE, "index_rows")

    def setup(self):
        library.set_threads(None)  # the graph build uses every core of the worker

    def process(self, spec: ShardSpec):
        start = time.monotonic()
        try:
            record = self._builder.build(spec)
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
