"""Every flow on s3://, through Beam's S3 filesystem and moto's S3 server on 127.0.0.1 (tests/store_flows.py)."""

import pytest
from store_flows import *  # noqa: F403  (the flows, collected here for this store)


@pytest.fixture(scope="module")
def store(s3_store):
    return s3_store
