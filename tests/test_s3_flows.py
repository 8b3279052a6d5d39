"""Every flow on s3://, through Beam's S3 filesystem and moto's S3 server on 127.0.0.1 (tests/store_flows.py)."""

import pytest
from store_flows import *  # noqa: F403  (the flows, collected here for this store)


@pytest.fixture(scope="module")
def store(s3_store):
    return s3_store


def test_beams_s3_clients_share_one_boto3_session(store, tmp_path):
    """storage.objects makes Beam's per-call S3 clients come from one session (each new session reloads
    botocore's service models); the clients still reach the server."""
    from apache_beam.io.aws.clients.s3 import boto3_client, messages

    import storage.objects  # noqa: F401  (applies it)

    first, second = boto3_client.Client(options={}), boto3_client.Client(options={})
    assert first.client is not second.client
    assert first.client._loader is second.client._loader  # botocore's loader belongs to the session
    local = tmp_path / "x.bin"
    local.write_bytes(b"12345")
    uri = store.upload(str(local), store.root("shared") + "/x.bin")
    bucket, key = uri[len("s3://"):].split("/", 1)
    assert second.get_object_metadata(messages.GetRequest(bucket, key)).size == 5
