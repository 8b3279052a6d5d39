"""Options of the jobs: one PipelineOptions subclass per job, every flag with help and default.

Validation happens at launch (`validate()`), before any worker starts, with a
message that names the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions, WorkerOptions

from decoder import DecodeOptions, add_decode_arguments
from s3d.loader import DEFAULT_HANDLE
from s3d.precision import DEFAULT_PRECISION, PRECISIONS, Machine, PrecisionPlan, plan_precision
from s3d.quiet import add_log_level_arguments
from storage.http import HttpSettings, default_user_agent
from storage.lease import SETTLE_SEC
from transforms.captions import CAPTION_FILES
from transforms.decode import check_decode_args
from transforms.inference import S3DModelHandler, check_batch_sizes
from transforms.inputs import Columns
from transforms.progress import ProgressLog
from transforms.split import check_split_sec

log = logging.getLogger(__name__)

# Beam's FnApiRunner is chosen for all of these (pipeline.runner): the launcher's machine runs the workers.
LOCAL_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner")


def runs_locally(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner in LOCAL_RUNNERS

# Parts of 10 minutes: at 10 fps and 32-frame clips, about 190 clips, minutes of work for a worker,
# against a header read and one keyframe interval decoded twice per part (BENCHMARKS.md, "Splitting").
DEFAULT_SPLIT_SEC = 600.0

def boolean_flag(value: str) -> bool:
    """`--flag`, `--flag=true` or `--flag=false` (Flex Templates pass every parameter with a value)."""
    lowered = str(value).lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


boolean_flag.template_regex = r"^(true|false)$"  # what a Flex Template parameter accepts (make_metadata)



def plan_metadata(plan: PrecisionPlan) -> dict[str, Any]:
    """A run's compute keys: what its features were computed in, what was asked for, and whether
    TensorFlow's oneDNN path ran (null: decided on remote workers, on unless their image turns it off)."""
    return {"precision": plan.effective, "precision_requested": plan.requested, "onednn": plan.onednn}


