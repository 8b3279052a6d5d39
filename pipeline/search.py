"""Text-to-video search over extraction runs: rank clips or videos by dot product with a sentence.

    python -m pipeline.search --features out/run1[,out/run2] --query "cut the tomato" [--level clip|video]
                              [--top_k 10] [--output ranking.parquet|.csv] [--html results.html]
    python -m pipeline.search --index out/index --query "cut the tomato" [--exact] [--ef_search N]

With --features (exact, the default): streams the Parquet files row group by row group on
a thread pool, keeping the top k per query, so memory stays bounded whatever the number
of clips. With --index: asks the approximate index `pipeline.index` built (milliseconds
instead of a pass over every embedding); --exact searches the index's runs exactly instead.
Queries are embedded with the model the features were extracted with (recorded in the
files' metadata and the index); a query model or `texts` table from another model is refused.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from pipeline.console import configure_logging
from s3d.loader import ModelLoadError
from s3d.quiet import add_log_level_arguments
from storage.layout import EMBEDDING, LEVEL_COLUMNS, LEVEL_TABLE, table_files
from storage.objects import open_parquet
from storage.runs import RunError, check_complete, level_files, read_run_metadata, shared_metadata, split_prefixes
from vector_index import IndexProblem, read_manifest
from vector_index.searcher import Hits, IndexSearcher


class SearchError(ValueError):
    """A search that cannot be answered as asked; the message says why and what to do."""


@dataclass
class Queries:
    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray  # float32 [Q, 512]
    known_words: list[int | None]
    model: str


def embed_queries(texts: Sequence[str], model_handle: str) -> Queries:
    from s3d.loader import load_once

    for i, text in enumerate(texts):
        if not text.strip():
            raise SearchError(f"query {i + 1} is empty: give words to search for")
    model = load_once(model_handle, "float32")  # a process searching twice (a notebook, a test) loads once
    known = model.known_words(list(texts))
    embeddings = model.embed_text(list(texts))
    for text, unknown in zip(texts, model.no_known_words(list(texts), embeddings), strict=True):
        if unknown:
            print(f"warning: no word of {text!r} is in the model's vocabulary; its ranking reflects the padding "
                  "vector only", file=sys.stderr)
    return Queries([f"q{i}" for i in range(len(texts))], list(texts), embeddings.astype(np.float32), known, model_handle)


def texts_queries(prefix: str) -> Queries:
    files = table_files(prefix, "texts")
    if not files:
        raise SearchError(f"no texts table under --texts {prefix!r}")
    tables = [open_parquet(f).read() for f in files]
    models = {read_run_metadata(t.schema).get("model") for t in tables}
    if len(models) != 1:
        raise SearchError(f"--texts {prefix!r} mixes embeddings of several models: {sorted(map(str, models))}")
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    if table.num_rows == 0:
        raise SearchError(f"--texts {prefix!r} has no rows")
    emb = table.column("text_embedding").combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    return Queries(table.column("text_id").to_pylist(), table.column("text").to_pylist(), emb.astype(np.float32),
                   table.column("known_words").to_pylist(), models.pop())


class _TopK:
    """The best k rows per query seen so far: their scores and where they are (file, row group, row)."""

    def __init__(self, num_queries: int, k: int):
        self.k = k
        self.scores = [np.empty(0, np.float32) for _ in range(num_queries)]
        self.keys: list[list[tuple[int, int, int]]] = [[] for _ in range(num_queries)]
        self.rows: list[list[dict]] = [[] for _ in range(num_queries)]  # filled by `resolve`

    def offer(self, q: int, scores: np.ndarray, keys: list[tuple[int, int, int]]) -> None:
        merged_scores = np.concatenate([self.scores[q], scores])
        merged_keys = self.keys[q] + keys
        # Highest score first; equal scores in file order, so the ranking is the same on every run.
        order = sorted(range(len(merged_keys)), key=lambda i: (-merged_scores[i], merged_keys[i]))[: self.k]
        self.scores[q] = merged_scores[order]
        self.keys[q] = [merged_keys[i] for i in order]

    def resolve(self, files: Sequence[str], columns: list[str]) -> None:
        """Reads the fields of the winning rows only: one read per row group that holds a winner."""
        wanted: dict[tuple[int, int], set[int]] = {}
        for keys in self.keys:
            for f, rg, row in keys:
                wanted.setdefault((f, rg), set()).add(row)
        fields: dict[tuple[int, int, int], dict] = {}
        for (f, rg), rows in wanted.items():
            table = open_parquet(files[f]).read_row_group(rg, columns=columns)
            ordered = sorted(rows)
            for row, values in zip(ordered, table.take(pa.array(ordered)).to_pylist(), strict=True):
                fields[(f, rg, row)] = values
        self.rows = [[fields[key] for key in keys] for keys in self.keys]


def _block_candidates(
    file_index: int, path: str, footer: pq.FileMetaData, row_group: int, queries: np.ndarray, k: int
):
    """Scores one row group (its embedding column only); returns per query its k best (scores, keys)."""
    table = open_parquet(path, footer).read_row_group(row_group, columns=[EMBEDDING], use_threads=False)
    n = table.num_rows
    if n == 0:
        return []
    # Chunk by chunk, without copying: flatten() honours slice offsets, to_numpy() is zero-copy.
    scores = np.concatenate(
        [c.flatten().to_numpy().reshape(len(c), -1) @ queries.T for c in table.column(EMBEDDING).chunks]
    )  # [n, Q]
    take = min(k, n)
    out = []
    for q in range(queries.shape[0]):
        idx = np.argpartition(-scores[:, q], take - 1)[:take] if take < n else np.arange(n)
        out.append((scores[idx, q], [(file_index, row_group, int(i)) for i in idx]))
    return out


def _row_groups(files: Sequence[str]) -> Iterator[tuple[int, str, pq.FileMetaData, int]]:
    """(file index, path, footer, row group) for every row group; each footer is read once."""
    for f, path in enumerate(files):
        footer = open_parquet(path).metadata
        for i in range(footer.num_row_groups):
            yield f, path, footer, i


def search(files: Sequence[str], queries: np.ndarray, level: str, k: int, threads: int | None = None) -> Hits:
    """Top k rows per query over all row groups of `files`, in parallel, in bounded memory.

    Two passes: the embedding column of every row group is scored on a thread pool
    (at most two row groups per thread in flight); then the other fields are read
    for the winners only.
    """
    if k < 1:
        raise SearchError(f"--top_k must be >= 1, got {k}")
    top = _TopK(queries.shape[0], k)
    workers = threads or os.cpu_count() or 1
    # One BLAS thread per worker: the workers already use every core, and OpenBLAS's own
    # threads would fight them (measured: 1.3 to 1.5x slower with its default).
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for f, path, footer, rg in _row_groups(files):
            pending.append(pool.submit(_block_candidates, f, path, footer, rg, queries, k))
            if len(pending) >= 2 * workers:
                for q, (scores, keys) in enumerate(pending.pop(0).result()):
                    top.offer(q, scores, keys)
        for future in pending:
            for q, (scores, keys) in enumerate(future.result()):
                top.offer(q, scores, keys)
    top.resolve(files, LEVEL_COLUMNS[level])
    return Hits(top.scores, top.rows)


def ranking_rows(queries: Queries, top: Hits, level: str) -> list[dict]:
    """One row a (query, hit), ranks from 1: exact search's and the index's results alike."""
    rows = []
    for q, (qid, text) in enumerate(zip(queries.ids, queries.texts, strict=True)):
        for rank, (score, row) in enumerate(zip(top.scores[q], top.rows[q], strict=True), start=1):
            rows.append({"query_id": qid, "query": text, "rank": rank, "score": float(score), "level": level, **row})
    return rows


def write_ranking(rows: list[dict], path: str) -> None:
    if path.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["query_id"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise SearchError(f"--output must end in .parquet or .csv, got {path!r}")


def print_ranking(rows: list[dict], level: str, out=None) -> None:
    out = out or sys.stdout
    current = None
    for r in rows:
        if r["query_id"] != current:
            current = r["query_id"]
            print(f"\n{r['query']!r}", file=out)
        where = f"{r['start_sec']:8.2f}-{r['end_sec']:<8.2f}" if level == "clip" else f"{r['duration_sec'] or 0:8.2f}s "
        print(f"  {r['rank']:3d}  {r['score']:9.4f}  {where} {r['uri']}", file=out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.splitlines()[0])
    where = parser.add_argument_group("what to search (one of)")
    where.add_argument("--features", help="output prefix(es) of pipeline.extract runs, comma-separated: exact search")
    where.add_argument("--index", help="an index directory made by pipeline.index: approximate search")
    where.add_argument("--exact", action="store_true",
                       help="with --index: search the runs the index holds exactly instead (the reference; also "
                       "the way round a damaged index)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--query", action="append", help="a sentence to search for (repeat for several)")
    source.add_argument("--queries", help="a .txt file of sentences, one a line")
    source.add_argument("--texts", help="output prefix of a pipeline.embed_text run: its sentences are the queries")
    parser.add_argument("--level", choices=sorted(LEVEL_TABLE), default=None,
                        help="rank clips, or whole videos by their mean embedding (default: clip; with --index, "
                        "the index's level)")
    parser.add_argument("--top_k", type=int, default=10, help="results per query (default: 10)")
    parser.add_argument("--ef_search", type=int, default=None,
                        help="with --index: candidates per query and shard (default: the index's); higher finds "
                        "more of the true top k, slower")
    parser.add_argument("--model", help="model to embed --query/--queries with (default: the one the features were "
                        "made with, from their metadata; another one is refused)")
    parser.add_argument("--output", help="also write the ranking to this .parquet or .csv file")
    parser.add_argument("--html", help="also write a self-contained HTML page with thumbnails of the results")
    parser.add_argument("--threads", type=int, default=None, help="threads scoring row groups (default: all cores)")
    parser.add_argument("--force", action="store_true", help="search a run that has no run summary (incomplete)")
    add_log_level_arguments(parser)
    return parser


def _source(args) -> tuple[IndexSearcher | None, str, list[str], dict]:
    """(the loaded index or None, level, features files for exact search, metadata), checked against the flags."""
    if bool(args.features) == bool(args.index):
        raise SearchError("give --features (exact search over runs) or --index (an index from pipeline.index), "
                          "one of the two")
    if args.exact and not args.index:
        raise SearchError("--exact goes with --index (search over --features is always exact)")
    if args.ef_search is not None and (not args.index or args.exact):
        raise SearchError("--ef_search goes with --index (approximate search)")
    if args.index and not args.exact:
        searcher, level, meta = _open_index(args)
        return searcher, level, [], meta
    prefixes = split_prefixes(args.features) if args.features else _index_runs(args.index)
    level = args.level or "clip"
    for prefix in prefixes:
        check_complete(prefix, args.force)
    files = [f for prefix in prefixes for f in level_files(prefix, level)]
    return None, level, files, shared_metadata(files)


def _queries(args, made_with: str | None) -> Queries:
    """The queries, embedded with (or checked against) the model the searched embeddings were made with."""
    what = f"--index {args.index!r}" if args.index else f"--features {args.features!r}"
    if args.texts:
        queries = texts_queries(args.texts)
    else:
        if args.model and made_with and args.model != made_with:
            raise SearchError(f"{what} were made with model {made_with!r}, not --model "
                              f"{args.model!r}: embeddings of different models are not comparable")
        queries = embed_queries(args.query or _read_lines(args.queries), args.model or made_with)
    if made_with and queries.model != made_with:
        raise SearchError(f"the queries were embedded with model {queries.model!r} but {what} with "
                          f"{made_with!r}: embeddings of different models are not comparable")
    return queries


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)  # before TensorFlow loads
    searcher = None
    try:
        searcher, level, files, meta = _source(args)
        queries = _queries(args, meta.get("model"))
        if searcher is not None:
            top = searcher.search(queries.embeddings, args.top_k, args.ef_search)
        else:
            top = search(files, queries.embeddings, level, args.top_k, args.threads)
        rows = ranking_rows(queries, top, level)
        if args.output:
            write_ranking(rows, args.output)
    except (SearchError, RunError, IndexProblem, ModelLoadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if searcher is not None:
            searcher.close()
    print_ranking(rows, level)
    if args.html:
        from pipeline.search_html import write_html

        write_html(args.html, rows, level, meta)
        print(f"\nwrote {args.html}", file=sys.stderr)
    return 0


def _open_index(args) -> tuple[IndexSearcher, str, dict]:
    """The loaded index, its level (checked against --level) and its metadata."""
    searcher = IndexSearcher(args.index, threads=args.threads)
    manifest = searcher.manifest
    if args.level and args.level != manifest.level:
        searcher.close()
        raise SearchError(f"--level {args.level} but the index at {args.index!r} is of {manifest.level}s: build a "
                          f"{args.level} index (pipeline.index --level {args.level}), or search with --exact")
    if args.ef_search is not None and args.ef_search < 1:
        searcher.close()
        raise SearchError(f"--ef_search must be >= 1, got {args.ef_search}")
    return searcher, manifest.level, {"model": manifest.model, "preprocessing": manifest.preprocessing}


def _index_runs(index_dir: str) -> list[str]:
    """The runs an index holds, for --exact: read from its manifest."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        raise SearchError(f"no index at {index_dir!r} (no index.json): search the runs with --features instead")
    return [run["features"] for run in manifest.runs]


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise SearchError(f"--queries {path!r} has no sentences")
    return lines


if __name__ == "__main__":
    sys.exit(main())
