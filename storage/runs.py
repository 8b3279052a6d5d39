"""What a run is, and when two runs' features may be used together: one definition for every reader.

A run is an output prefix whose tables carry the run metadata (`s3d.run` in every Parquet file's
key-value metadata) and whose `run_summary.json`, written last, marks it complete.

Three questions, three answers:
- comparable: the same model and preprocessing. Their embeddings live in one space, so search
  and the index rank them together. Precision is not part of it: a bfloat16 run's features are
  float32's within cosine 0.998 (BENCHMARKS.md, "Precision"), close enough to rank side by side.
- interchangeable: comparable and of the same precision: the features are the same numbers
  (within float32 rounding).
- done for a run: interchangeable, and, when that run aligns captions (--captions), made with the
  same captions settings. --skip_done counts an earlier run's videos as done for this one, and a
  run in chunks resumes its plan, only then: a run without captions may reuse a captioned run's
  videos, a captioned run never skips a video whose captions were not aligned as it would.

Files written before a key existed hold its default (precision: float32).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from storage.layout import LEVEL_TABLE, SUMMARY_NAME, read_summary, table_files, table_glob

METADATA_KEY = b"s3d.run"  # where every Parquet file of a run keeps the run metadata

COMPARABLE_KEYS = {"model": None, "preprocessing": None}
INTERCHANGEABLE_KEYS = {**COMPARABLE_KEYS, "precision": "float32"}


class RunError(ValueError):
    """A prefix is not a usable run (incomplete, empty, mixed with another kind); the message says what to do."""


def read_run_metadata(schema) -> dict[str, Any]:
    """The run metadata stored in an Arrow schema (a Parquet file's), or {} if it has none."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def file_run_metadata(path: str) -> dict[str, Any]:
    """The run metadata of one Parquet file on any filesystem (its footer only)."""
    import pyarrow.parquet as pq

    from storage.objects import open_object

    with open_object(path) as f:
        return read_run_metadata(pq.read_schema(f))


def identity(metadata: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    """The `keys` of a run's metadata, defaults filled in, preprocessing in a canonical form."""
    out = {key: metadata.get(key, default) for key, default in keys.items()}
    if "preprocessing" in out:
        out["preprocessing"] = json.dumps(out["preprocessing"], sort_keys=True)
    return out


def comparable(metadata: dict[str, Any]) -> dict[str, Any]:
    return identity(metadata, COMPARABLE_KEYS)


def interchangeable(metadata: dict[str, Any]) -> dict[str, Any]:
    return identity(metadata, INTERCHANGEABLE_KEYS)


def done_identity(metadata: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """What must match for an earlier run (its `metadata`) to have done a video for `run` (this run's metadata)."""
    keys = {**INTERCHANGEABLE_KEYS, **({"captions": None} if run.get("captions") else {})}
    return identity(metadata, keys)


def differences(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """'model 'a', this run's 'b'; ...' for the keys two identities disagree on ('' when they agree)."""
    return "; ".join(f"{k} {found[k]!r}, this run's {wanted[k]!r}" for k in wanted if found.get(k) != wanted[k])


def shared_metadata(files: Sequence[str], flag: str = "--features") -> dict[str, Any]:
    """The run metadata the files share; RunError when two of them are not comparable."""
    first: tuple[str, dict, dict] | None = None
    for path in files:
        meta = file_run_metadata(path)
        key = comparable(meta)
        if first is None:
            first = (path, key, meta)
        elif key != first[1]:
            raise RunError(f"{flag}: {path} and {first[0]} were made differently ({differences(key, first[1])}): "
                           "use runs of one model and preprocessing together")
    if first is None:
        raise RunError(f"{flag}: no files to read")
    return first[2]


def level_files(prefix: str, level: str) -> list[str]:
    """The files search and the index read at `level` (clip or video) under a run; RunError when there are none."""
    files = table_files(prefix, LEVEL_TABLE[level])
    if not files:
        raise RunError(f"no {LEVEL_TABLE[level]} files under --features {prefix!r} ({table_glob(prefix, LEVEL_TABLE[level])})")
    return files


def check_complete(prefix: str, force: bool = False, flag: str = "--features") -> None:
    """RunError unless the run under `prefix` completed (its summary exists), or `force`."""
    if not force and read_summary(prefix) is None:
        raise RunError(
            f"{flag} {prefix!r} has no {SUMMARY_NAME}: that run did not complete (or is still running), so its "
            "tables may be partial. Re-run it, or pass --force to use what is there.")


def split_list(value: str | None) -> list[str]:
    """A comma-separated flag's values, stripped, empty ones dropped."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def split_prefixes(value: str, flag: str = "--features") -> list[str]:
    """Comma-separated run prefixes, once each, in order (trailing slashes dropped); RunError when none."""
    prefixes = list(dict.fromkeys(p.rstrip("/") for p in split_list(value)))
    if not prefixes:
        raise RunError(f"{flag} {value!r} names no run")
    return prefixes
