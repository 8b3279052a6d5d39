"""Captions in: the parsers on files written here with each quirk real files have, the sidecar
lookup, the table, and a captions file on an HTTP server."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captions import Caption, CaptionsError, caption_kind, parse_captions
from captions.sources import find_sidecar, read_captions_file, read_captions_table
from synthetic.http_server import VideoServer

# YouTube's auto-captions: every cue repeats the line before, new words carry inline timestamps,
# and 10 ms cues repeat the last line alone; a cue's blank line is one space (\u0020).
YOUTUBE = """WEBVTT
Kind: captions
Language: en

00:00:00.160 --> 00:00:02.790 align:start position:0%
\u0020
so<00:00:00.480><c> today</c><00:00:00.880><c> we're</c><00:00:01.120><c> going</c><00:00:01.280><c> to</c><00:00:01.439><c> make</c>

00:00:02.790 --> 00:00:02.800 align:start position:0%
so today we're going to make
\u0020

00:00:02.800 --> 00:00:05.030 align:start position:0%
so today we're going to make
a<00:00:03.120><c> simple</c><00:00:03.520><c> tomato</c><00:00:04.000><c> sauce</c>

00:00:05.030 --> 00:00:05.040 align:start position:0%
a simple tomato sauce
\u0020

00:00:05.040 --> 00:00:07.510 align:start position:0%
a simple tomato sauce
first<00:00:05.520><c> chop</c><00:00:05.920><c> the</c><00:00:06.160><c> onions</c>

00:00:07.510 --> 00:00:09.000 align:start position:0%
first chop the onions
and then we chop the garlic
"""

# A byte-order mark, CRLF, times without hours, styling, an entity, overlapping and empty cues.
QUIRKY_VTT = ("\ufeffWEBVTT\r\n\r\nNOTE made by hand\r\n\r\n01:02.500 --> 01:04.000\r\n<b>Hello</b> <i>world</i>\r\n\r\n"
              "01:03.000 --> 01:05.000\r\n<c.colorE5E5E5>overlapping</c>\r\nline\r\n\r\n"
              "01:06.000 --> 01:07.000\r\n\r\n\r\n01:08.000 --> 01:09.000\r\nlast &amp; final\r\n")
QUIRKY_SRT = ("\ufeff1\r\n00:00:01,000 --> 00:00:02,500\r\n<i>Cut</i> the apple\r\n\r\n2\r\n00:00:02,000 --> 00:00:04,000\r\n"
              "{\\an8}into slices\r\n\r\n3\r\n00:00:05,000 --> 00:00:06,000\r\n\r\n\r\n4\r\n01:00:07,000 --> 01:00:08,000\r\n"
              "the end\r\n")


def test_rolling_auto_captions_become_each_line_once_with_its_times():
    got = parse_captions(YOUTUBE.encode(), "vtt")
    assert [c.text for c in got] == ["so today we're going to make", "a simple tomato sauce",
                                     "first chop the onions", "and then we chop the garlic"]
    # Each line is timed by the cue that brought it; the 10 ms repeat extends it, the rolling repeat does not.
    assert [(c.start_sec, c.end_sec) for c in got] == [(0.16, 2.8), (2.8, 5.04), (5.04, 7.51), (7.51, 9.0)]


def test_the_quirks_of_hand_made_webvtt():
    got = parse_captions(QUIRKY_VTT.encode("utf-8"), "vtt")
    assert got == [Caption(62.5, 64.0, "Hello world"), Caption(63.0, 65.0, "overlapping line"),
                   Caption(68.0, 69.0, "last & final")]  # the empty cue is gone, the overlap kept


def test_the_quirks_of_srt():
    got = parse_captions(QUIRKY_SRT.encode("utf-8"), "srt")
    assert got == [Caption(1.0, 2.5, "Cut the apple"), Caption(2.0, 4.0, "into slices"), Caption(3607.0, 3608.0, "the end")]


def test_json_lists_and_whisper_segments():
    plain = [{"start": 0.5, "end": 2.0, "text": " pour the oil "}, {"start_sec": 2, "end_sec": 3, "text": "stir"}]
    assert parse_captions(json.dumps(plain), "json") == [Caption(0.5, 2.0, "pour the oil"), Caption(2, 3, "stir")]
    whisper = {"text": "...", "segments": [{"id": 0, "start": 1.0, "end": 4.2, "text": " Heat the pan."}]}
    assert parse_captions(json.dumps(whisper), "json") == [Caption(1.0, 4.2, "Heat the pan.")]


def test_what_is_not_captions_says_why():
    with pytest.raises(CaptionsError, match="VTT"):
        parse_captions(b"this is not webvtt", "vtt")
    with pytest.raises(CaptionsError, match="start, end and text"):
        parse_captions('[{"start": 1}]', "json")
    with pytest.raises(CaptionsError, match="UTF-8"):
        parse_captions(b"\xff\xfe\x00W", "vtt")
    with pytest.raises(CaptionsError, match="not a captions file"):
        caption_kind("gs://b/v.mp4")
    assert caption_kind("https://h/x.en.vtt?sig=1") == "vtt"


def test_sidecars_are_found_beside_the_video(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert find_sidecar(str(video)) is None
    (tmp_path / "clip.de.vtt").write_text("WEBVTT\n")
    (tmp_path / "clip.en.vtt").write_text("WEBVTT\n")
    (tmp_path / "clip.extra.en.vtt").write_text("WEBVTT\n")  # another video's (clip.extra), not this one's
    assert find_sidecar(str(video)) == str(tmp_path / "clip.en.vtt")
    (tmp_path / "clip.srt").write_text(QUIRKY_SRT)
    assert find_sidecar(str(video)) == str(tmp_path / "clip.srt")
    (tmp_path / "clip.vtt").write_text(QUIRKY_VTT)
    assert find_sidecar(str(video)) == str(tmp_path / "clip.vtt")
    assert read_captions_file(find_sidecar(str(video)))[0].text == "Hello world"


def test_a_captions_file_and_its_sidecar_on_the_web(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"\0" * 10)
    (tmp_path / "v.srt").write_text(QUIRKY_SRT)
    server = VideoServer(str(tmp_path))
    try:
        assert find_sidecar(server.url("v.mp4")) == server.url("v.srt")
        assert read_captions_file(server.url("v.srt"))[1].text == "into slices"
        with pytest.raises(FileNotFoundError):
            read_captions_file(server.url("none.vtt"))
    finally:
        server.stop()


def test_a_captions_table_in_each_format(tmp_path):
    rows = [{"video_id": "a", "start_sec": 5.0, "end_sec": 6.0, "text": "second"},
            {"video_id": "a", "start_sec": 1.0, "end_sec": 2.0, "text": "first"},
            {"video_id": "b", "start_sec": 0.0, "end_sec": 1.0, "text": "  other   video "},
            {"video_id": "b", "start_sec": 3.0, "end_sec": 3.0, "text": "lasts nothing"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.csv").write_text("video_id,start_sec,end_sec,text\n" +
                                    "".join(f"{r['video_id']},{r['start_sec']},{r['end_sec']},{r['text']}\n" for r in rows))
    for name in ("c.parquet", "c.jsonl", "c.csv"):
        table = read_captions_table(str(tmp_path / name))
        assert table == {"a": [Caption(1.0, 2.0, "first"), Caption(5.0, 6.0, "second")],
                         "b": [Caption(0.0, 1.0, "other video")]}, name
    (tmp_path / "bad.csv").write_text("video_id,start,end,text\na,1,2,x\n")
    with pytest.raises(CaptionsError, match="start_sec"):
        read_captions_table(str(tmp_path / "bad.csv"))
