"""http(s) inputs against a real HTTP server on 127.0.0.1 (tests/http_server.py), through Beam's
FileSystems: the job reads a WebVid-style CSV of URLs, served by the same server, and every kind of
misbehaviour ends as rows or as the failure it should be."""

from __future__ import annotations

import concurrent.futures
import csv
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from floats import assert_features_close

from pipeline import extract
from storage.http import HtmlNotMediaError, HttpNotFoundError, HttpReader, HttpSettings
from storage.layout import read_summary, table_files
from storage.objects import open_object
from synthetic.http_server import Trouble, VideoServer
from synthetic.videos import write_video
from transforms.inputs import Columns, check_uri, read_input_rows

FAST = ["--size", "64", "--frames_per_clip", "8", "--fps", "5"]
# Short waits: the server's troubles are cleared by a retry in milliseconds, not seconds.
QUICK = ["--io_retries", "2", "--io_retry_backoff_sec", "0.01", "--http_timeout_sec", "0.5"]

# What each URL meets, and how it must end: "rows" (the same rows as the file read from disk) or the
# failure's (error_type, transient, words in the message).
SWITCHES = {
    "plain": (None, "rows"),
    "fail_500_twice": (Trouble(fail_first=2), "rows"),
    "rate_limited": (Trouble(fail_first=1, fail_status=429, retry_after="1"), "rows"),
    "reset_mid_body": (Trouble(reset_first=1, reset_after=3000), "rows"),
    "short_body": (Trouble(short_first=1), "rows"),
    "slow_body": (Trouble(slow_first=1, slow_sec=1.5), "rows"),
    "ignores_range": (Trouble(ignore_range=True), "rows"),
    "no_length": (Trouble(no_length=True), "rows"),
    "redirected": (Trouble(redirects=3), "rows"),
    "not_found": (Trouble(status=404), ("HttpNotFoundError", False, "HTTP 404")),
    "gone": (Trouble(status=410), ("HttpNotFoundError", False, "HTTP 410")),
    "forbidden": (Trouble(status=403), ("HttpForbiddenError", False, "HTTP 403")),
    "html_page": (Trouble(html=True), ("HtmlNotMediaError", False, "HTML page")),
    "redirected_to_404": (Trouble(redirects=2, status=404), ("HttpNotFoundError", False, "/2/")),
    "always_500": (Trouble(fail_first=10**6), ("HttpTransientError", True, "HTTP 500")),
}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    # moov at the end (PyAV's MP4 muxer): the reader must seek to the end, then back.
    write_video(str(root / "a.mp4"), 40, fps=10, width=64, height=48)
    write_video(str(root / "b.mp4"), 40, fps=10, width=48, height=64)
    server = VideoServer(str(root))
    yield server
    server.stop()


def _write_csv(path: str, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def runs(web, standin_dir, tmp_path_factory):
    """The same videos read from disk and from the server (a WebVid-style CSV served by it too)."""
    tmp = tmp_path_factory.mktemp("runs")
    urls = {name: web.url("b.mp4" if name == "plain" else "a.mp4", trouble) for name, (trouble, _) in SWITCHES.items()}
    bad_rows = [["yt", "https://www.youtube.com/watch?v=dQw4w9WgXcQ"], ["ftp", "ftp://example.org/v.mp4"],
                ["empty", ""]]
    # WebVid's columns: videoid, contentUrl (and others the job ignores).
    _write_csv(os.path.join(web.root, "webvid.csv"), ["videoid", "contentUrl", "name"],
               [[name, url, f"clip {name}"] for name, url in urls.items()] + [[i, u, ""] for i, u in bad_rows])
    local = _write_csv(str(tmp / "local.csv"), ["video_id", "uri"],
                       [["a", os.path.join(web.root, "a.mp4")], ["b", os.path.join(web.root, "b.mp4")]])
    common = ["--model", standin_dir, *FAST, *QUICK]
    assert extract.main(["--input", local, "--output_prefix", str(tmp / "disk"), *common]) == 0
    # --split_sec 2: the 4 s videos are split after a header read over HTTP, and joined again.
    web_args = ["--input", web.url("webvid.csv"), "--uri_column", "contentUrl", "--id_column", "videoid",
                "--output_prefix", str(tmp / "web"), "--split_sec", "2", *common]
    assert extract.main(web_args) == 0
    return {"disk": str(tmp / "disk"), "web": str(tmp / "web"), "urls": urls, "args": web_args}


def _rows(prefix: str, table: str) -> list[dict]:
    files = table_files(prefix, table)
    return pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files]).to_pylist() if files else []