class ModelOptions(PipelineOptions):
    """What every job that runs the model shares: the module, batching and model sharing."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model", default=DEFAULT_HANDLE,
                            help="S3D MIL-NCE module: TF Hub URL, local SavedModel directory or gs:// path "
                            f"(default: {DEFAULT_HANDLE})")
        parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                            help="what the video tower computes in (default: float32, the module as it is). "
                            "bfloat16: CPUs with AVX512_BF16 or AMX (Intel Sapphire Rapids and later, AMD Zen 4 and "
                            "later), about 1.5x float32 on Sapphire Rapids, embeddings at cosine 0.998 to float32's; float16: GPUs with "
                            "tensor cores (T4, L4, A100). Elsewhere a warning says what to expect. The text tower "
                            "stays float32. Where the machine cannot run it natively float32 runs instead, with "
                            "a warning. The output records what ran (precision) beside what was asked "
                            "(precision_requested); --skip_done counts only runs of the same precision")
        parser.add_argument("--batch_size", type=int, default=4,
                            help="largest batch sent to the model (default: 4; on CPU larger batches gain nothing "
                            "and cost memory, on GPU raise it)")
        parser.add_argument("--min_batch_size", type=int, default=1, help="smallest batch (default: 1)")
        parser.add_argument("--large_model", type=boolean_flag, nargs="?", const=True, default=False,
                            help="load one model per machine and share it across worker processes (GPU workers)")
        parser.add_argument("--model_copies", type=int, default=None,
                            help="exact number of shared model copies per machine, e.g. one per GPU "
                            "(implies sharing; default: one per process, or one per GPU with "
                            "--inference_accelerator)")
        parser.add_argument("--inference_accelerator", default=None,
                            help="a Dataflow accelerator resource hint put on the inference step only, e.g. "
                            "'type:nvidia-tesla-t4;count:1;install-nvidia-driver', or for L4 GPUs "
                            "'type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver'; a fusion "
                            "break before inference keeps decoding on CPU workers (right fitting); implies one "
                            "shared model copy per GPU")

    def accelerator(self) -> Accelerator | None:
        """The GPUs of a worker that runs the model: the inference step's hint, or the whole job's
        `worker_accelerator` service option (None on CPU workers)."""
        if self.inference_accelerator:
            return parse_accelerator(self.inference_accelerator, "--inference_accelerator")
        whole_job = worker_accelerator(self)
        return parse_accelerator(whole_job, "worker_accelerator") if whole_job else None

    def gpu_count(self) -> int:
        """GPUs per worker that runs the model (0 on CPU workers)."""
        accelerator = self.accelerator()
        return accelerator.count if accelerator else 0

    def precision_plan(self, task: str = "video") -> PrecisionPlan:
        """The precision the workers' video tower will compute in, decided once at launch.

        A local run's workers are this machine, so its facts decide (s3d.precision.plan_precision).
        Remote workers are not known here: only their GPUs are; each worker checks at load that it
        computes what the run records, and refuses to load otherwise. The text tower is float32.
        """
        requested = "float32" if task == "text" else self.precision
        if runs_locally(self):
            from s3d.devices import visible_gpus
            from s3d.precision import this_machine
            from s3d.quiet import import_tensorflow

            import_tensorflow()  # the workers are this machine: TensorFlow itself says what it runs
            gpus = visible_gpus()
            plan = plan_precision(requested, this_machine(gpus[0] if gpus else None))
        else:
            plan = plan_precision(requested, Machine(gpu_device="the workers' GPUs" if self.accelerator() else None))
        return dataclasses.replace(plan, requested=self.precision)

    def handler(self, task: str, progress: ProgressLog | None = None,
                plan: PrecisionPlan | None = None) -> S3DModelHandler:
        """The model handler these options describe, for `task` 'video' or 'text'.

        On GPU workers (either route: `--inference_accelerator` or the whole job's
        `worker_accelerator`) the default is one shared model copy per GPU: the SDK
        processes of a worker (one per vCPU on Dataflow) send their batches to it
        instead of each loading the model into the same GPU's memory; each copy claims
        its own GPU (`s3d.devices`). `plan` is the launch's precision_plan (computed here if not given).
        """
        gpus = self.gpu_count()
        copies = self.model_copies if self.model_copies is not None else (gpus or None)
        plan = plan or self.precision_plan(task)
        return S3DModelHandler(
            self.model, task, min_batch_size=self.min_batch_size, max_batch_size=self.batch_size,
            large_model=self.large_model or gpus > 0, model_copies=copies, progress=progress, expect_gpus=gpus,
            precision=plan.effective,
        )

    def validate_model(self) -> None:
        if not self.model:
            raise ValueError("--model must name a TF Hub URL or a SavedModel path")
        check_batch_sizes(self.min_batch_size, self.batch_size)
        if self.model_copies is not None and self.model_copies < 1:
            raise ValueError(f"--model_copies must be >= 1, got {self.model_copies}")
        whole_job = worker_accelerator(self)
        if self.inference_accelerator and whole_job:
            # Dataflow's "Right fitting" page: do not combine resource hints with worker_accelerator.
            raise ValueError(
                "--inference_accelerator (a resource hint on the inference step) and the worker_accelerator "
                "service option (GPUs on every worker) exclude each other: choose one"
            )
        accelerator = self.accelerator()
        if accelerator and self.inference_accelerator:
            accelerator.check_machine_type(accelerator.machine_type, "machine_type in --inference_accelerator")
        elif accelerator:
            machine_type = self.view_as(WorkerOptions).machine_type
            accelerator.check_machine_type(machine_type, "--machine_type")


# GPU type -> the machine families Dataflow can attach it to ("GPU support" in Dataflow's docs:
# T4 on N1 machines, L4 only on G2 machines).
GPU_MACHINE_FAMILIES = {"nvidia-tesla-t4": ("n1-",), "nvidia-l4": ("g2-",)}
NEEDS_MACHINE_TYPE = {"nvidia-l4": "g2-standard-8"}
_ACCELERATOR_FORM = "'type:nvidia-tesla-t4;count:1;install-nvidia-driver' (optionally ';machine_type:n1-standard-8')"


@dataclass(frozen=True)
class Accelerator:
    """A Dataflow accelerator spec: 'type:T;count:N[;machine_type:M];install-nvidia-driver...'."""

    type: str
    count: int = 1
    machine_type: str | None = None
    flags: tuple[str, ...] = ()

    def check_machine_type(self, machine_type: str | None, where: str) -> None:
        """Raises ValueError when `machine_type` cannot carry this GPU (or must be named and is not)."""
        families = GPU_MACHINE_FAMILIES.get(self.type)
        if machine_type is None:
            if self.type in NEEDS_MACHINE_TYPE:
                raise ValueError(
                    f"{self.type} GPUs run only on {families[0].upper().rstrip('-')} machines: name one with "
                    f"{where} (e.g. {NEEDS_MACHINE_TYPE[self.type]})"
                )
            return
        if families and not machine_type.startswith(families):
            raise ValueError(
                f"{self.type} GPUs run only on {' or '.join(f.rstrip('-').upper() for f in families)} machines, "
                f"got {where} {machine_type!r}"
            )


def parse_accelerator(value: str, flag: str) -> Accelerator:
    """Parses a Dataflow accelerator spec; ValueError names `flag` and the expected form."""
    fields, flags = {}, []
    for part in (p.strip() for p in value.split(";")):
        if ":" in part:
            key, _, field_value = part.partition(":")
            fields[key.strip()] = field_value.strip()
        elif part:
            flags.append(part)
    count = fields.get("count", "1")
    if "type" not in fields or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{flag} must look like {_ACCELERATOR_FORM}, got {value!r}")
    return Accelerator(fields["type"], int(count), fields.get("machine_type") or None, tuple(flags))


def worker_accelerator(options: PipelineOptions) -> str | None:
    """The whole job's accelerator: `--dataflow_service_options worker_accelerator=...`, if given."""
    for option in options.view_as(GoogleCloudOptions).dataflow_service_options or []:
        key, _, value = option.partition("=")
        if key.strip() == "worker_accelerator" and value.strip():
            return value.strip()
    return None


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


