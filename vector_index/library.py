"""The graph library (faiss), behind the few calls the index makes: new, add, save, load, search.

faiss was chosen by measurement against usearch and hnswlib on the 1M-clip benchmark set
(BENCHMARKS.md, "Approximate-index libraries"): at recall@10 >= 0.95 its HNSW answered a
query fastest, and its scalar quantizers keep the index under 1.5x the raw float16 vectors.
"""

from __future__ import annotations

import os

import numpy as np

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_EF_SEARCH = 128
TRAIN_SAMPLE = 65_536  # vectors an i8 quantizer learns its per-dimension ranges from
# Vectors handed to one add: faiss inserts a batch level by level in parallel, and many small batches make a
# worse graph. Measured at 1M clips, f16, ef_search 128: recall@10 0.94 in batches of 16,384 rows, 0.99 in
# batches of 250,000 (as good as one batch). 262,144 float32 rows are 0.5 GB while a shard builds.
ADD_BATCH = 262_144


def _faiss():
    import faiss

    return faiss


def library_version() -> str:
    return f"faiss-cpu {_faiss().__version__}"


# A shard of at most this many rows is searched exhaustively (a flat index of the same codes), not by a graph:
# HNSW with inner product can miss nodes on tiny graphs (a run of 60 clips gave another clip at rank 5 than
# exact search), and a scan of 20,000 x 512 is a few milliseconds a query.
EXACT_SHARD_ROWS = 20_000


def new_index(dim: int, quantization: str, m: int, ef_construction: int, rows: int | None = None):
    """An empty index for inner product: vectors as float32, float16 or 8-bit codes; an HNSW graph, or, for
    a shard of at most EXACT_SHARD_ROWS `rows`, a flat index searched exhaustively (exact top k)."""
    faiss = _faiss()
    if rows is not None and rows <= EXACT_SHARD_ROWS:
        if quantization == "f32":
            return faiss.IndexFlatIP(dim)
        kind = {"f16": faiss.ScalarQuantizer.QT_fp16, "i8": faiss.ScalarQuantizer.QT_8bit}[quantization]
        return faiss.IndexScalarQuantizer(dim, kind, faiss.METRIC_INNER_PRODUCT)
    if quantization == "f32":
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    else:
        kind = {"f16": faiss.ScalarQuantizer.QT_fp16, "i8": faiss.ScalarQuantizer.QT_8bit}[quantization]
        index = faiss.IndexHNSWSQ(dim, kind, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def needs_training(quantization: str) -> bool:
    return quantization == "i8"


def train(index, sample: np.ndarray) -> None:
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def add(index, vectors: np.ndarray) -> None:
    """Adds rows in order: the i-th vector ever added is id i (the row of the shard's locators)."""
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))


def save(index, path: str) -> None:
    _faiss().write_index(index, path)


def load(path: str):
    """Reads an index file; raises ValueError for one faiss cannot read."""
    try:
        return _faiss().read_index(path)
    except RuntimeError as e:  # faiss reports a bad file as a RuntimeError with its C++ message
        raise ValueError(str(e).strip().splitlines()[-1]) from e


def set_threads(threads: int | None) -> None:
    _faiss().omp_set_num_threads(threads or os.cpu_count() or 1)


def search(index, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], ids [Q, k]) best first; ids of -1 where the shard has fewer than k rows."""
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not isinstance(index, faiss.IndexHNSW):  # a small shard's flat index: every row is scored
        return index.search(queries, k)
    # Per call, not on the index: concurrent searches with different ef_search do not interfere.
    params = faiss.SearchParametersHNSW(efSearch=max(ef_search, k))
    scores, ids = index.search(queries, k, params=params)
    return scores, ids