def test_a_url_manifest_gives_the_rows_of_the_same_videos_from_disk(runs):
    disk = {(r["video_id"], r["clip_index"]): r for r in _rows(runs["disk"], "clips")}
    web = _rows(runs["web"], "clips")
    expected_ok = sorted(name for name, (_, outcome) in SWITCHES.items() if outcome == "rows")
    assert sorted({r["video_id"] for r in web}) == expected_ok
    for row in web:
        same = disk[("b" if row["video_id"] == "plain" else "a", row["clip_index"])]
        assert row["uri"] == runs["urls"][row["video_id"]]
        assert (row["start_sec"], row["end_sec"]) == (same["start_sec"], same["end_sec"])
        for feature in ("mixed_5c", "video_embedding"):
            assert_features_close(row[feature], same[feature], f"{row['video_id']} {feature}")
    disk_clips = {r["video_id"]: r["num_clips"] for r in _rows(runs["disk"], "videos")}
    per_video = {r["video_id"]: r["num_clips"] for r in _rows(runs["web"], "videos")}
    assert per_video == {name: disk_clips["b" if name == "plain" else "a"] for name in expected_ok}
    summary = read_summary(runs["web"])
    assert summary["counts"]["videos_ok"] == len(expected_ok)
    assert summary["counts"]["videos_split"] == len(expected_ok)  # every header was read over HTTP


def test_an_input_that_cannot_be_read_fails_the_launch_in_one_line(web, standin_dir, tmp_path, capsys):
    common = ["--output_prefix", str(tmp_path / "out"), "--model", standin_dir, *QUICK]
    assert extract.main(["--input", web.url("*.mp4"), *common]) == 2
    assert "a web server has no listing" in capsys.readouterr().err
    assert extract.main(["--input", web.url("m.csv", Trouble(status=403)), *common]) == 2
    assert "HTTP 403" in capsys.readouterr().err
    assert extract.main(["--input", web.url("no-such.csv"), *common]) == 2
    assert "matches no files" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_each_permanent_or_exhausted_error_is_a_failure_of_its_type(runs, web):
    failures = {r["video_id"]: r for r in _rows(runs["web"], "failures")}
    for name, (_, outcome) in SWITCHES.items():
        if outcome == "rows":
            assert name not in failures, failures.get(name)
            continue
        error_type, transient, words = outcome
        row = failures[name]
        assert (row["stage"], row["error_type"], row["transient"]) == ("open", error_type, transient), row
        assert words in row["message"], row["message"]
    # Each open of the URL is retried --io_retries times, and the job does not retry it once more on top
    # (3 requests an open, not 9). It is opened twice: the split step reads the header, then decoding.
    assert web.requests(runs["urls"]["always_500"]) == 2 * 3
    assert web.requests(runs["urls"]["not_found"]) == 2  # permanent: asked once an open
    # The 429's Retry-After of 1 s was waited, not the 0.01 s backoff.
    first, second = web.times(runs["urls"]["rate_limited"])[:2]
    assert second - first >= 0.95


def test_unusable_urls_are_input_failures_that_say_why(runs):
    failures = {r["video_id"]: r for r in _rows(runs["web"], "failures")}
    assert failures["yt"]["stage"] == "input" and "downloader" in failures["yt"]["message"]
    assert failures["ftp"]["stage"] == "input" and "no filesystem here reads ftp://" in failures["ftp"]["message"]
    assert failures["empty"]["stage"] == "input" and "no uri" in failures["empty"]["message"]
    assert len(failures) + len(_rows(runs["web"], "videos")) == len(SWITCHES) + 3  # every row accounted for


