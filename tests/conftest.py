"""Shared fixtures: the stand-in model is exported once per session into a temp dir."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory) -> str:
    from s3d.export import export_standin

    path = str(tmp_path_factory.mktemp("models") / "standin")
    export_standin(path, seed=0)
    return path


@pytest.fixture(scope="session")
def standin_model(standin_dir):
    from s3d.loader import load_s3d

    return load_s3d(standin_dir)


@pytest.fixture(scope="session")
def other_standin_dir(tmp_path_factory) -> str:
    """A second stand-in (seed 1): a model whose features must not be mixed with the first's."""
    from s3d.export import export_standin

    path = str(tmp_path_factory.mktemp("models") / "other")
    export_standin(path, seed=1)
    return path
