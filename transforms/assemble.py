"""Per-video results: the mean clip embedding joined with the decoder's metadata.

Every video that decoded to the end becomes exactly one row: in `videos` when all
its clips were embedded, else in `failures` (stage `inference`). Videos that failed
earlier were already recorded by the step that failed.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from s3d.architecture import EMBEDDING_DIM, MIXED_5C_DIM
from transforms.progress import count_failed_video
from transforms.records import FAILURES, NAMESPACE, failure_row


class MeanEmbeddingFn(beam.CombineFn):
    """Mean of (mixed_5c, video_embedding) pairs, accumulated in float64."""

    def create_accumulator(self):
        return np.zeros(MIXED_5C_DIM), np.zeros(EMBEDDING_DIM), 0

    def add_input(self, acc, pair):
        mixed, emb, n = acc
        return mixed + pair[0], emb + pair[1], n + 1

    def merge_accumulators(self, accumulators):
        mixed, emb, n = self.create_accumulator()
        for m, e, k in accumulators:
            mixed, emb, n = mixed + m, emb + e, n + k
        return mixed, emb, n

    def extract_output(self, acc):
        mixed, emb, n = acc
        if n == 0:
            return None
        return (mixed / n).astype(np.float32), (emb / n).astype(np.float32), n


class _AssembleFn(beam.DoFn):
    def process(self, keyed):
        video_id, grouped = keyed
        infos, means, failed = list(grouped["info"]), list(grouped["mean"]), list(grouped["failed"])
        # No info: the video failed at input or decode, and that step wrote its failure row.
        if infos:
            yield self._assemble(video_id, infos[0], means[0] if means else None, failed)

    @staticmethod
    def _assemble(video_id: str, info: dict, mean, failed: list[dict]):
        embedded = mean[2] if mean else 0
        if failed:
            count_failed_video("inference")
            first = failed[0]
            return beam.pvalue.TaggedOutput(
                FAILURES,
                failure_row(video_id, info["uri"], "inference", first["error_type"],
                            f"{len(failed)} of {info['num_clips']} clips failed inference: {first['message']}",
                            clips_kept=embedded, segment=(info.get("segment_start_sec"), info.get("segment_end_sec"))),
            )
        if embedded != info["num_clips"]:
            count_failed_video("assemble")
            return beam.pvalue.TaggedOutput(
                FAILURES,
                failure_row(video_id, info["uri"], "assemble", "ClipCountMismatch",
                            f"decoded {info['num_clips']} clips but {embedded} were embedded", clips_kept=embedded,
                            segment=(info.get("segment_start_sec"), info.get("segment_end_sec"))),
            )
        Metrics.counter(NAMESPACE, "videos_ok").inc()
        return {**info, "mixed_5c": mean[0], "video_embedding": mean[1]}


class AssembleVideos(beam.PTransform):
    """{clip_rows, info, inference_failures} -> {videos, failures}."""

    def expand(self, inputs):
        means = (
            inputs["clip_rows"]
            | "KeyClipFeatures" >> beam.Map(lambda r: (r["video_id"], (r["mixed_5c"], r["video_embedding"])))
            | "MeanPerVideo" >> beam.CombinePerKey(MeanEmbeddingFn())
        )
        joined = {"info": inputs["info"], "mean": means, "failed": inputs["inference_failures"]} | "JoinPerVideo" >> beam.CoGroupByKey()
        out = joined | "Assemble" >> beam.ParDo(_AssembleFn()).with_outputs(FAILURES, main="videos")
        return {"videos": out.videos, FAILURES: out[FAILURES]}
