"""Beam building blocks in isolation: input parsing, the decode DoFn, inference failures, assembly."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to, is_not_empty
from machine import needs_native_bf16

from decoder import Clip, DecodeOptions
from synthetic.videos import write_video
from transforms.assemble import AssembleVideos
from transforms.decode import FAILURES, INFO, DecodeClipsFn
from transforms.inference import Embed, S3DModelHandler
from transforms.inputs import ReadVideoRequests, input_kind
from transforms.records import ClipItem, VideoRequest, derive_video_id, stable_id

LOCAL = ["--runner", "DirectRunner"]


def local_pipeline() -> TestPipeline:
    from pipeline.runner import create_pipeline

    options = TestPipeline(argv=LOCAL).get_pipeline_options()
    pipeline = create_pipeline(options)
    return TestPipeline(runner=pipeline.runner, options=options)


# ---- inputs --------------------------------------------------------------------------------------


def test_input_kinds():
    assert input_kind("gs://b/videos/*.mp4") == "glob"
    assert [input_kind(f"m{s}") for s in (".txt", ".csv", ".jsonl", ".parquet")] == ["txt", "csv", "jsonl", "parquet"]


def test_video_ids_are_stable_and_segment_aware():
    assert derive_video_id("gs://b/x.mp4") == derive_video_id("gs://b/x.mp4")
    assert derive_video_id("gs://b/x.mp4") != derive_video_id("gs://b/y.mp4")
    assert derive_video_id("gs://b/x.mp4", 1.0, 2.0) != derive_video_id("gs://b/x.mp4")


def test_txt_manifest(tmp_path):
    manifest = tmp_path / "list.txt"
    manifest.write_text("# a comment\n/v/a.mp4\n\n  /v/b.mp4  \n/v/a.mp4\n")
    with local_pipeline() as p:
        out = p | ReadVideoRequests(str(manifest))
        assert_that(out["requests"], equal_to([
            VideoRequest(derive_video_id("/v/a.mp4"), "/v/a.mp4"), VideoRequest(derive_video_id("/v/b.mp4"), "/v/b.mp4"),
        ]), label="Requests")
        assert_that(out["failures"], equal_to([]), label="NoFailures")


def test_jsonl_manifest_with_bad_rows(tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"uri": "/v/a.mp4", "video_id": "a", "start_sec": 2, "end_sec": 4.5}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"video_id": "nouri"}),
        json.dumps({"uri": "/v/b.mp4", "start_sec": "-1"}),
    ]) + "\n")
    with local_pipeline() as p:
        out = p | ReadVideoRequests(str(manifest))
        assert_that(out["requests"], equal_to([VideoRequest("a", "/v/a.mp4", 2.0, 4.5)]), label="Requests")
        stages = out["failures"] | beam.Map(lambda f: (f["stage"], f["error_type"]))
        assert_that(stages, equal_to([("input", "JSONDecodeError"), ("input", "ValueError"), ("input", "ValueError"),
                                      ("input", "ValueError")]), label="Failures")


def test_parquet_manifest(tmp_path):
    path = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"uri": ["/v/a.mp4", "/v/b.mp4"], "video_id": ["a", None], "start_sec": [None, 1.5]}), path)
    with local_pipeline() as p:
        out = p | ReadVideoRequests(path)
        assert_that(out["requests"], equal_to([
            VideoRequest("a", "/v/a.mp4"), VideoRequest(derive_video_id("/v/b.mp4", 1.5, None), "/v/b.mp4", 1.5, None),
        ]))


# ---- the decode DoFn, called directly ------------------------------------------------------------


def test_decode_fn_outputs_clips_then_info(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), 30, fps=10, width=64, height=48)
    fn = DecodeClipsFn(DecodeOptions(fps=10, frames_per_clip=8, size=32))
    fn.setup()
    out = list(fn.process(VideoRequest("v", path)))
    clips = [o for o in out if isinstance(o, ClipItem)]
    tagged = [o for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert [c.clip_index for c in clips] == [0, 1, 2, 3] and clips[-1].clip.padded
    assert clips[0].frames.dtype == np.uint8 and clips[0].frames.shape == (8, 32, 32, 3)
    assert len(tagged) == 1 and tagged[0].tag == INFO
    video_id, info = tagged[0].value
    assert video_id == "v" and info["num_clips"] == 4 and info["decoded_frames"] == 30


def test_decode_fn_turns_a_broken_video_into_a_failure(tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(b"\x00" * 1000)
    fn = DecodeClipsFn(DecodeOptions())
    fn.setup()
    out = list(fn.process(VideoRequest("bad", str(path))))
    assert len(out) == 1 and out[0].tag == FAILURES
    row = out[0].value
    assert (row["video_id"], row["stage"], row["error_type"], row["clips_kept"]) == ("bad", "open", "OpenError", 0)


def test_decode_fn_turns_a_decoder_crash_into_a_failure_and_goes_on(tmp_path, monkeypatch):
    from decoder.process import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "segv:crash.mp4")  # the decoder process really dies by SIGSEGV
    crash = write_video(str(tmp_path / "crash.mp4"), 30, fps=10, width=64, height=48)
    good = write_video(str(tmp_path / "good.mp4"), 30, fps=10, width=64, height=48)
    fn = DecodeClipsFn(DecodeOptions(fps=10, frames_per_clip=8, size=32), backoff_sec=0)
    fn.setup()
    try:
        out = list(fn.process(VideoRequest("crash", crash)))
        after = list(fn.process(VideoRequest("good", good)))
    finally:
        fn.teardown()
    clips = [o for o in out if isinstance(o, ClipItem)]
    failures = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == FAILURES]
    assert len(clips) == 1 and len(failures) == 1  # the clip decoded before the crash is kept, not retried
    row = failures[0]
    assert (row["stage"], row["error_type"], row["clips_kept"], row["transient"]) == (
        "decode", "DecoderCrashError", 1, False)
    assert "SIGSEGV" in row["message"]
    assert len([o for o in after if isinstance(o, ClipItem)]) == 4  # the next video, in a new process


# ---- inference failures and assembly -------------------------------------------------------------


class _FakeModel:
    """Fails on clips of video 'poison'; embeds others with their mean pixel value."""

    def embed_video(self, frames):
        means = frames.reshape(len(frames), -1).mean(axis=1).astype(np.float32)
        return np.repeat(means[:, None], 1024, axis=1), np.repeat(means[:, None], 512, axis=1)


class _FlakyHandler(S3DModelHandler):
    def load_model(self):
        return _FakeModel()

    def run_inference(self, batch, model, inference_args=None):
        if any(item.video_id == "poison" for item in batch):
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().run_inference(batch, model, inference_args)


def _clip(video_id: str, index: int, value: int) -> ClipItem:
    clip = Clip(index, index * 3.2, index * 3.2 + 3.2, 32, False, np.full((2, 4, 4, 3), value, np.uint8))
    return ClipItem(video_id, f"/v/{video_id}.mp4", clip)


def test_inference_failures_become_failure_rows_and_good_videos_assemble():
    clips = [_clip("good", 0, 10), _clip("good", 1, 30), _clip("poison", 0, 50), _clip("poison", 1, 70)]
    info = [(v, {"video_id": v, "uri": f"/v/{v}.mp4", "num_clips": 2}) for v in ("good", "poison")]
    with local_pipeline() as p:
        embedded = p | "Clips" >> beam.Create(clips) | Embed(_FlakyHandler("unused", max_batch_size=1))
        assembled = {
            "clip_rows": embedded["rows"], "info": p | "Info" >> beam.Create(info), "inference_failures": embedded["failures"],
        } | AssembleVideos()
        videos = assembled["videos"] | "VideoMeans" >> beam.Map(lambda r: (r["video_id"], float(r["video_embedding"][0])))
        assert_that(videos, equal_to([("good", 20.0)]), label="Videos")
        failures = assembled["failures"] | "FailureRows" >> beam.Map(
            lambda r: (r["video_id"], r["stage"], r["error_type"], r["clips_kept"], "out of memory" in r["message"]))
        assert_that(failures, equal_to([("poison", "inference", "RuntimeError", 0, True)]), label="Failures")
        assert_that(embedded["rows"], is_not_empty(), label="SomeRows")


def test_handler_validates_its_arguments():
    with pytest.raises(ValueError, match="task"):
        S3DModelHandler("m", "audio")
    with pytest.raises(ValueError, match="min_batch_size"):
        S3DModelHandler("m", min_batch_size=4, max_batch_size=2)
    handler = S3DModelHandler("m", max_batch_size=16, large_model=True)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 16}
    assert handler.share_model_across_processes()


@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=needs_native_bf16)])
def test_shared_model_proxy_calls_public_methods(standin_dir, precision):
    """With large_model, Beam hands run_inference a cross-process proxy: only public methods work."""
    from apache_beam.utils.multi_process_shared import MultiProcessShared

    handler = S3DModelHandler(standin_dir, large_model=True, precision=precision)
    shared = MultiProcessShared(handler.load_model, tag=f"s3d-test-{id(handler)}", always_proxy=True)
    proxy = shared.acquire()
    try:
        items = [_clip("v", 0, 0)]
        items[0].clip.frames = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
        rows = list(handler.run_inference(items, proxy))
        assert rows[0]["mixed_5c"].shape == (1024,) and rows[0]["video_embedding"].shape == (512,)
        # The proxied copy computes in this precision: float32's bits, or a bfloat16 result near them (the
        # float32 model is this process's own copy, so no second bfloat16 rewrite is paid for here).
        direct = S3DModelHandler(standin_dir).load_model().embed_video(items[0].clip.frames)[1][0]
        if precision == "float32":
            np.testing.assert_array_equal(rows[0]["video_embedding"], direct)
        else:
            # The lowered head computes in bfloat16: every value has bfloat16's 8-bit mantissa (the low 16
            # bits of its float32 form are zero), which float32's result does not.
            bfloat16_exact = lambda x: bool((x.view(np.uint32) & 0xFFFF == 0).all())  # noqa: E731
            assert bfloat16_exact(rows[0]["video_embedding"]) and not bfloat16_exact(direct)
    finally:
        shared.release(proxy)


def test_a_worker_that_cannot_compute_the_recorded_precision_refuses_to_load(standin_dir, monkeypatch):
    """A remote run records bfloat16; a worker without bfloat16 units must not write float32 features under it."""
    from s3d.loader import ModelLoadError

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # this machine answers as an AVX2-only worker
    handler = S3DModelHandler(standin_dir, precision="bfloat16")
    with pytest.raises(ModelLoadError, match="computes float32 where the run records bfloat16"):
        handler.load_model()
    assert S3DModelHandler(standin_dir, "text", precision="bfloat16").load_model().precision == "float32"


# ---- retries, assembly checks, prefetch in the DoFn, the text steps -------------------------------


def test_retry_failures_selects_by_stage_and_error_type():
    from transforms.incremental import _FailureToRowFn

    failures = [
        {"video_id": "a", "uri": "/a.mp4", "stage": "open", "error_type": "OpenError",
         "segment_start_sec": None, "segment_end_sec": None},
        {"video_id": "b", "uri": "/b.mp4", "stage": "decode", "error_type": "CorruptStreamError",
         "segment_start_sec": 1.0, "segment_end_sec": 2.0},
        {"video_id": "c", "uri": "/c.mp4", "stage": "inference", "error_type": "RuntimeError",
         "segment_start_sec": None, "segment_end_sec": None},
    ]

    def selected(stages=(), errors=()):
        fn = _FailureToRowFn(stages, errors)
        return [row["video_id"] for f in failures for row in fn.process(f)]

    assert selected() == ["a", "b", "c"]
    assert selected(errors=["CorruptStreamError", "RuntimeError"]) == ["b", "c"]  # --retry_errors
    assert selected(stages=["open", "decode"], errors=["CorruptStreamError"]) == ["b"]
    row = next(_FailureToRowFn((), ("CorruptStreamError",)).process(failures[1]))
    assert (row["uri"], row["start_sec"], row["end_sec"]) == ("/b.mp4", 1.0, 2.0)  # the segment asked again


def test_fewer_clips_embedded_than_decoded_is_a_clip_count_mismatch():
    from transforms.assemble import _AssembleFn

    info = {"video_id": "v", "uri": "/v.mp4", "num_clips": 3, "segment_start_sec": None, "segment_end_sec": None}
    mean = (np.zeros(1024, np.float32), np.zeros(512, np.float32), 2)
    out = _AssembleFn._assemble("v", info, mean, failed=[])
    assert out.tag == FAILURES
    row = out.value
    assert (row["stage"], row["error_type"], row["clips_kept"]) == ("assemble", "ClipCountMismatch", 2)
    assert "decoded 3 clips but 2 were embedded" in row["message"]
    whole = _AssembleFn._assemble("v", info, (mean[0], mean[1], 3), failed=[])
    assert whole["video_id"] == "v" and whole["video_embedding"].shape == (512,)


def test_decode_fn_gives_the_same_clips_with_and_without_prefetch(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), 50, fps=10, width=64, height=48)

    def decoded(prefetch: int):
        fn = DecodeClipsFn(DecodeOptions(fps=10, frames_per_clip=8, size=32), prefetch=prefetch)
        fn.setup()
        return [o for o in fn.process(VideoRequest("v", path)) if isinstance(o, ClipItem)]

    inline, ahead = decoded(0), decoded(2)
    assert len(inline) == len(ahead) == 7
    for a, b in zip(inline, ahead, strict=True):
        assert a.metadata() == b.metadata() and np.array_equal(a.frames, b.frames)


def test_text_rows_become_items_or_failure_rows():
    from transforms.text import ToTextItemFn

    fn = ToTextItemFn()
    item = next(fn.process({"text_id": " q1 ", "text": "cut the tomato"}))
    assert (item.text_id, item.text) == ("q1", "cut the tomato")
    derived = next(fn.process({"text": "cut the tomato"}))
    assert derived.text_id == stable_id("cut the tomato")  # the one id hash, shared with video ids
    failure = next(fn.process({"text_id": "bad", "text": None}))
    assert failure.tag == FAILURES and failure.value["stage"] == "input" and failure.value["text_id"] == "bad"


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_text_steps_read_each_input_kind_and_record_inference_failures(tmp_path, kind):
    from transforms.inputs import ReadManifestRows
    from transforms.text import EmbedTexts

    sentences = ["cut the tomato", "poison pill", "a dog runs"]
    path = tmp_path / f"s.{kind}"
    if kind == "txt":
        path.write_text("\n".join(sentences) + "\n")
    elif kind == "csv":
        path.write_text("text\n" + "\n".join(sentences) + "\n")
    else:
        pq.write_table(pa.table({"text": sentences}), str(path))

    class FakeTextModel:
        def embed_text(self, batch):
            if any("poison" in s for s in batch):
                raise RuntimeError("text tower failed (simulated)")
            return np.ones((len(batch), 512), np.float32) * np.arange(len(batch))[:, None]

        def known_words(self, batch):
            return [len(s.split()) for s in batch]

        def no_known_words(self, batch, embeddings):
            return [False] * len(batch)

    class Handler(S3DModelHandler):
        def load_model(self):
            return FakeTextModel()

    with local_pipeline() as p:
        out = p | ReadManifestRows(str(path), "text") | EmbedTexts(Handler("unused", "text", max_batch_size=1))
        assert_that(out["rows"] | beam.Map(lambda r: r["text"]), equal_to(["cut the tomato", "a dog runs"]),
                    label="Embedded")
        assert_that(out["failures"] | beam.Map(lambda f: (f["stage"], f["error_type"])),
                    equal_to([("inference", "RuntimeError")]), label="Failures")