def add_lease_argument(group) -> None:
    group.add_argument(
        "--lease_settle_sec", type=float, default=SETTLE_SEC,
        help="on an object store, a launch writes the output prefix's lease (and each chunk's), waits this "
        "long and reads it back: of two launches at once, the later write wins and the other refuses "
        f"(default: {SETTLE_SEC:g}, enough for a distant store; a store on this host or network needs less, and "
        "a run in chunks pays it once a chunk). Local disk needs no wait")


def lease_settle_sec(options: PipelineOptions) -> float:
    value = options.view_as(IOOptions).lease_settle_sec
    if value is None or value < 0:
        raise ValueError(f"--lease_settle_sec must be >= 0, got {value}")
    return value


class IOOptions(PipelineOptions):
    """--input, --output_prefix, --wait and --log_level, shared by the jobs (Beam needs each flag defined once
    per process)."""

    @classmethod
    def _add_argparse_args(cls, parser, input_help: str | None = None, output_help: str | None = None):
        group = parser.add_argument_group("input and output")
        group.add_argument("--input", help=input_help or "what the job reads (see the job's --help)")
        group.add_argument("--output_prefix", help=output_help or "where the job writes its tables and run summary")
        group.add_argument("--wait", type=boolean_flag, nargs="?", const=True, default=True,
                           help="wait for the job to finish, then add its metrics to the run summary and print "
                           "it (default: true); --wait=false submits and returns, as a Flex Template launch "
                           "should (the job still writes its run summary when its tables are final); local "
                           "runs always wait")
        add_lease_argument(group)
        group = parser.add_argument_group("console")
        add_log_level_arguments(group)

    def validate_io(self, what: str) -> None:
        if not self.input:
            raise ValueError(f"--input is required: {what}")
        if not self.output_prefix:
            raise ValueError("--output_prefix is required: where the tables are written")
        lease_settle_sec(self)


DEFAULT_ALIGN_WINDOW_SEC = 5.0


