"""The index job: an approximate nearest-neighbour index over the video embeddings of extraction runs.

    python -m pipeline.index --features out/run1[,out/run2] --output out/index
                             [--level clip|video] [--quantization f32|f16|i8] [--shard_rows 1000000]

Each run's clips (or videos) table is cut into shards of consecutive row groups, and the
shards are built side by side as a Beam job (locally, or on Dataflow like the extraction).
Each vector keeps a locator to its row, so results carry uri, start_sec and end_sec. The
index records the runs, model and preprocessing it covers; running the job again with
another run adds that run's shards and leaves the others as they are. A run made with
another model or preprocessing is refused. Query it with `pipeline.search --index`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

from pipeline.console import configure_logging
from pipeline.options import IOOptions
from pipeline.runner import check_worker_packaging, dry_run, parse_job_args, run_graph
from s3d.architecture import EMBEDDING_DIM
from storage.layout import LEVEL_TABLE, summary_path
from storage.objects import open_object
from storage.paths import is_local
from storage.runs import check_complete, comparable, differences, level_files, shared_metadata, split_prefixes
from transforms.index import BuildIndex
from transforms.tables import utc_now
from vector_index import IndexProblem, Manifest, library, read_manifest
from vector_index.builder import ShardSpec, plan_shards
from vector_index.manifest import INDEX_SUFFIX, LOCATORS_SUFFIX, QUANTIZATIONS, manifest_path, shard_path

DEFAULT_SHARD_ROWS = 1_000_000

log = logging.getLogger(__name__)
DEFAULT_LEVEL = "clip"
DEFAULT_QUANTIZATION = "f16"


class IndexOptions(PipelineOptions):
    """`python -m pipeline.index`: extraction runs -> an approximate nearest-neighbour index."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("index")
        group.add_argument("--features", help="output prefix(es) of completed pipeline.extract runs, comma-separated")
        group.add_argument("--output", help="the index directory (local, gs://, s3://); an index already there is "
                           "extended with the runs it does not hold yet")
        group.add_argument("--level", choices=sorted(LEVEL_TABLE), default=None,
                           help=f"index clips, or whole videos by their mean embedding (default: the existing "
                           f"index's, else {DEFAULT_LEVEL})")
        group.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                           help="how vectors are stored: f32 (4 bytes a dimension), f16 (2; scores within about "
                           "1e-3), i8 (1; per-dimension 8-bit codes, lower recall) (default: the existing index's, "
                           f"else {DEFAULT_QUANTIZATION})")
        group.add_argument("--shard_rows", type=int, default=DEFAULT_SHARD_ROWS,
                           help="rows per shard at most: shards build in parallel and a query visits each "
                           f"(default: {DEFAULT_SHARD_ROWS:,})")
        group.add_argument("--hnsw_m", type=int, default=library.DEFAULT_M,
                           help=f"graph links per vector (default: {library.DEFAULT_M}); more: higher recall, "
                           "more memory. This and the two below are set when an index is created; an index being "
                           "extended keeps its own")
        group.add_argument("--ef_construction", type=int, default=library.DEFAULT_EF_CONSTRUCTION,
                           help=f"candidates kept while building (default: {library.DEFAULT_EF_CONSTRUCTION})")
        group.add_argument("--ef_search", type=int, default=library.DEFAULT_EF_SEARCH,
                           help="candidates kept per query, recorded as the index's default for search "
                           f"(default: {library.DEFAULT_EF_SEARCH}; search --ef_search overrides it)")
        group.add_argument("--force", action="store_true",
                           help="index a run that has no run summary (incomplete) all the same")

    def validate_index(self) -> None:
        if not self.features:
            raise ValueError("--features is required: the output prefix of a completed pipeline.extract run")
        if not self.output:
            raise ValueError("--output is required: the index directory")
        for flag in ("shard_rows", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, flag)}")

    def prefixes(self) -> list[str]:
        """The runs, once each; local ones as absolute paths, so `search --exact` finds them from anywhere."""
        return list(dict.fromkeys(os.path.abspath(p) if is_local(p) else p for p in split_prefixes(self.features)))


def summary_digest(prefix: str) -> str | None:
    path = summary_path(prefix)
    if not FileSystems.exists(path):
        return None
    with open_object(path) as f:
        return hashlib.sha256(f.read()).hexdigest()


def base_manifest(opts: IndexOptions, existing: Manifest | None, model: str | None, preprocessing) -> Manifest:
    """The index as it stands (checked against the flags and the features), or a new empty one."""
    if existing is None:
        return Manifest(
            level=opts.level or DEFAULT_LEVEL, quantization=opts.quantization or DEFAULT_QUANTIZATION,
            model=model, preprocessing=preprocessing, dim=EMBEDDING_DIM,
            params={"m": opts.hnsw_m, "ef_construction": opts.ef_construction, "ef_search": opts.ef_search},
            library=library.library_version(),
        )
    for flag in ("level", "quantization"):
        given, held = getattr(opts, flag), getattr(existing, flag)
        if given and given != held:
            raise IndexProblem(f"--{flag} {given} but the index at {opts.output!r} is {flag} {held}: use its "
                               f"{flag}, or another --output for a new index")
    existing.check_same(model, preprocessing, f"--features {opts.features!r}")
    return existing