def test_retry_failures_reads_the_urls_again(runs, web, tmp_path):
    fixed = runs["urls"]["not_found"]
    web.troubles[fixed.split("/t/")[1].split("/")[0]].status = None  # the file is there now
    prefix = str(tmp_path / "retry")
    args = ["--retry_failures", runs["web"], "--retry_errors", "HttpNotFoundError", "--output_prefix", prefix,
            *runs["args"][runs["args"].index("--model"):]]
    assert extract.main(args) == 0
    assert [r["video_id"] for r in _rows(prefix, "videos")] == ["not_found"]
    assert {r["video_id"] for r in _rows(prefix, "failures")} == {"gone", "redirected_to_404"}


# ---- the filesystem on its own ------------------------------------------------------------------------


def test_match_size_and_head_refused(web):
    size = os.path.getsize(os.path.join(web.root, "a.mp4"))
    for trouble in (None, Trouble(no_head=True), Trouble(ignore_range=True, no_head=True), Trouble(no_length=True)):
        found = FileSystems.match([web.url("a.mp4", trouble)])[0].metadata_list
        assert [m.size_in_bytes for m in found] == [size], trouble
        assert found[0].last_updated_in_seconds > 0
    assert FileSystems.match([web.url("missing.mp4")])[0].metadata_list == []
    assert FileSystems.exists(web.url("a.mp4")) and not FileSystems.exists(web.url("missing.mp4"))
    with pytest.raises(BeamIOError, match="no listing"):
        FileSystems.match([web.url("*.mp4")])
    with pytest.raises(BeamIOError, match="read-only"):
        FileSystems.create(web.url("new.mp4"))


def test_reads_seek_and_come_in_growing_ranges(web):
    data = open(os.path.join(web.root, "a.mp4"), "rb").read()
    url = web.url("a.mp4", Trouble())
    with open_object(url) as f:
        assert f.read() == data
        f.seek(-100, os.SEEK_END)
        assert f.read() == data[-100:]
        f.seek(10)
        assert f.read(5) == data[10:15]
    assert web.requests(url) <= 3  # the first block holds this small file; then the tail, then the start


def test_a_big_object_is_read_in_growing_ranges(web, tmp_path):
    blob = np.random.default_rng(0).integers(0, 256, 40 << 20, dtype=np.uint8).tobytes()
    with open(os.path.join(web.root, "big.bin"), "wb") as f:
        f.write(blob)
    url = web.url("big.bin", Trouble())
    start = len(web.state.ranges)
    with open_object(url) as f:
        assert f.read() == blob
    sizes = []
    for header in web.state.ranges[start:]:
        first, last = header.split("=")[1].split("-")
        sizes.append(int(last) - int(first) + 1)
    assert sizes[0] == 1 << 20 and max(sizes) == 16 << 20 and sizes == sorted(sizes[:-1]) + sizes[-1:]
    os.remove(os.path.join(web.root, "big.bin"))