class ExtractOptions(PipelineOptions):
    """`python -m pipeline.extract`: videos -> clips, videos and failures tables."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = add_decode_arguments(parser)
        group.add_argument("--split_sec", type=float, default=DEFAULT_SPLIT_SEC,
                           help="a video longer than this many seconds is split into parts at clip starts that "
                           "workers decode side by side, and joined again: the same rows as unsplit (a header "
                           "read per video; clips every --stride at a set --fps only). 0 turns it off "
                           f"(default: {DEFAULT_SPLIT_SEC:g})")
        group.add_argument("--decode_prefetch", type=int, default=2,
                           help="clips decoded ahead in a background thread while the model runs; "
                           "0 = decode inline (default: 2)")
        cls._add_incremental_args(parser)
        cls._add_input_args(parser)
        cls._add_captions_args(parser)

    @staticmethod
    def _add_captions_args(parser) -> None:
        group = parser.add_argument_group(
            "narration (docs/captions.md)",
            "Captions embedded with the text tower and aligned with each video's clips: a captions table, and "
            "captions, grounded_captions and grounded_fraction in videos.")
        group.add_argument("--captions", default=None, metavar="column|sidecar|TABLE",
                           help="where each video's captions are: 'column', the manifest's captions column (the "
                           "URI of a .vtt, .srt or .json file); 'sidecar', a file beside the video with its base "
                           "name (.vtt, .srt, or .<lang>.vtt, English first); or the path of a table (.parquet, "
                           ".csv or .jsonl with video_id or uri, start_sec, end_sec, text). Default: none")
        group.add_argument("--align_window_sec", type=float, default=DEFAULT_ALIGN_WINDOW_SEC,
                           help="a caption's best clip is sought within this many seconds of its span (narration "
                           f"is often a few seconds off what it describes; default: {DEFAULT_ALIGN_WINDOW_SEC:g})")

    def captions_settings(self) -> dict[str, Any] | None:
        """What --captions and --align_window_sec make of a run (its metadata's `captions`); None without captions."""
        return {"source": self.captions, "align_window_sec": self.align_window_sec} if self.captions else None

    @staticmethod
    def _add_input_args(parser) -> None:
        group = parser.add_argument_group(
            "manifest columns", "published corpora name their columns their own way (WebVid's CSV: --uri_column "
            "contentUrl --id_column videoid)")
        group.add_argument("--uri_column", default="uri", help="the column of the video's path or URL (default: uri)")
        group.add_argument("--id_column", default="video_id",
                           help="the column of the video's id; without one, the id is derived from the URI and "
                           "segment (default: video_id)")
        group.add_argument("--start_column", default="start_sec",
                           help="the column of a segment's start in seconds (default: start_sec)")
        group.add_argument("--end_column", default="end_sec",
                           help="the column of a segment's end in seconds (default: end_sec)")
        defaults = HttpSettings()
        group = parser.add_argument_group(
            "http(s) inputs", "videos and manifests at http:// and https:// URLs are read with range requests; "
            "transient errors (5xx, 429, timeouts, resets) are retried --io_retries times")
        group.add_argument("--http_max_per_host", type=int, default=defaults.max_per_host,
                           help="connections to one host at once from each worker process; a request waits for "
                           f"a free one (default: {defaults.max_per_host})")
        group.add_argument("--http_timeout_sec", type=float, default=defaults.timeout_sec,
                           help="the longest a response may stay silent before the read is retried "
                           f"(default: {defaults.timeout_sec:g})")
        group.add_argument("--http_user_agent", default=None,
                           help=f"the User-Agent header (default: {default_user_agent().split(' (')[0]} and what "
                           "the project is)")
        group.add_argument("--http_spool_limit_mb", type=int, default=defaults.spool_limit_mb,
                           help="a server that ignores Range requests is read whole into a temporary file on the "
                           "worker's disk, up to this size; a larger video fails (default: "
                           f"{defaults.spool_limit_mb})")

    def columns(self) -> Columns:
        return Columns(self.uri_column, self.id_column, self.start_column, self.end_column)

    def decode_options(self) -> DecodeOptions:
        """The decoder's options, built once by the job's entry point; ValueError names the flag."""
        return DecodeOptions.from_flags(self)

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
        group = parser.add_argument_group("runs in chunks")
        group.add_argument("--chunk_videos", type=int, default=0,
                           help="cut the input (after duplicates and --skip_done), sorted by video_id, into chunks "
                           "of at most this many videos, each a run of its own under PREFIX/chunks/NNNNN/ that "
                           "commits when done; the same command again resumes, running only the chunks not "
                           "complete. 0 = one run, all or nothing (default: 0)")
        group.add_argument("--parallel_chunks", type=int, default=1,
                           help="with --chunk_videos on Dataflow: chunks' jobs running at once, each a job named "
                           "JOB_NAME-cNNNNN; a failed job costs its chunk only, and the same command again runs "
                           "the chunks that did not complete (default: 1; local runs take one chunk at a time)")
        group.add_argument("--chunk_step", default="all",
                           help="with --chunk_videos, for a scheduler that runs the steps apart (the Airflow DAG): "
                           "'plan' writes or checks the plan and prints the chunks' names as a JSON list on its "
                           "last line; a chunk's name (00003) runs that chunk unless complete, under its own lease "
                           "(chunks may run side by side); 'aggregate' writes the run's summary once every chunk "
                           "is complete. Default: all, every step in this launch")
        group.add_argument("--overwrite", type=boolean_flag, nargs="?", const=True, default=False,
                           help="with --chunk_videos: start over, deleting a run in chunks under the prefix even "
                           "when made with other parameters (without it, such a run makes the launch refuse)")

    def validate_extract(self) -> None:
        if self.http_max_per_host is None or self.http_max_per_host < 1:
            raise ValueError(f"--http_max_per_host must be >= 1, got {self.http_max_per_host}")
        if self.http_timeout_sec is None or not self.http_timeout_sec > 0:
            raise ValueError(f"--http_timeout_sec must be > 0, got {self.http_timeout_sec}")
        if self.http_spool_limit_mb is None or self.http_spool_limit_mb < 0:
            raise ValueError(f"--http_spool_limit_mb must be >= 0, got {self.http_spool_limit_mb}")
        if not all((self.uri_column, self.id_column, self.start_column, self.end_column)):
            raise ValueError("--uri_column, --id_column, --start_column and --end_column must not be empty")
        check_decode_args(self.decode_prefetch, self.io_retries, self.io_retry_backoff_sec)
        if (self.retry_stages or self.retry_errors) and not self.retry_failures:
            raise ValueError("--retry_stages and --retry_errors go with --retry_failures")
        check_split_sec(self.split_sec)
        if self.align_window_sec is None or not self.align_window_sec >= 0:
            raise ValueError(f"--align_window_sec must be >= 0, got {self.align_window_sec}")
        if self.captions and self.captions not in CAPTION_FILES and \
                not self.captions.lower().endswith((".parquet", ".csv", ".jsonl", ".json")):
            raise ValueError(f"--captions is 'column', 'sidecar' or a .parquet, .csv or .jsonl table, got "
                             f"{self.captions!r}")
        if self.chunk_videos is None or self.chunk_videos < 0:
            raise ValueError(f"--chunk_videos must be >= 0 (0: one run, no chunks), got {self.chunk_videos}")
        if self.parallel_chunks is None or self.parallel_chunks < 1:
            raise ValueError(f"--parallel_chunks must be >= 1, got {self.parallel_chunks}")
        if self.chunk_step != "all" and not self.chunk_videos:
            raise ValueError("--chunk_step goes with --chunk_videos")
        if self.chunk_step not in ("all", "plan", "aggregate") and not re.fullmatch(r"\d{5}", self.chunk_step or ""):
            raise ValueError(f"--chunk_step takes all, plan, aggregate or a chunk's name (00003), got {self.chunk_step!r}")
        if self.chunk_videos and self.retry_failures:
            raise ValueError("--chunk_videos and --retry_failures exclude each other: retry an earlier run's "
                             "failures in one run (they are a small share of it)")
        if self.overwrite and not self.chunk_videos:
            raise ValueError("--overwrite goes with --chunk_videos (a run without chunks always replaces the "
                             "earlier run under its prefix)")
