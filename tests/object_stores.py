"""Real object stores on 127.0.0.1 for the tests: a GCS emulator and an S3-compatible server, reached through
Beam's own GCS and S3 filesystems (nothing is stubbed below Beam's FileSystem API).

- gs://: gcp-storage-emulator (PyPI), found by Google's client through STORAGE_EMULATOR_HOST. Beam's
  GCS filesystem asks google-auth for credentials first: a service-account file whose token_uri is a
  token server on 127.0.0.1 answers it at once and offline (without one, Beam retries for ~25 s and
  google-auth would probe the metadata server). NO_GCE_CHECK keeps google-auth off that server.
- s3://: moto's server mode (PyPI), given to the jobs with Beam's --s3_endpoint_url. AWS_ENDPOINT_URL_S3
  (which boto3 reads) names it too, for the tools that take no Beam flags (search, check_run, frames)
  and so that no S3 client of the tests can reach AWS.

Both servers bind 127.0.0.1 only, on free ports, and stop with the test session.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKET = "s3d-tests"
# The stores run on this host: a write lands in milliseconds, so a launch's lease settles in 0.2 s
# (--lease_settle_sec's case of a store nearby; the default's 2 s would idle ~40 s of the suite). The race
# the wait guards against is tested in tests/test_lease.py with its own settle times.
NEARBY = ["--lease_settle_sec", "0.2"]


@dataclasses.dataclass
class Store:
    """One object store for tests: its scheme, the flags a job needs to reach it, and a fresh root per call."""

    scheme: str
    beam_args: list[str]
    env: dict[str, str]  # what a subprocess job needs in its environment
    faults: Faults | None = None  # the GCS emulator's front door (tests/test_incremental.py)

    def root(self, name: str = "") -> str:
        """A new, empty prefix on the store."""
        return f"{self.scheme}://{BUCKET}/{name or 'run'}-{uuid.uuid4().hex[:8]}"

    def upload(self, local: str, uri: str) -> str:
        from apache_beam.io.filesystems import FileSystems

        with open(local, "rb") as src, FileSystems.create(uri) as dst:
            dst.write(src.read())
        return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TokenHandler(BaseHTTPRequestHandler):
    """Google's OAuth token endpoint, as far as a service account's refresh needs it."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"access_token": "local-test-token", "expires_in": 3600, "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _service_account_file(token_uri: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "s3d-tests", "private_key_id": "local", "private_key": pem,
            "client_email": "tests@s3d-tests.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}
    fd, path = tempfile.mkstemp(prefix="s3d-test-credentials-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return path


class Faults:
    """What the store's front door does wrong on purpose: for media reads of objects whose name holds
    some text, answer 503, or reset the connection half way through the body. Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rules: list[list] = []  # [text, kind, times left]
        self.served: dict[str, int] = {}  # kind -> faults served
        self.requests = 0  # every request through the door (benchmarks count a launch's requests)

    def add(self, text: str, kind: str, times: int) -> None:
        assert kind in ("503", "reset")
        with self._lock:
            self._rules.append([text, kind, times])

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self.served.clear()

    def take(self, path: str) -> str | None:
        """The fault for this request, if any (and one fewer left)."""
        with self._lock:
            self.requests += 1
        if "alt=media" not in path:
            return None
        from urllib.parse import unquote

        with self._lock:
            for rule in self._rules:
                if rule[0] in unquote(path) and rule[2] > 0:
                    rule[2] -= 1
                    self.served[rule[1]] = self.served.get(rule[1], 0) + 1
                    return rule[1]
        return None


def _front_door(upstream: int, faults: Faults) -> ThreadingHTTPServer:
    """An HTTP proxy on 127.0.0.1 in front of the emulator: every request passes through unchanged,
    but for the faults asked for (a real 503 on the wire, a real reset of the TCP connection), and
    the emulator's address in its JSON (media links) becomes the door's."""
    import http.client
    import struct

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self):
            fault = faults.take(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            if fault == "503":
                error = json.dumps({"error": {"code": 503, "message": "backend unavailable (injected)"}}).encode()
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(error)))
                self.end_headers()
                self.wfile.write(error)
                return
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            conn.close()
            if "json" in (reply.getheader("Content-Type") or ""):  # media links name the door, not the emulator
                data = data.replace(f"127.0.0.1:{upstream}".encode(), f"127.0.0.1:{self.server.server_port}".encode())
            self.send_response(reply.status)
            for k, v in reply.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault == "reset":  # half the body, then a TCP reset (SO_LINGER 0), as a dropped connection
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815 (http.server's names)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_gcs():
    """(Store, stop): the emulator with BUCKET behind a front door that can inject faults (Store.faults),
    and the environment that reaches it, set in this process."""
    import logging

    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # it warns on every streamed response
    tokens = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    faults = Faults()
    door = _front_door(port, faults)
    env = {
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{door.server_address[1]}",
        "GOOGLE_APPLICATION_CREDENTIALS": _service_account_file(f"http://127.0.0.1:{tokens.server_address[1]}/token"),
        "GOOGLE_CLOUD_PROJECT": "s3d-tests",
        "NO_GCE_CHECK": "true",
    }
    os.environ.update(env)

    def stop():
        door.shutdown()
        server.stop()
        tokens.shutdown()
        os.unlink(env["GOOGLE_APPLICATION_CREDENTIALS"])

    return Store("gs", [*NEARBY], env, faults), stop


def _wait_for_port(port: int, process, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the S3 server did not listen on 127.0.0.1:{port} within {seconds:g} s")


def start_s3():
    """(Store, stop): moto's S3 server with BUCKET, in a process of its own (in the tests' process it
    competes with the jobs for the GIL: measured 3x slower jobs); jobs reach it with Store.beam_args."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "tests", "AWS_SECRET_ACCESS_KEY": "tests", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL_S3": url}
    os.environ.update(env)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, server)
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    args = ["--s3_endpoint_url", url, "--s3_access_key_id", "tests", "--s3_secret_access_key", "tests",
            "--s3_region_name", "us-east-1"]
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(PipelineOptions(args))  # for the tests' own uploads and reads
    def stop():
        server.terminate()
        server.wait(timeout=30)

    return Store("s3", [*args, *NEARBY], env), stop
