"""What a job prints besides its results: log levels, Beam's chatter, worker processes' lines.

By default a job logs this project's INFO lines and everyone's warnings. Beam's INFO chatter
stays off the console, except the Dataflow client's "Created job with id" line, which
Airflow's hooks read. Workers started by `--direct_running_mode multi_processing` send
their log lines to the launcher wrapped in a protobuf dump; they are shown as plain lines
with the worker's source location, and the ones Beam's workers always print (their own
unparsed options, no semi-persistent directory, no resource module) are dropped unless
--log_level info or debug asks for everything.
"""

from __future__ import annotations

import logging

from s3d.quiet import set_up_console

# The packages whose INFO lines a command shows by default: this project's.
OWN_LOGGERS = ("pipeline", "transforms", "s3d", "decoder", "benchmarks")

# Beam's Dataflow client logs "Created job with id: [ID]" at INFO. Airflow's Beam and Dataflow
# hooks find the job by that line in the launcher's output (their JOB_ID_PATTERN): without it a
# killed task does not cancel the job and no job link is saved. It stays at INFO.
JOB_ID_LOGGER = "apache_beam.runners.dataflow.internal.apiclient"
# The local job service re-logs every worker process's lines as "Worker: <LogEntry proto>".
WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"

# Lines Beam logs on every run that say nothing about this job.
BEAM_NOISE = (
    "apitools not found",  # the optional GCP extra
    "Resource module is not available",  # RunInference's memory metric, on every batch
    "No semi_persistent_directory found",  # every worker process at start
    "Discarding unparseable args",  # workers listing the job's own options, which they ignore
)


class WorkerLines(logging.Filter):
    """Unwraps worker processes' forwarded log entries; drops Beam's known noise unless verbose."""

    def __init__(self, keep_noise: bool = False):
        super().__init__()
        self._keep_noise = keep_noise

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == WORKER_LOGGER and record.msg == "Worker: %s" and record.args:
            entry = _parse_log_entry(record.args[0])
            if entry is not None:
                message, location = entry
                record.msg, record.args = message, ()
                record.name = f"worker {location}" if location else "worker"
        return self._keep_noise or not record.getMessage().startswith(BEAM_NOISE)


def _parse_log_entry(text: str) -> tuple[str, str] | None:
    """(message, short source location) of a LogEntry in protobuf text format, or None."""
    from apache_beam.portability.api import beam_fn_api_pb2
    from google.protobuf import text_format

    try:
        entry = text_format.Parse(text, beam_fn_api_pb2.LogEntry(), allow_unknown_field=True)
    except text_format.ParseError:
        return None
    location = entry.log_location
    path, _, line = location.rpartition(":")
    if path and line.isdigit():
        location = "/".join(path.split("/")[-2:]) + ":" + line
    return entry.message, location


def configure_logging(level: str | None = None) -> None:
    """The console of a command of this package, a job's launcher included (see the module docstring);
    call before TensorFlow loads."""
    set_up_console(level, OWN_LOGGERS)
    verbose = level in ("info", "debug")
    logging.getLogger("apache_beam").setLevel(logging.DEBUG if level == "debug" else
                                              logging.INFO if verbose else logging.WARNING)
    logging.getLogger(JOB_ID_LOGGER).setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerLines(keep_noise=verbose))
