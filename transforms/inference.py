"""Inference with Beam's RunInference and this project's ModelHandler for the S3D module.

Beam's TensorFlow handlers load models with Keras and cannot call a hub module's
signatures, so `S3DModelHandler` loads through `load_s3d` and calls `embed_video`
or `embed_text`, the model wrapper's public methods (which also makes it work
behind Beam's cross-process proxy when the model is shared with `large_model` /
`model_copies`). Batches that raise go to a failure output, never crash the job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from s3d.loader import ModelLoadError, load_once  # TensorFlow itself is imported at load, on the worker
from s3d.precision import check_precision
from transforms.progress import ProgressLog
from transforms.records import NAMESPACE, CaptionShard, ClipItem, TextItem, check_worker_python, python_version

Task = Literal["video", "text", "captions"]

log = logging.getLogger(__name__)

def check_batch_sizes(min_batch_size: int | None, batch_size: int | None) -> None:
    """The one check of the batch sizes (the flags' and the handler's). Raises ValueError naming the flag."""
    if batch_size is None or batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    if min_batch_size is None or not 1 <= min_batch_size <= batch_size:
        raise ValueError(f"--min_batch_size must be between 1 and --batch_size ({batch_size}), got {min_batch_size}")


class S3DModelHandler(ModelHandler[Any, dict, Any]):
    """Loads an S3D MIL-NCE model once per worker (or per shared copy) and embeds batches.

    Args:
        model_handle: TF Hub URL, local directory or gs:// path of the module.
        task: "video" takes ClipItems and yields clip rows with `mixed_5c` and
            `video_embedding`; "text" takes TextItems and yields rows with `text_embedding`;
            "captions" takes CaptionShards and yields one {video_id, uri, shard, rows} a shard,
            its rows those of "text" with each caption's index and times.
        min_batch_size, max_batch_size: passed to BatchElements (for "captions", in captions: whole
            shards are batched up to max_batch_size captions).
        large_model: share one model per machine across processes (GPU workers).
        model_copies: exact number of shared copies per machine (e.g. one per GPU).
        expect_gpus: GPUs the job asked for on the workers that run the model; loading
            where TensorFlow sees none logs a warning (the model then runs on the CPU).
        precision: what the video tower computes in: float32, bfloat16 or float16 (s3d.precision),
            as the run records it. A worker that would compute another (no bfloat16 units, no GPU)
            refuses to load rather than write features under the wrong name.
    """

    def __init__(
        self,
        model_handle: str,
        task: Task = "video",
        *,
        min_batch_size: int = 1,
        max_batch_size: int = 4,
        large_model: bool = False,
        model_copies: int | None = None,
        progress: ProgressLog | None = None,
        expect_gpus: int = 0,
        precision: str = "float32",
    ):
        if task not in ("video", "text", "captions"):
            raise ValueError(f"task must be 'video', 'text' or 'captions', got {task!r}")
        check_batch_sizes(min_batch_size, max_batch_size)
        if model_copies is not None and model_copies < 1:
            raise ValueError(f"model_copies must be >= 1, got {model_copies}")
        check_precision(precision)
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=large_model,
            model_copies=model_copies,
            # BatchElements counts a batch's size in element_size_fn's units: captions, for shards of them.
            **({"element_size_fn": _shard_size} if task == "captions" else {}),
        )
        self._handle = model_handle
        self._task = task
        self._progress = progress or ProgressLog()
        self._expect_gpus = expect_gpus
        self._precision = precision
        self._launcher_python = python_version()

    @property
    def task(self) -> str:
        return self._task

    def load_model(self):
        check_worker_python(self._launcher_python)
        # The text tower is float32 at every precision: a text job does not lower the video tower.
        model = load_once(self._handle, self._precision if self._task == "video" else "float32")
        if self._task == "video" and model.precision != self._precision:
            raise ModelLoadError(
                f"this worker's video tower computes {model.precision} where the run records {self._precision} "
                "(the launcher cannot see remote workers' CPUs): use workers that run it natively (bfloat16: "
                "CPUs with AVX512_BF16 or AMX; float16: GPUs with tensor cores), or --precision float32")
        if self._expect_gpus and model.device is None:
            log.warning(
                "%d GPU(s) per worker were asked for (--inference_accelerator or the worker_accelerator service "
                "option) but TensorFlow sees none here: the model runs on the CPU, many times slower. On Dataflow, "
                "check that the accelerator has install-nvidia-driver and that the worker image has TensorFlow "
                "with CUDA (deploy/dataflow/Dockerfile)", self._expect_gpus)
        return model

    def run_inference(self, batch: Sequence[Any], model, inference_args: dict[str, Any] | None = None) -> Iterable[dict]:
        if self._task == "video":
            rows = self._embed_clips(batch, model)
            self._progress.add("clips", len(rows))
            return rows
        if self._task == "captions":
            return self._embed_shards(batch, model)
        return self._embed_texts(batch, model)

    @staticmethod
    def _embed_clips(batch: Sequence[ClipItem], model) -> list[dict]:
        frames = np.stack([item.frames for item in batch])
        mixed_5c, video_embedding = model.embed_video(frames)
        return [
            {**item.metadata(), "mixed_5c": mixed_5c[i], "video_embedding": video_embedding[i]}
            for i, item in enumerate(batch)
        ]

    @staticmethod
    def _embed_texts(batch: Sequence[TextItem], model) -> list[dict]:
        sentences = [item.text for item in batch]
        embeddings = model.embed_text(sentences)
        known = model.known_words(sentences)
        unknown = model.no_known_words(sentences, embeddings)
        return [
            {
                "text_id": item.text_id,
                "text": item.text,
                "known_words": known[i],
                "no_known_words": unknown[i],
                "text_embedding": embeddings[i],
            }
            for i, item in enumerate(batch)
        ]

    @classmethod
    def _embed_shards(cls, batch: Sequence[CaptionShard], model) -> list[dict]:
        items = [TextItem(str(shard.first_index + i), c.text) for shard in batch for i, c in enumerate(shard.captions)]
        rows = iter(cls._embed_texts(items, model))  # one call of the text tower for the whole batch
        out = []
        for shard in batch:
            captions = [{**next(rows), "start_sec": c.start_sec, "end_sec": c.end_sec} for c in shard.captions]
            out.append({"video_id": shard.video_id, "uri": shard.uri, "shard": shard.shard, "rows": captions})
        return out

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        if self._task == "video":
            return sum(item.frames.nbytes for item in batch)
        if self._task == "captions":
            return sum(len(c.text.encode("utf-8")) for shard in batch for c in shard.captions)
        return sum(len(item.text.encode("utf-8")) for item in batch)

    def get_metrics_namespace(self) -> str:
        return f"{NAMESPACE}_{self._task}"


def _shard_size(shard: CaptionShard) -> int:
    """A shard's weight in a batch of captions: its captions."""
    return len(shard.captions)


