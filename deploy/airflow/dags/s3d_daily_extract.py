"""Airflow DAG: every day, extract S3D features for the day just ended, then check the failure rate.

Both steps run in the project's environment: `python -m pipeline.extract`, then
`python -m pipeline.check_run`, which reads the run summary through the project's own
output layout (so the DAG derives no paths itself, and reads gs:// like the job writes it).

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
    S3D_PYTHON      required: the project's interpreter, e.g. /opt/s3d/.venv/bin/python
    S3D_SETUP_FILE  the project's setup.py on the Airflow workers; needed for Dataflow runs
                    without a worker image (the job refuses to start without one or the other)
    S3D_DEFERRABLE  "true": Dataflow runs free their worker slot while the job runs (needs a
                    triggerer); local runs are never deferred
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
from airflow.sdk import DAG, CronTriggerTimetable, Param


def _required_setting(name: str, example: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        # A DAG import error, shown in the Airflow UI with this message.
        raise RuntimeError(f"set the environment variable {name} on the Airflow workers, e.g. {name}={example}")
    return value


S3D_PYTHON = _required_setting("S3D_PYTHON", "/opt/s3d/.venv/bin/python")
S3D_SETUP_FILE = os.environ.get("S3D_SETUP_FILE", "").strip()
S3D_DEFERRABLE = os.environ.get("S3D_DEFERRABLE", "").strip().lower() in ("1", "true", "yes")

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
                       "float16 on GPU workers (see the README); part of the run's identity for skip_done"),
    "max_failure_rate": Param(0.05, type="number", minimum=0, maximum=1,
                              description="the run fails when more than this share of its videos failed"),
    # Dataflow only:
    "project": Param("my-project", type="string"),
    "region": Param("us-central1", type="string"),
    "temp_location": Param("gs://my-bucket/tmp", type="string"),
    "worker_image": Param("", type="string", description="sdk_container_image (empty: ship setup.py)"),
    "inference_accelerator": Param("", type="string",
                                   description="e.g. type:nvidia-tesla-t4;count:1;install-nvidia-driver"),
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
    "temp_location": "{{ params.temp_location if params.runner == 'DataflowRunner' else '' }}",
    "sdk_container_image": "{{ params.worker_image }}",
    "setup_file": "{{ '' if params.worker_image else " + json.dumps(S3D_SETUP_FILE) + " }}",
    # The launcher submits and returns; Airflow's Dataflow hook waits for the job (and cancels it
    # when the task is killed). A string: the Beam provider's beam_options_to_args drops options
    # whose value is False.
    "wait": "false",
}


class ExtractDataflowConfiguration(DataflowConfiguration):
    """DataflowConfiguration renders only job_name, location and gcp_conn_id; the project is a param too."""

    template_fields = (*DataflowConfiguration.template_fields, "project_id")


class ExtractOperator(BeamRunPythonPipelineOperator):
    """Deferrable only on Dataflow: a deferred local run would execute the job inside the triggerer."""

    def execute(self, context):
        self.deferrable = self.deferrable and self.runner.lower() == "dataflowrunner"
        return super().execute(context)


with DAG(
    dag_id="s3d_daily_extract",
    description="Daily S3D MIL-NCE feature extraction with a failure-rate check",
    schedule=CronTriggerTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    user_defined_macros={"processing_day": processing_day},
    render_template_as_native_obj=False,
    tags=["s3d", "beam"],
) as dag:
    extract = ExtractOperator(
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
    )

    # The check runs in the project's environment and reads the run through the project's own
    # output layout (pipeline.check_run), on any filesystem the job can write to.
    check = BashOperator(
        task_id="check_failure_rate",
        bash_command=f"{shlex.quote(S3D_PYTHON)} -m pipeline.check_run "
        '--output_prefix "$OUTPUT_PREFIX" --max_failure_rate "$MAX_FAILURE_RATE"',
        env={"OUTPUT_PREFIX": OUTPUT_PREFIX, "MAX_FAILURE_RATE": "{{ params.max_failure_rate }}"},
        append_env=True,
    )

    extract >> check
