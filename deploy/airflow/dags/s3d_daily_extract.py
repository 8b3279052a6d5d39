"""Airflow DAG: every day, extract S3D features for the day just ended, in chunks, then check the failure rate.

The day's run is a run in chunks (the job's --chunk_videos, the `chunk_videos` parameter):
plan_chunks cuts the day's manifest into chunks, `extract` maps over them (dynamic task
mapping: one task instance, and on Dataflow one job, per chunk, retried alone when it fails),
aggregate writes the run's summary once every chunk is complete, and check_failure_rate reads
it. Every step runs in the project's environment (`python -m pipeline.extract --chunk_step
...`, then `python -m pipeline.check_run`), through the project's own output layout (so the
DAG derives no paths itself, and reads gs:// like the job writes it).

The extraction runs in the project's own Python environment (Airflow's and TensorFlow's
dependencies do not mix), on the DirectRunner or on Dataflow (the `runner` parameter).
Output goes to a date-partitioned prefix: OUTPUT_ROOT/dt=YYYY-MM-DD/.

The day a run processes: the `day` parameter when given (reprocessing, backfills),
otherwise the day before the run's logical date, or before its run time when a manual
trigger has no logical date. The schedule is a CronTriggerTimetable, so a run at
2026-11-25T00:00 has that logical date and processes 2026-11-24, whatever the
`create_cron_data_intervals` setting says (Airflow's "Timetables" page: a trigger
timetable's run has no data interval; its logical date is when it runs).

Configuration, from the environment of the Airflow workers and DAG processor (Cloud
Composer: the environment's variables; the DAG file may be all a Composer bucket holds):
    S3D_PYTHON      required: the project's interpreter, e.g. /opt/s3d/.venv/bin/python. It launches
                    the jobs, so Dataflow workers must run its Python minor version: build the
                    worker image (`worker_image`) with --build-arg PYTHON_VERSION=<its X.Y>; a worker
                    on another version fails at its first bundle, naming both
    S3D_SETUP_FILE  the project's setup.py on the Airflow workers; needed for Dataflow runs
                    without a worker image (the job refuses to start without one or the other)
    S3D_DEFERRABLE  "true": Dataflow runs free their worker slot while the job runs (needs a
                    triggerer); local runs are never deferred
    S3D_START_DATE  the first day the schedule covers, YYYY-MM-DD (default 2026-11-01)
    S3D_RETRY_DELAY_MIN  minutes before a chunk's first retry (default 15; each next one waits twice as long)

Missed days, retries and time limits (the policy; tests/test_dag.py checks each):
- catchup=True with max_active_runs=1: a day the scheduler missed (Airflow down, the DAG
  paused) is run later, oldest first, one at a time; none is skipped silently. Set
  S3D_START_DATE to the first day you want processed, or the DAG backfills from the default.
- extract (each chunk): 2 retries, 15 minutes apart, doubling. A retry is safe: while the chunk's
  Dataflow job still runs, the retry waits for it (ExtractOperator) instead of starting a
  duplicate, and the job's lease on its chunk refuses any other launch there; a retry after it
  ended runs the chunk again from a clean chunk directory. A complete chunk is never run again.
- extract: execution_timeout 20 hours, so a day's run ends (and is retried) before the next
  day's is due; check_failure_rate: no retry (a retry gives the same answer), 30 minutes at most.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronTriggerTimetable, Param, task


def _required_setting(name: str, example: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        # A DAG import error, shown in the Airflow UI with this message.
        raise RuntimeError(f"set the environment variable {name} on the Airflow workers, e.g. {name}={example}")
    return value


S3D_PYTHON = _required_setting("S3D_PYTHON", "/opt/s3d/.venv/bin/python")
S3D_SETUP_FILE = os.environ.get("S3D_SETUP_FILE", "").strip()
S3D_DEFERRABLE = os.environ.get("S3D_DEFERRABLE", "").strip().lower() in ("1", "true", "yes")
S3D_START_DATE = pendulum.parse(os.environ.get("S3D_START_DATE", "").strip() or "2026-11-01", tz="UTC")

EXTRACT_RETRIES = 2

def _minutes_setting(name: str, default: float) -> datetime.timedelta:
    value = os.environ.get(name, "").strip()
    try:
        minutes = float(value) if value else default
    except ValueError:
        minutes = -1
    if minutes < 0:
        raise RuntimeError(f"the environment variable {name} must be a number of minutes >= 0, got {value!r}")
    return datetime.timedelta(minutes=minutes)


EXTRACT_RETRY_DELAY = _minutes_setting("S3D_RETRY_DELAY_MIN", 15)
EXTRACT_TIMEOUT = datetime.timedelta(hours=20)
CHECK_TIMEOUT = datetime.timedelta(minutes=30)

PARAMS = {
    "manifest_root": Param("gs://my-bucket/manifests", type="string",
                           description="folder of daily manifests, one URI a line: MANIFEST_ROOT/YYYY-MM-DD.txt"),
    "output_root": Param("gs://my-bucket/s3d-features", type="string",
                         description="features go to OUTPUT_ROOT/dt=YYYY-MM-DD/"),
    "model": Param("gs://my-bucket/models/mil-nce-s3d-1", type="string",
                   description="SavedModel directory or gs:// path of the module (workers may have no "
                   "internet: copy the TF Hub module to Cloud Storage)"),
    "day": Param("", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
                 description="YYYY-MM-DD to process; empty: the day before the run's logical date"),
    "runner": Param("DirectRunner", enum=["DirectRunner", "DataflowRunner"], description="where the job runs"),
    "skip_done": Param("", type="string", description="comma-separated earlier prefixes whose videos are skipped"),
    "precision": Param("float32", enum=["float32", "bfloat16", "float16"],
                       description="what the video tower computes in: bfloat16 on CPUs with AVX512_BF16/AMX, "
                       "float16 on GPU workers (see docs/precision.md); part of the run's identity for skip_done"),
    "chunk_videos": Param(10000, type="integer", minimum=1,
                          description="videos per chunk: each chunk commits on its own, and a failed one is retried "
                          "alone (the job's --chunk_videos)"),
    "max_failure_rate": Param(0.05, type="number", minimum=0, maximum=1,
                              description="the run fails when more than this share of its videos failed"),
    # Dataflow only:
    "project": Param("my-project", type="string"),
    "region": Param("us-central1", type="string"),
    "temp_location": Param("gs://my-bucket/tmp", type="string"),
    "worker_image": Param("", type="string", description="sdk_container_image (empty: ship setup.py)"),
    "inference_accelerator": Param("", type="string",
                                   description="GPUs on the inference step only (shuffles every clip to them; "
                                   "see the cost table in docs/scale.md), e.g. type:nvidia-tesla-t4;count:1;install-nvidia-driver"),
    "dataflow_service_options": Param("", type="string",
                                      description="GPUs on every worker, no shuffle (the cheaper route at scale), e.g. "
                                      "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"),
    "machine_type": Param("", type="string", description="worker machine type, e.g. g2-standard-8 for an L4; "
                          "empty: Dataflow's default"),
    "disk_size_gb": Param("", type="string", pattern=r"^(\d+)?$",
                          description="worker boot disk in GB; 50 on GPU routes (GPU images are several GB, "
                          "the default batch disk is 25 GB); empty: Dataflow's default"),
    "batch_size": Param("", type="string", pattern=r"^(\d+)?$",
                        description="clips per inference batch (the job's --batch_size); empty: its default"),
}


def processing_day(params: dict, dag_run) -> str:
    """The day a run processes, YYYY-MM-DD (see the module docstring)."""
    if params.get("day"):
        return str(params["day"])
    reference = dag_run.logical_date or dag_run.run_after  # a manual trigger may have no logical date
    return (reference - datetime.timedelta(days=1)).strftime("%Y-%m-%d")


DAY = "{{ processing_day(params, dag_run) }}"
OUTPUT_PREFIX = "{{ params.output_root }}/dt=" + DAY
PIPELINE_OPTIONS = {
    "input": "{{ params.manifest_root }}/" + DAY + ".txt",
    "output_prefix": OUTPUT_PREFIX,
    "model": "{{ params.model }}",
    "skip_done": "{{ params.skip_done }}",
    "precision": "{{ params.precision }}",
    "inference_accelerator": "{{ params.inference_accelerator }}",
    "dataflow_service_options": "{{ params.dataflow_service_options if params.runner == 'DataflowRunner' else '' }}",
    "machine_type": "{{ params.machine_type if params.runner == 'DataflowRunner' else '' }}",
    "disk_size_gb": "{{ params.disk_size_gb if params.runner == 'DataflowRunner' else '' }}",
    "batch_size": "{{ params.batch_size }}",
    "temp_location": "{{ params.temp_location if params.runner == 'DataflowRunner' else '' }}",
    "sdk_container_image": "{{ params.worker_image }}",
    "setup_file": "{{ '' if params.worker_image else " + json.dumps(S3D_SETUP_FILE) + " }}",
    # The launcher submits and returns; Airflow's Dataflow hook waits for the job (and cancels it
    # when the task is killed). A string: the Beam provider's beam_options_to_args drops options
    # whose value is False.
    "wait": "false",
    "chunk_videos": "{{ params.chunk_videos }}",
}

# The plan and aggregate steps run the launcher only (no job): the same options, so the plan's
# parameters are the chunks' (a run's identity includes the model, preprocessing and precision).
STEP_OPTIONS = {
    **{k: v for k, v in PIPELINE_OPTIONS.items() if k != "wait"},
    "runner": "{{ params.runner }}",
    "project": "{{ params.project if params.runner == 'DataflowRunner' else '' }}",
    "region": "{{ params.region if params.runner == 'DataflowRunner' else '' }}",
}


def step_command(step: str) -> str:
    """The launcher's command for a chunk step; each option's value comes from the task's environment
    (rendered there), so no value is ever parsed by the shell. An empty value is an option left out."""
    flags = " ".join(f'"--{name}=${{S3D_OPTION_{name.upper()}}}"' for name in STEP_OPTIONS)
    return f"{shlex.quote(S3D_PYTHON)} -m pipeline.extract {flags} --chunk_step={step}"


STEP_ENV = {f"S3D_OPTION_{name.upper()}": value for name, value in STEP_OPTIONS.items()}


def chunk_names(plan_line: str) -> list[str]:
    """The chunks the plan step printed (its last line, a JSON list), to map `extract` over."""
    names = json.loads(plan_line)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"the plan step's last line is not a JSON list of chunk names: {plan_line!r}")
    return names


class ExtractDataflowConfiguration(DataflowConfiguration):
    """DataflowConfiguration renders only job_name, location and gcp_conn_id; the project is a param too."""

    template_fields = (*DataflowConfiguration.template_fields, "project_id")


class ExtractOperator(BeamRunPythonPipelineOperator):
    """Deferrable only on Dataflow: a deferred local run would execute the job inside the triggerer.

    A retry whose day's Dataflow job still runs (the first attempt's worker died, its job did not)
    waits for that job instead of starting a second one: the job name is fixed per day, and an
    active job is looked up by it (Beam appends a suffix, so by prefix, as the provider's hook does).
    """

    def execute(self, context):
        dataflow = self.runner.lower() == "dataflowrunner"
        self.deferrable = self.deferrable and dataflow
        if dataflow and self._wait_for_a_live_job():
            return None
        return super().execute(context)

    def _wait_for_a_live_job(self) -> bool:
        from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

        config = self.dataflow_config
        hook = DataflowHook(gcp_conn_id=config.gcp_conn_id, poll_sleep=config.poll_sleep,
                            impersonation_chain=config.impersonation_chain)
        if not hook.is_job_dataflow_running(name=config.job_name, project_id=config.project_id,
                                            location=config.location):
            return False
        self.log.warning("a Dataflow job named %s* still runs (an earlier attempt's): waiting for it instead of "
                         "starting another", config.job_name)
        hook.wait_for_done(job_name=config.job_name, location=config.location, project_id=config.project_id)
        return True


class ExtractChunkOperator(ExtractOperator):
    """ExtractOperator for one chunk of the day's run (`chunk`, mapped): the launcher runs that chunk
    only, as a Dataflow job of its own fixed name, DAY_JOB-cNNNNN."""

    def __init__(self, *, chunk: str, **kwargs):
        super().__init__(**kwargs)
        self.chunk = chunk

    def execute(self, context):
        self.pipeline_options = {**self.pipeline_options, "chunk_step": self.chunk}
        self.dataflow_config.job_name = f"{self.dataflow_config.job_name}-c{self.chunk}"
        return super().execute(context)


with DAG(
    dag_id="s3d_daily_extract",
    description="Daily S3D MIL-NCE feature extraction with a failure-rate check",
    schedule=CronTriggerTimetable("@daily", timezone="UTC"),
    start_date=S3D_START_DATE,
    catchup=True,  # missed days run later, oldest first (the module's text)
    max_active_runs=1,
    params=PARAMS,
    user_defined_macros={"processing_day": processing_day},
    render_template_as_native_obj=False,
    tags=["s3d", "beam"],
) as dag:
    plan_chunks = BashOperator(
        task_id="plan_chunks",
        bash_command=step_command("plan"),  # its last line, the chunks' names, is the task's XCom
        env=STEP_ENV,
        append_env=True,
        retries=EXTRACT_RETRIES,
        retry_delay=EXTRACT_RETRY_DELAY,
        execution_timeout=CHECK_TIMEOUT,
    )
    names = task(chunk_names, task_id="chunk_names")(plan_chunks.output)

    extract = ExtractChunkOperator.partial(
        task_id="extract",
        py_file="pipeline.extract",
        py_options=["-m"],  # python -m pipeline.extract, from the project's environment
        py_interpreter=S3D_PYTHON,
        runner="{{ params.runner }}",
        pipeline_options=PIPELINE_OPTIONS,
        dataflow_config=ExtractDataflowConfiguration(
            job_name="s3d-extract-{{ processing_day(params, dag_run) | replace('-', '') }}",
            project_id="{{ params.project }}",
            location="{{ params.region }}",
            wait_until_finished=True,
        ),
        deferrable=S3D_DEFERRABLE,
        retries=EXTRACT_RETRIES,
        retry_delay=EXTRACT_RETRY_DELAY,
        retry_exponential_backoff=True,
        execution_timeout=EXTRACT_TIMEOUT,
    ).expand(chunk=names)

    aggregate = BashOperator(
        task_id="aggregate",
        bash_command=step_command("aggregate"),
        env=STEP_ENV,
        append_env=True,
        retries=0,  # it fails only when a chunk is not complete: a retry gives the same answer
        execution_timeout=CHECK_TIMEOUT,
    )

    # The check runs in the project's environment and reads the run through the project's own
    # output layout (pipeline.check_run), on any filesystem the job can write to.
    check = BashOperator(
        task_id="check_failure_rate",
        bash_command=f"{shlex.quote(S3D_PYTHON)} -m pipeline.check_run "
        '--output_prefix "$OUTPUT_PREFIX" --max_failure_rate "$MAX_FAILURE_RATE"',
        env={"OUTPUT_PREFIX": OUTPUT_PREFIX, "MAX_FAILURE_RATE": "{{ params.max_failure_rate }}"},
        append_env=True,
        retries=0,
        execution_timeout=CHECK_TIMEOUT,
    )

    plan_chunks >> names >> extract >> aggregate >> check
