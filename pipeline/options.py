"""Options of the jobs: one PipelineOptions subclass per job, every flag with help and default.

Validation happens at launch (`validate()`), before any worker starts, with a
message that names the flag.
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from s3d.loader import DEFAULT_HANDLE
from transforms.inference import S3DModelHandler
from transforms.video_decode import CROP_MODES, TAIL_POLICIES, DecodeOptions

_DEFAULTS = DecodeOptions()


def _boolean(value: str) -> bool:
    """`--flag`, `--flag=true` or `--flag=false` (Flex Templates pass every parameter with a value)."""
    lowered = str(value).lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _fps(value: str) -> float | None:
    if value.lower() == "native":
        return None
    try:
        return float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--fps takes a number or 'native', got {value!r}") from e


class ModelOptions(PipelineOptions):
    """What every job that runs the model shares: the module, batching and model sharing."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model", default=DEFAULT_HANDLE,
                            help="S3D MIL-NCE module: TF Hub URL, local SavedModel directory or gs:// path "
                            f"(default: {DEFAULT_HANDLE})")
        parser.add_argument("--batch_size", type=int, default=4,
                            help="largest batch sent to the model (default: 4; on CPU larger batches gain nothing "
                            "and cost memory, on GPU raise it)")
        parser.add_argument("--min_batch_size", type=int, default=1, help="smallest batch (default: 1)")
        parser.add_argument("--large_model", type=_boolean, nargs="?", const=True, default=False,
                            help="load one model per machine and share it across worker processes (GPU workers)")
        parser.add_argument("--model_copies", type=int, default=None,
                            help="exact number of shared model copies per machine, e.g. one per GPU "
                            "(implies sharing; default: one per process, or one per GPU with "
                            "--inference_accelerator)")
        parser.add_argument("--inference_accelerator", default=None,
                            help="a Dataflow accelerator resource hint put on the inference step only, e.g. "
                            "'type:nvidia-tesla-t4;count:1;install-nvidia-driver' (decoding stays on CPU "
                            "workers with right fitting); implies one shared model copy per GPU")

    def gpu_count(self) -> int:
        """GPUs per worker named by --inference_accelerator (0 without one)."""
        if not self.inference_accelerator:
            return 0
        fields = dict(part.split(":", 1) for part in self.inference_accelerator.split(";") if ":" in part)
        return int(fields.get("count", 1))

    def handler(self, task: str) -> S3DModelHandler:
        """The model handler these options describe, for `task` 'video' or 'text'.

        On GPU workers the default is one shared model copy per GPU: worker processes
        send their batches to it instead of each loading the model into GPU memory.
        """
        gpus = self.gpu_count()
        copies = self.model_copies if self.model_copies is not None else (gpus or None)
        return S3DModelHandler(
            self.model, task, min_batch_size=self.min_batch_size, max_batch_size=self.batch_size,
            large_model=self.large_model or gpus > 0, model_copies=copies,
        )

    def validate_model(self) -> None:
        if not self.model:
            raise ValueError("--model must name a TF Hub URL or a SavedModel path")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not 1 <= self.min_batch_size <= self.batch_size:
            raise ValueError(f"--min_batch_size must be between 1 and --batch_size ({self.batch_size}), got {self.min_batch_size}")
        if self.model_copies is not None and self.model_copies < 1:
            raise ValueError(f"--model_copies must be >= 1, got {self.model_copies}")
        if self.inference_accelerator:
            fields = dict(p.split(":", 1) for p in self.inference_accelerator.split(";") if ":" in p)
            if "type" not in fields or not fields.get("count", "1").isdigit() or int(fields.get("count", "1")) < 1:
                raise ValueError(
                    "--inference_accelerator must look like 'type:nvidia-tesla-t4;count:1;install-nvidia-driver', "
                    f"got {self.inference_accelerator!r}"
                )


EXTRACT_INPUT_HELP = (
    "glob of video files on any Beam filesystem (e.g. 'gs://b/videos/*.mp4'), or a manifest: .txt (one URI a "
    "line), .csv/.jsonl/.parquet with a 'uri' column and optional video_id, start_sec, end_sec"
)
EXTRACT_OUTPUT_HELP = (
    "where the run writes PREFIX/clips/, PREFIX/videos/, PREFIX/failures/ and PREFIX/run_summary.json; "
    "an earlier run's output there is replaced"
)
TEXT_INPUT_HELP = "sentences: .txt (one a line), or .csv/.jsonl/.parquet with a 'text' column and optional text_id"
TEXT_OUTPUT_HELP = (
    "where the run writes PREFIX/texts/, PREFIX/text_failures/ and PREFIX/run_summary.json; an earlier run "
    "there is replaced"
)


class IOOptions(PipelineOptions):
    """--input and --output_prefix, shared by the jobs (Beam needs each flag defined once per process)."""

    @classmethod
    def _add_argparse_args(cls, parser, input_help: str | None = None, output_help: str | None = None):
        group = parser.add_argument_group("input and output")
        group.add_argument("--input", help=input_help or "what the job reads (see the job's --help)")
        group.add_argument("--output_prefix", help=output_help or "where the job writes its tables and run summary")
        group.add_argument("--wait", type=_boolean, nargs="?", const=True, default=True,
                           help="wait for the job to finish, then add its metrics to the run summary and print "
                           "it (default: true); --wait=false submits and returns, as a Flex Template launch "
                           "should (the job still writes its run summary when its tables are final); local "
                           "runs always wait")

    def validate_io(self, what: str) -> None:
        if not self.input:
            raise ValueError(f"--input is required: {what}")
        if not self.output_prefix:
            raise ValueError("--output_prefix is required: where the tables are written")