@dataclass
class Plan:
    base: Manifest  # the index as it stands, less the runs built again
    runs: list[dict]  # the runs to add
    specs: list[ShardSpec]
    messages: list[str]
    replaced: list[str]  # shards of runs built again: deleted once the new manifest is written


def plan(opts: IndexOptions, build_id: str) -> Plan:
    """What to build: the shards of the runs the index does not hold (or holds with failed shards)."""
    existing = read_manifest(opts.output)
    level = opts.level or (existing.level if existing else DEFAULT_LEVEL)
    runs, messages, metadata = [], [], None
    for prefix in opts.prefixes():
        check_complete(prefix, opts.force)
        files = level_files(prefix, level)
        meta = shared_metadata(files)
        if metadata is None:
            metadata = (prefix, meta)
        elif comparable(meta) != comparable(metadata[1]):
            raise IndexProblem(f"--features {prefix!r} and {metadata[0]!r} were made differently "
                               f"({differences(comparable(meta), comparable(metadata[1]))}): one index holds "
                               "embeddings of one model and preprocessing")
        runs.append((prefix, files, summary_digest(prefix)))
    base = base_manifest(opts, existing, metadata[1].get("model"), metadata[1].get("preprocessing"))
    new_runs, specs, replaced = [], [], []
    for prefix, files, digest in runs:
        held = base.run_for(prefix)
        if held is not None:
            if held["summary_sha256"] != digest:
                raise IndexProblem(f"--features {prefix!r} changed since it was indexed (its run summary differs): "
                                   "that run was made again; build a new index for it")
            if held["complete"]:
                messages.append(f"{prefix}: already in the index ({held['indexed_rows']:,} rows), skipped")
                continue
            messages.append(f"{prefix}: its earlier indexing had failed shards; building it again")
            replaced += [s["name"] for s in base.shards if s["features"] == prefix]
            base.shards = [s for s in base.shards if s["features"] != prefix]
            base.failures = [s for s in base.failures if s["features"] != prefix]
            base.runs = [r for r in base.runs if r["features"] != prefix]
        run_number = len(base.runs) + len(new_runs)
        shards = plan_shards(prefix, files, opts.shard_rows, f"{build_id}-run{run_number:03d}")
        specs += shards
        new_runs.append({"features": prefix, "summary_sha256": digest, "files": len(files),
                         "rows": sum(s.rows for s in shards), "indexed_at": utc_now()})
    return Plan(base, new_runs, specs, messages, replaced)


def delete_shards(index_dir: str, names: list[str]) -> None:
    """Deletes the files of shards the manifest no longer lists (best effort: they are unused either way)."""
    paths = [shard_path(index_dir, name, suffix) for name in names for suffix in (INDEX_SUFFIX, LOCATORS_SUFFIX)]
    for path in paths:
        try:
            FileSystems.delete([path])
        except Exception as e:  # noqa: BLE001 - an unused file left behind is not worth failing the job
            log.warning("could not delete the replaced shard file %s: %s", path, e)


def main(argv: list[str] | None = None) -> int:
    options = parse_job_args(sys.argv[1:] if argv is None else argv, "python -m pipeline.index",
                             __doc__.splitlines()[0], None, [(IndexOptions, None)])
    opts = options.view_as(IndexOptions)
    configure_logging(options.view_as(IOOptions).log_level)
    watch = time.monotonic()
    build_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"  # unique per build
    try:
        opts.validate_index()
        check_worker_packaging(options)
        todo = plan(opts, build_id)
    except (ValueError, OSError) as e:  # SearchError and IndexProblem are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in todo.messages:
        print(line, file=sys.stderr)
    if not todo.specs:
        print(f"nothing to add: the index at {opts.output} already holds every run given", file=sys.stderr)
        return 0
    def build(p, _progress):
        return p | "BuildIndex" >> BuildIndex(opts.output, todo.specs, todo.base, todo.runs)

    if options.view_as(TestOptions).dry_run:
        dry_run(options, build, {})
        print("dry run: the job was built and not run; nothing was written", file=sys.stderr)
        return 0
    result, _ = run_graph(options, build, lease=None)
    if result is None:
        print(f"submitted; the job writes {manifest_path(opts.output)} when every shard is built", file=sys.stderr)
        return 0
    manifest = read_manifest(opts.output)
    delete_shards(opts.output, todo.replaced)
    added = {run["features"] for run in todo.runs}
    new = [r for r in manifest.runs if r["features"] in added]
    failed = [f for f in manifest.failures if f["features"] in added]
    index_bytes = sum(s["files"][INDEX_SUFFIX]["bytes"] for s in manifest.shards)
    print(f"\nS3D index: {sum(r['indexed_rows'] for r in new):,} {manifest.level}s of {len(new)} run(s) added in "
          f"{len(todo.specs) - len(failed)} shard(s), {len(failed)} failed, in {time.monotonic() - watch:.1f}s\n"
          f"  index     {opts.output} ({manifest.rows:,} rows in {len(manifest.shards)} shards of {len(manifest.runs)} "
          f"runs; {manifest.quantization}, {index_bytes / max(manifest.rows, 1):,.0f} bytes a row)\n"
          f"  manifest  {manifest_path(opts.output)}")
    for f in failed:
        print(f"  failed    {f['name']} of {f['features']}: {f['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
