"""Every flow on gs://, through Beam's GCS filesystem and a GCS emulator on 127.0.0.1 (tests/store_flows.py)."""

import pytest
from store_flows import *  # noqa: F403  (the flows, collected here for this store)


@pytest.fixture(scope="module")
def store(gcs_store):
    return gcs_store
