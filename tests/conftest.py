"""Shared fixtures: the stand-in model is exported once per session into a temp dir.

In-process jobs load each model once per test process, as any process does
(s3d.loader.load_once); jobs run in subprocesses (tests of the command line, of
several worker processes, of a killed run) and the loader's own tests load for real every time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

import s3d  # noqa: F401  (its defaults for TensorFlow, oneDNN on, before any test imports TensorFlow)

# Seconds each file took with `make test`'s 3 workers on 2 cores (pytest --durations=0, summed per file;
# AMD EPYC, December 2026). Files run longest first (`make test` passes --no-loadscope-reorder, so xdist
# keeps this order), so the workers end together rather than one waiting on a long file picked up last.
# A file not listed runs after these; the numbers need only keep their rough order.
FILE_SECONDS = {
    "test_chunks.py": 98, "test_incremental.py": 65, "test_gcs_flows.py": 49, "test_s3_flows.py": 48,
    "test_model.py": 46, "test_captions_job.py": 46, "test_tf1_format.py": 45, "test_extract.py": 42,
    "test_reusable.py": 40, "test_convert.py": 38, "test_console.py": 37, "test_transforms.py": 29,
    "test_dataflow.py": 26, "test_progress.py": 20, "test_http.py": 18, "test_lease.py": 16,
    "test_devices.py": 16, "test_split.py": 15, "test_search.py": 10,
}
# The first file exports the stand-in (about 10 s of a core); the other workers start on files that
# need no model (the index's tests, 30 s; the decoder process's, 15 s), instead of waiting for the
# export's lock.
FIRST = ("test_precision.py", "test_index.py", "test_decoder_process.py")


def pytest_collection_modifyitems(items):
    def order(item):
        name = item.path.name
        return (FIRST.index(name), 0) if name in FIRST else (len(FIRST), -FILE_SECONDS.get(name, 0))

    items.sort(key=order)  # stable: a file's own order stays


# A newcomer's shell: nothing set that quiets TensorFlow or Python's warnings (for subprocess runs).
NEWCOMER_ENV_DROPS = ("TF_CPP_MIN_LOG_LEVEL", "S3D_TF_STARTUP_LOGS", "PYTHONWARNINGS")


@pytest.fixture(scope="session")
def newcomer_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in NEWCOMER_ENV_DROPS}


def export_once(tmp_path_factory, name: str, seed: int, command: list[str] | None = None) -> str:
    """The stand-in of `seed`, exported once per test run and shared by pytest-xdist's workers.

    The workers' temp directories share a parent; the first worker to take the lock exports
    (about 15 s of a core), the others wait and reuse the files. No test writes into it.
    With `command`, the export is made by `python -m s3d.export` itself (in this process) with those
    arguments beside --output and --seed, so the command's own test checks a model that other files use.
    """
    import fcntl
    import shutil

    from s3d.export import export_standin

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "shared_models" / name
    path.parent.mkdir(exist_ok=True)
    with open(root / "shared_models" / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            partial = path.with_name(f"{name}.partial")
            shutil.rmtree(partial, ignore_errors=True)  # left by a worker killed mid-export
            if command is None:
                export_standin(str(partial), seed=seed)
            else:
                from s3d.export import main

                assert main(["--output", str(partial), "--seed", str(seed), *command]) == 0
            os.rename(partial, path)  # whole or absent: a worker killed mid-export leaves no half model
    return str(path)


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory) -> str:
    return export_once(tmp_path_factory, "standin", seed=0)


@pytest.fixture(scope="session")
def standin_model(standin_dir):
    from s3d.loader import load_s3d

    return load_s3d(standin_dir)


@pytest.fixture(scope="session")
def other_standin_dir(tmp_path_factory) -> str:
    """A second stand-in: a model whose features must not be mixed with the first's.

    Exported by the command with a two-word vocabulary (tests/test_model.py checks what the command wrote).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    words = root / "other_words.txt"
    if not words.exists():  # every worker writes the same two words: a race between them is harmless
        partial = root / f"other_words.{os.getpid()}"
        partial.write_text(OTHER_VOCABULARY, encoding="utf-8")
        os.replace(partial, words)
    return export_once(tmp_path_factory, "other", seed=OTHER_SEED, command=["--vocab", str(words)])


OTHER_SEED, OTHER_VOCABULARY = 5, "knife\nfork\n"


# ---- object stores on 127.0.0.1 (tests/object_stores.py) ------------------------------------------


@pytest.fixture(scope="session")
def gcs_store():
    from object_stores import start_gcs

    store, stop = start_gcs()
    yield store
    stop()


@pytest.fixture(scope="session")
def s3_store():
    from object_stores import start_s3

    store, stop = start_s3()
    yield store
    stop()


@pytest.fixture(params=["gcs", "s3"])
def object_store(request):
    """Each test that takes it runs once on the GCS emulator and once on the S3 server."""
    return request.getfixturevalue(f"{request.param}_store")
