"""An approximate nearest-neighbour index over the `video_embedding` column of extraction runs.

The index is a directory: `index.json` (the manifest: the runs, model, preprocessing, level
and quantization it covers, and its shards with their sizes and checksums) and `shards/`,
where each shard is a faiss HNSW graph (`NAME.faiss`) and its locators (`NAME.locators.parquet`:
row i of the graph is row i there, with the result's columns and the features row it came from).
The manifest is written last; it is what makes an index, so a build that dies leaves the
previous index as it was.

`vector_index.builder` plans and builds shards (`transforms.index` runs it with Beam, a shard per
worker thread); `vector_index.searcher` loads them and merges their results. faiss does the graph;
this package does the files, the checks and the merge.
"""

from vector_index.manifest import (
    MANIFEST_NAME,
    IndexDamaged,
    IndexMismatch,
    IndexProblem,
    Manifest,
    read_manifest,
)

__all__ = ["MANIFEST_NAME", "IndexDamaged", "IndexMismatch", "IndexProblem", "Manifest", "read_manifest"]