class ExtractOptions(PipelineOptions):
    """`python -m pipeline.extract`: videos -> clips, videos and failures tables."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("sampling and windowing")
        group.add_argument("--fps", type=_fps, default=_DEFAULTS.fps,
                           help=f"frames sampled per second, or 'native' (default: {_DEFAULTS.fps:g})")
        group.add_argument("--frames_per_clip", type=int, default=_DEFAULTS.frames_per_clip,
                           help=f"frames in a clip (default: {_DEFAULTS.frames_per_clip}; must be even)")
        group.add_argument("--stride", type=int, default=None,
                           help="sampled frames between clip starts (default: --frames_per_clip, no overlap)")
        group.add_argument("--num_clips", type=int, default=None,
                           help="instead of --stride: this many clips spread evenly over each video, as in the "
                           "authors' evaluation (default: off)")
        group.add_argument("--tail", choices=TAIL_POLICIES, default=_DEFAULTS.tail,
                           help=f"a short last clip: pad (repeat the last frame, flagged) or drop (default: {_DEFAULTS.tail})")
        group = parser.add_argument_group("spatial preprocessing")
        group.add_argument("--size", type=int, default=_DEFAULTS.size,
                           help=f"output frame side in pixels (default: {_DEFAULTS.size}; even)")
        group.add_argument("--crop", choices=CROP_MODES, default=_DEFAULTS.crop,
                           help="center: centre square then resize (the authors'); resize: whole frame; "
                           f"short_side: resize short side then centre crop (default: {_DEFAULTS.crop})")
        group = parser.add_argument_group("limits per video")
        group.add_argument("--max_pixels", type=int, default=_DEFAULTS.max_pixels,
                           help=f"largest frame in pixels (default: {_DEFAULTS.max_pixels}, 8K)")
        group.add_argument("--max_duration_sec", type=float, default=_DEFAULTS.max_duration_sec,
                           help=f"longest video decoded, seconds (default: {_DEFAULTS.max_duration_sec:g})")
        group.add_argument("--max_seconds_per_video", type=float, default=_DEFAULTS.max_seconds_per_video,
                           help=f"wall-clock budget to decode one video (default: {_DEFAULTS.max_seconds_per_video:g})")
        group = parser.add_argument_group("decoding")
        group.add_argument("--decode_threads", type=int, default=_DEFAULTS.threads,
                           help="decoder threads per video, 0 = one per core (default: 0)")
        group.add_argument("--decode_prefetch", type=int, default=2,
                           help="clips decoded ahead in a background thread while the model runs; "
                           "0 = decode inline (default: 2)")
        cls._add_incremental_args(parser)

    def decode_options(self) -> DecodeOptions:
        """The decoder's options; ValueError names the flag."""
        if self.frames_per_clip is not None and self.frames_per_clip % 2:
            raise ValueError(f"--frames_per_clip must be even (the model needs an even T), got {self.frames_per_clip}")
        try:
            return DecodeOptions(
                fps=self.fps, frames_per_clip=self.frames_per_clip, stride=self.stride, num_clips=self.num_clips,
                size=self.size, crop=self.crop, tail=self.tail, max_pixels=self.max_pixels,
                max_duration_sec=self.max_duration_sec, max_seconds_per_video=self.max_seconds_per_video,
                threads=self.decode_threads,
            )
        except ValueError as e:
            message = str(e).replace("threads must", "decode_threads must")
            raise ValueError(f"--{message}") from e

    @staticmethod
    def _add_incremental_args(parser) -> None:
        group = parser.add_argument_group("incremental runs and retries")
        group.add_argument("--skip_done", default=None,
                           help="comma-separated output prefixes of earlier runs: videos already in their videos "
                           "table (same model and preprocessing) are not decoded again")
        group.add_argument("--retry_failures", default=None,
                           help="instead of --input: the output prefix of an earlier run whose failures are "
                           "decoded again")
        group.add_argument("--retry_stages", default=None,
                           help="with --retry_failures: only these comma-separated stages (e.g. open,decode)")
        group.add_argument("--retry_errors", default=None,
                           help="with --retry_failures: only these comma-separated error types (e.g. OpenError)")
        group.add_argument("--io_retries", type=int, default=3,
                           help="retries of a transient read error (timeouts, object store 5xx) before a video "
                           "fails, with exponential backoff (default: 3)")
        group.add_argument("--io_retry_backoff_sec", type=float, default=1.0,
                           help="first backoff of those retries, doubled each time (default: 1.0)")

    @staticmethod
    def split(value: str | None) -> list[str]:
        return [v.strip() for v in (value or "").split(",") if v.strip()]

    def validate_extract(self) -> None:
        if self.io_retries is None or self.io_retries < 0:
            raise ValueError(f"--io_retries must be >= 0, got {self.io_retries}")
        if self.io_retry_backoff_sec is None or self.io_retry_backoff_sec < 0:
            raise ValueError(f"--io_retry_backoff_sec must be >= 0, got {self.io_retry_backoff_sec}")
        if (self.retry_stages or self.retry_errors) and not self.retry_failures:
            raise ValueError("--retry_stages and --retry_errors go with --retry_failures")
        if self.decode_prefetch is None or self.decode_prefetch < 0:
            raise ValueError(f"--decode_prefetch must be >= 0, got {self.decode_prefetch}")
        self.decode_options()