def test_a_compressed_manifest_and_a_manifest_of_urls_read_as_files_do(web):
    rows = [{"uri": web.url("a.mp4"), "video_id": "x"}]
    with gzip.open(os.path.join(web.root, "m.jsonl.gz"), "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    with FileSystems.open(web.url("m.jsonl.gz")) as f:  # decompressed by its suffix, as Beam's filesystems do
        assert json.loads(f.read()) == rows[0]
    _write_csv(os.path.join(web.root, "cols.csv"), ["videoid", "contentUrl"], [["x", web.url("a.mp4")]])
    assert list(read_input_rows(web.url("cols.csv"), Columns(uri="contentUrl", video_id="videoid"))) == rows


def test_a_signed_manifest_url_is_a_manifest(web):
    from transforms.inputs import input_kind

    assert input_kind(web.url("webvid.csv") + "?X-Goog-Signature=ab12&X-Goog-Expires=600") == "csv"
    assert input_kind("https://h/videos/a.mp4?sig=1.csv") == "glob"  # the query is not the name
    _write_csv(os.path.join(web.root, "signed.csv"), ["videoid", "contentUrl"], [["x", web.url("a.mp4")]])
    rows = list(read_input_rows(web.url("signed.csv") + "?token=x", Columns(uri="contentUrl", video_id="videoid")))
    assert rows == [{"uri": web.url("a.mp4"), "video_id": "x"}]


def test_errors_name_the_status_and_the_url_reached():
    with pytest.raises(ValueError, match="downloader"):
        check_uri("https://youtu.be/abc")
    with pytest.raises(ValueError, match="no host"):
        check_uri("https:///a.mp4")
    check_uri("https://example.org/a.mp4")  # no request is made to check a URI
    check_uri("/local/a.mp4")


def test_html_and_missing_pages_raise_their_types(web):
    with pytest.raises(HtmlNotMediaError, match="HTML page"):
        HttpReader(web.url("a.mp4", Trouble(html=True)), HttpSettings(retries=0))
    with pytest.raises(HttpNotFoundError, match=r"HTTP 404 .*redirected from"):
        HttpReader(web.url("a.mp4", Trouble(redirects=1, status=404)), HttpSettings(retries=0))


def test_connections_per_host_are_limited_and_name_the_project(web):
    web.state.max_active = 0
    url = web.url("a.mp4", Trouble(delay_sec=0.2))
    settings = HttpSettings(max_per_host=2)

    def read(_):
        with HttpReader(url, settings) as f:
            return len(f.read())

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert len(set(pool.map(read, range(6)))) == 1
    assert web.state.max_active == 2  # six readers, two connections at once
    assert any(ua.startswith("s3d-features/") for ua in web.state.user_agents)
    custom = HttpSettings(user_agent="my-crawler/1.0 (ops@example.org)")
    HttpReader(web.url("a.mp4"), custom).close()
    assert "my-crawler/1.0 (ops@example.org)" in web.state.user_agents


def test_a_server_without_ranges_is_spooled_within_the_limit(web):
    url = web.url("a.mp4", Trouble(ignore_range=True))
    with pytest.raises(OSError, match="http_spool_limit_mb=0"):
        HttpReader(url, HttpSettings(spool_limit_mb=0))
    reader = HttpReader(url, HttpSettings())
    assert reader.size == os.path.getsize(os.path.join(web.root, "a.mp4"))
    reader.close()


def test_the_frames_tool_reads_a_url(web, tmp_path):
    from pipeline import frames

    local, remote = str(tmp_path / "local.npy"), str(tmp_path / "remote.npy")
    assert frames.main([os.path.join(web.root, "a.mp4"), "--output", local, "--size", "64"]) == 0
    assert frames.main([web.url("a.mp4", Trouble(redirects=1)), "--output", remote, "--size", "64"]) == 0
    np.testing.assert_array_equal(np.load(remote), np.load(local))
    assert np.load(local).shape[0] > 0


def test_a_worker_that_never_imported_the_jobs_options_reads_the_http_flags():
    """Beam's workers rebuild the job's options from flags (or Dataflow's dictionary of them), and a
    worker need not import pipeline.options, where the flags are defined; the filesystem reads them anyway."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from apache_beam.options.pipeline_options import PipelineOptions\n"
        "from storage.http import HttpSettings\n"
        "assert 'pipeline.options' not in sys.modules\n"
        "flags = PipelineOptions(['--http_max_per_host', '2', '--io_retries', '5', '--http_user_agent', 'lab/1 (x)'])\n"
        "as_dict = PipelineOptions.from_dictionary({'http_max_per_host': 3, 'http_timeout_sec': 7.5})\n"
        "print(json.dumps([vars(HttpSettings.from_options(o)) for o in (flags, as_dict)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
    flags, as_dict = json.loads(out.stdout.strip().splitlines()[-1])
    assert (flags["max_per_host"], flags["retries"], flags["user_agent"]) == (2, 5, "lab/1 (x)")
    assert (as_dict["max_per_host"], as_dict["timeout_sec"], as_dict["retries"]) == (3, 7.5, 3)
