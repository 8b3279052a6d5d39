"""Narration in the extraction job (--captions): each video's captions read, embedded with the text tower,
and aligned with the video's clips (captions.align), into the `captions` table and three columns of `videos`.

    requests -> ReadCaptions -> shards of SHARD_CAPTIONS captions -> EmbedCaptions (text tower, batched)
    clip rows -> ClipsPerVideo -------------------------------------------------------+
    embedded shards keyed (video_id, shard) + the video's clips -> Align -> captions rows
    per-video counts -> summed -> joined onto the videos rows

No hot key: a video's captions travel and are aligned in shards of SHARD_CAPTIONS, each shard given the
video's clips (one small array a clip), so a video with thousands of captions is spread over workers.
A shard is one element from reading to alignment: the steps' cost per caption is the text tower's and
the rows' own (BENCHMARKS.md, "Captions"). A video
whose captions cannot be read (or embedded) gets a row in `captions_failures` (stage `captions`); its
clips and its row in `videos` are written as without captions. A video without captions is not an error.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np

from captions.align import align
from captions.sources import find_sidecar, read_captions_file, read_captions_table
from transforms.inference import Embed, S3DModelHandler
from transforms.records import FAILURES, CaptionShard, VideoRequest, failure_row

SHARD_CAPTIONS = 256  # captions aligned together; a video's clips are sent once per shard
CAPTION_TABLES = ("captions", "captions_failures")
COLUMN, SIDECAR = "column", "sidecar"
CAPTION_FILES = (COLUMN, SIDECAR)  # --captions values that name files per video; anything else is a table


def caption_failure(request: VideoRequest, source: str, error: BaseException) -> dict[str, Any]:
    return failure_row(request.video_id, request.uri, "captions", type(error).__name__, f"{source}: {error}"[:2000],
                       segment=(request.start_sec, request.end_sec))


class ReadCaptionsFn(beam.DoFn):
    """A VideoRequest -> (request, source, captions), or a failure row; nothing when it has no captions."""

    def __init__(self, mode: str):
        super().__init__()
        self._mode = mode

    def process(self, request: VideoRequest):
        source = request.captions if self._mode == COLUMN else find_sidecar(request.uri)
        if not source:
            return
        try:
            captions = read_captions_file(source)
        except Exception as e:  # noqa: BLE001  (every reason a file cannot be read is the video's failure row)
            yield beam.pvalue.TaggedOutput(FAILURES, caption_failure(request, source, e))
            return
        yield request, source, captions


def _from_table(joined, path: str):
    """(key, {requests, captions}) of the captions table's join -> (request, path, captions) per request."""
    _, grouped = joined
    found = [c for group in grouped["captions"] for c in group]
    if found:
        for request in grouped["requests"]:
            yield request, path, sorted(found, key=lambda c: (c.start_sec, c.end_sec))


def _embed_failure(failed) -> dict[str, Any]:
    """(video_id, the failures of its shards the text tower failed on) -> the video's one failure row."""
    video_id, shards = failed
    shards = sorted(shards, key=lambda f: f["item"])
    first = shards[0]
    return failure_row(video_id, first["uri"], "captions", first["error_type"],
                       f"{sum(f['captions'] for f in shards)} caption(s) failed in the text tower: "
                       f"{first['message']}"[:2000])


def _shards(read) -> list[CaptionShard]:
    """A video's captions in shards of SHARD_CAPTIONS, each one element through the text tower and the join."""
    request, _, captions = read
    return [CaptionShard(request.video_id, request.uri, s, at, tuple(captions[at:at + SHARD_CAPTIONS]))
            for s, at in enumerate(range(0, len(captions), SHARD_CAPTIONS))]


def _keyed_shard(embedded: dict[str, Any]):
    """The text tower's shard -> ((video_id, shard), caption rows without the alignment)."""
    video_id, uri = embedded["video_id"], embedded["uri"]
    rows = [{"video_id": video_id, "uri": uri, "caption_index": int(r["text_id"]), "start_sec": r["start_sec"],
             "end_sec": r["end_sec"], "text": r["text"], "known_words": r["known_words"],
             "no_known_words": r["no_known_words"], "text_embedding": r["text_embedding"]} for r in embedded["rows"]]
    return (video_id, embedded["shard"]), rows


