"""The index's manifest (`INDEX_DIR/index.json`) and the checks made against it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from apache_beam.io.filesystems import FileSystems

from storage.objects import open_object, write_object
from storage.runs import comparable

FORMAT = 1
MANIFEST_NAME = "index.json"
SHARDS_DIR = "shards"
QUANTIZATIONS = ("f32", "f16", "i8")


class IndexProblem(ValueError):
    """An index that cannot be used as asked; the message says why and what to do."""


class IndexMismatch(IndexProblem):
    """The index and the features or queries come from different models, preprocessing or levels."""


class IndexDamaged(IndexProblem):
    """A file of the index is missing, truncated or altered."""


@dataclass
class Manifest:
    level: str
    quantization: str
    model: str | None
    preprocessing: Any
    dim: int
    params: dict[str, int]  # m, ef_construction, ef_search
    library: str
    runs: list[dict] = field(default_factory=list)  # features, summary_sha256, rows, complete, shards
    shards: list[dict] = field(default_factory=list)  # name, run, rows, files: {suffix: {bytes, sha256}}
    failures: list[dict] = field(default_factory=list)  # shards that could not be built: name, run, error
    format: int = FORMAT

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def run_for(self, features: str) -> dict | None:
        return next((r for r in self.runs if r["features"] == features.rstrip("/")), None)

    def check_same(self, model: str | None, preprocessing: Any, what: str) -> None:
        """Refuses features or queries made another way than the indexed ones."""
        found, held = (comparable({"model": m, "preprocessing": p}) for m, p in
                       ((model, preprocessing), (self.model, self.preprocessing)))
        if found != held:
            raise IndexMismatch(
                f"{what} was made with model {model!r} / preprocessing {json.dumps(preprocessing, sort_keys=True)}, "
                f"but the index holds model {self.model!r} / preprocessing "
                f"{json.dumps(self.preprocessing, sort_keys=True)}: embeddings of different models or preprocessing "
                "are not comparable; build a separate index"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def manifest_path(index_dir: str) -> str:
    return f"{index_dir.rstrip('/')}/{MANIFEST_NAME}"


# A shard is two files: the library's index, and a table that locates each of its rows in the features.
INDEX_SUFFIX = ".faiss"
LOCATORS_SUFFIX = ".locators.parquet"
# The locators table's columns after the level's own (storage.layout.LEVEL_COLUMNS, what a search result
# carries): which features file, row group and row each vector came from.
SOURCE_FILE, SOURCE_ROW_GROUP, SOURCE_ROW = "source_file", "source_row_group", "source_row"


def shard_path(index_dir: str, name: str, suffix: str) -> str:
    """One of a shard's files: INDEX_SUFFIX or LOCATORS_SUFFIX."""
    return f"{index_dir.rstrip('/')}/{SHARDS_DIR}/{name}{suffix}"


def read_manifest(index_dir: str) -> Manifest | None:
    """The index's manifest, or None when there is no index there; IndexDamaged when it cannot be read."""
    path = manifest_path(index_dir)
    if not FileSystems.exists(path):
        return None
    try:
        with open_object(path) as f:
            data = json.loads(f.read().decode("utf-8"))
        if data.get("format") != FORMAT:
            raise IndexDamaged(f"{path} is index format {data.get('format')!r}; this version reads format {FORMAT}")
        return Manifest(**data)
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        if isinstance(e, IndexDamaged):
            raise
        raise IndexDamaged(f"{path} cannot be read ({type(e).__name__}: {e}); rebuild the index with "
                           "pipeline.index, or search the runs exactly with --features") from e


def write_manifest(index_dir: str, manifest: Manifest) -> str:
    """Writes the manifest in one step: a local file is replaced atomically, an object written whole."""
    return write_object(manifest_path(index_dir), manifest.to_json().encode("utf-8"), "application/json")


def file_digest(path: str, chunk: int = 8 << 20) -> tuple[int, str]:
    """(bytes, sha256) of a local file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