def _failed_batch_rows(failed) -> Iterable[tuple[str, dict]]:
    """(batch, exception info) from RunInference's dead-letter output -> one (id, failure) per element."""
    batch, error = failed
    if isinstance(error, tuple) and error:  # Beam passes (type, message, traceback lines)
        error_type = getattr(error[0], "__name__", str(error[0]))
        message = str(error[1]) if len(error) > 1 else ""
    else:
        error_type, message = type(error).__name__, str(error)
    Metrics.counter(NAMESPACE, "inference_failed_elements").inc(len(batch))
    for item in batch:
        if isinstance(item, TextItem):
            yield item.text_id, {"error_type": error_type, "message": message[:2000], "item": None}
        elif isinstance(item, CaptionShard):
            yield item.video_id, {"error_type": error_type, "message": message[:2000], "item": item.shard,
                                  "uri": item.uri, "captions": len(item.captions)}
        else:
            yield item.video_id, {"error_type": error_type, "message": message[:2000], "item": item.clip_index}


class Embed(beam.PTransform):
    """ClipItems or TextItems -> {rows, failures}: RunInference with a dead-letter output.

    `failures` holds (video_id or text_id, {error_type, message, item}) for every
    element of a batch that raised.
    """

    def __init__(self, handler: S3DModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, items):
        rows, dead = items | "RunInference" >> RunInference(self._handler).with_exception_handling()
        failures = dead.failed_inferences | "PerElementFailures" >> beam.FlatMap(_failed_batch_rows)
        return {"rows": rows, "failures": failures}