class _ClipsFn(beam.CombineFn):
    """A video's clips as (clip_index, start_sec, end_sec, video_embedding) tuples."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, clip):
        acc.append(clip)
        return acc

    def merge_accumulators(self, accs):
        return [c for acc in accs for c in acc]

    def extract_output(self, acc):
        return sorted(acc, key=lambda c: c[0])


def _clips_to_shards(joined):
    video_id, grouped = joined
    clips = grouped["clips"][0] if grouped["clips"] else []
    for shard in grouped["shards"]:
        yield (video_id, shard), clips


class AlignFn(beam.DoFn):
    """((video_id, shard), {captions: [the shard's rows], clips}) -> caption rows, and
    ('counts', (video_id, (0, grounded, judged)))."""

    def __init__(self, window_sec: float):
        super().__init__()
        self._window = window_sec

    def process(self, joined):
        (video_id, _), grouped = joined
        rows = sorted((r for shard in grouped["captions"] for r in shard), key=lambda r: r["caption_index"])
        if not rows:
            return
        clips = grouped["clips"][0] if grouped["clips"] else []
        spans = np.array([[r["start_sec"], r["end_sec"]] for r in rows])
        texts = np.stack([np.asarray(r["text_embedding"], np.float32) for r in rows])
        if clips:
            clip_spans = np.array([[c[1], c[2]] for c in clips])
            alignments = align(spans, texts, clip_spans, np.array([c[0] for c in clips]),
                               np.stack([np.asarray(c[3], np.float32) for c in clips]), self._window)
        else:  # the video's clips failed: its captions are still written, unaligned
            alignments = align(spans, texts, np.zeros((0, 2)), np.zeros(0, int), np.zeros((0, texts.shape[1])),
                               self._window)
        grounded = judged = 0
        for row, a in zip(rows, alignments, strict=True):
            judged += a.grounded is not None
            grounded += bool(a.grounded)
            yield {**row, "overlap_score": a.overlap_score, "best_clip_index": a.best_clip_index,
                   "best_clip_score": a.best_clip_score, "best_clip_offset_sec": a.best_clip_offset_sec,
                   "grounded": a.grounded}
        yield beam.pvalue.TaggedOutput("counts", (video_id, (0, grounded, judged)))


def _sum_counts(values) -> tuple[int, int, int]:
    values = list(values)
    return tuple(sum(v[i] for v in values) for i in range(3)) if values else (0, 0, 0)


def _with_counts(joined):
    """(video_id, {videos, counts}) -> the video's row with captions, grounded_captions, grounded_fraction."""
    _, grouped = joined
    counts = grouped["counts"][0] if grouped["counts"] else None
    for row in grouped["videos"]:
        if counts is None:
            yield row
            continue
        captions, grounded, judged = counts
        yield {**row, "captions": captions, "grounded_captions": grounded,
               "grounded_fraction": grounded / judged if judged else None}


class AlignCaptions(beam.PTransform):
    """{requests, clip_rows, videos} -> {captions, failures (stage captions), videos with the three columns}.

    `source`: 'column' (the manifest's captions column), 'sidecar' (beside each video), or the path of a
    captions table (video_id or uri, start_sec, end_sec, text). `handler`: the text tower's, task "captions".
    """

    def __init__(self, source: str, handler: S3DModelHandler, window_sec: float):
        super().__init__()
        if handler.task != "captions":
            raise ValueError(f"AlignCaptions needs a handler of task 'captions', got {handler.task!r}")
        self._source, self._handler, self._window = source, handler, window_sec

    def _read(self, requests):
        if self._source in CAPTION_FILES:
            read = requests | "ReadCaptionFiles" >> beam.ParDo(ReadCaptionsFn(self._source)).with_outputs(
                FAILURES, main="read")
            return read.read, read[FAILURES]
        path = self._source
        table = (requests.pipeline | "CaptionsTable" >> beam.Create([path])
                 | "ReadCaptionsTable" >> beam.FlatMap(lambda p: read_captions_table(p).items()))
        by_id = requests | "KeyRequests" >> beam.FlatMap(lambda r: {r.video_id: r, r.uri: r}.items())
        read = ({"requests": by_id, "captions": table} | "JoinCaptionsTable" >> beam.CoGroupByKey()
                | "CaptionsOfRequests" >> beam.FlatMap(_from_table, path)
                | "OncePerVideo" >> beam.Map(lambda t: (t[0].video_id, t)) | "ByVideo" >> beam.GroupByKey()
                | "ByIdFirst" >> beam.Map(lambda kv: max(kv[1], key=lambda t: len(t[2]))))
        return read, requests.pipeline | "NoTableFailures" >> beam.Create([])

    def expand(self, inputs):
        # One request a video (the parts of a split video share it): the captions are the video's.
        requests = (inputs["requests"] | "KeyVideo" >> beam.Map(lambda r: (r.video_id, r))
                    | "OneRequestAVideo" >> beam.CombinePerKey(lambda rs: min(rs, key=lambda r: r.uri))
                    | "Requests" >> beam.Values())
        read, read_failures = self._read(requests)
        read_counts = read | "CaptionsRead" >> beam.Map(lambda t: (t[0].video_id, (len(t[2]), 0, 0)))
        embedded = read | "ToShards" >> beam.FlatMap(_shards) | "EmbedCaptions" >> Embed(self._handler)
        embed_failures = (embedded["failures"] | "FailedPerVideo" >> beam.GroupByKey()
                          | "EmbedFailures" >> beam.Map(_embed_failure))
        keyed = embedded["rows"] | "KeyShard" >> beam.Map(_keyed_shard)
        shards = keyed | "Shards" >> beam.Map(lambda kv: kv[0])  # one element a shard already
        clips = (inputs["clip_rows"]
                 | "KeyClip" >> beam.Map(lambda r: (r["video_id"], (r["clip_index"], r["start_sec"], r["end_sec"],
                                                                    r["video_embedding"])))
                 | "ClipsPerVideo" >> beam.CombinePerKey(_ClipsFn()))
        shard_clips = ({"clips": clips, "shards": shards | "ShardsByVideo" >> beam.Map(lambda s: (s[0], s[1]))}
                       | "JoinClipsAndShards" >> beam.CoGroupByKey()
                       | "ClipsToShards" >> beam.FlatMap(_clips_to_shards))
        aligned = ({"captions": keyed, "clips": shard_clips} | "JoinShards" >> beam.CoGroupByKey()
                   | "Align" >> beam.ParDo(AlignFn(self._window)).with_outputs("counts", main="rows"))
        counts = ((read_counts, aligned.counts) | "AllCounts" >> beam.Flatten()
                  | "CountsPerVideo" >> beam.CombinePerKey(_sum_counts))
        videos = ({"videos": inputs["videos"] | "KeyVideos" >> beam.Map(lambda r: (r["video_id"], r)),
                   "counts": counts} | "JoinCounts" >> beam.CoGroupByKey()
                  | "VideosWithCaptions" >> beam.FlatMap(_with_counts))
        failures = (read_failures, embed_failures) | "CaptionFailures" >> beam.Flatten()
        return {"captions": aligned.rows, "failures": failures, "videos": videos}
