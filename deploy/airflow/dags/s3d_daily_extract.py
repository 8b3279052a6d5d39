"""Airflow DAG: every day, extract S3D features for that day's manifest, then check the failure rate.

The extraction runs in the project's own Python environment (S3D_PYTHON; Airflow's and
TensorFlow's dependencies do not mix), on the DirectRunner by default or on Dataflow with
the `runner` parameter. Output goes to a date-partitioned prefix: OUTPUT_ROOT/dt=YYYY-MM-DD/.

Environment (on the Airflow workers):
    S3D_PYTHON  the project's interpreter, e.g. /opt/s3d/.venv/bin/python (default: the
                .venv next to this repository's checkout)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration
from airflow.sdk import DAG, Param, task

REPO = Path(__file__).resolve().parents[3]
S3D_PYTHON = os.environ.get("S3D_PYTHON", str(REPO / ".venv" / "bin" / "python"))

PARAMS = {
    "manifest_root": Param("gs://my-bucket/manifests", type="string",
                           description="folder of daily manifests, one URI a line: MANIFEST_ROOT/YYYY-MM-DD.txt"),
    "output_root": Param("gs://my-bucket/s3d-features", type="string",
                         description="features go to OUTPUT_ROOT/dt=YYYY-MM-DD/"),
    "model": Param("https://tfhub.dev/deepmind/mil-nce/s3d/1", type="string",
                   description="TF Hub URL, SavedModel directory or gs:// path of the module"),
    "runner": Param("DirectRunner", enum=["DirectRunner", "DataflowRunner"], description="where the job runs"),
    "skip_done": Param("", type="string", description="comma-separated earlier prefixes whose videos are skipped"),
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

OUTPUT_PREFIX = "{{ params.output_root }}/dt={{ ds }}"
PIPELINE_OPTIONS = {
    "input": "{{ params.manifest_root }}/{{ ds }}.txt",
    "output_prefix": OUTPUT_PREFIX,
    "model": "{{ params.model }}",
    "skip_done": "{{ params.skip_done }}",
    "inference_accelerator": "{{ params.inference_accelerator }}",
    "temp_location": "{{ params.temp_location if params.runner == 'DataflowRunner' else '' }}",
    "sdk_container_image": "{{ params.worker_image }}",
    "setup_file": "{{ '' if params.worker_image else '" + str(REPO / "setup.py") + "' }}",
}


def read_summary(output_prefix: str) -> dict:
    """The run summary the job writes last, from local disk or Cloud Storage."""
    path = f"{output_prefix.rstrip('/')}/run_summary.json"
    if path.startswith("gs://"):
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        bucket, _, name = path[len("gs://"):].partition("/")
        return json.loads(GCSHook().download(bucket_name=bucket, object_name=name))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def failure_rate(summary: dict) -> float:
    counts = summary["counts"]
    total = counts["videos_ok"] + counts["videos_failed"]
    return counts["videos_failed"] / total if total else 0.0


with DAG(
    dag_id="s3d_daily_extract",
    description="Daily S3D MIL-NCE feature extraction with a failure-rate check",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=False,
    tags=["s3d", "beam"],
) as dag:
    extract = BeamRunPythonPipelineOperator(
        task_id="extract",
        py_file="pipeline.extract",
        py_options=["-m"],  # python -m pipeline.extract, from the project's environment
        py_interpreter=S3D_PYTHON,
        runner="{{ params.runner }}",
        pipeline_options=PIPELINE_OPTIONS,
        dataflow_config=DataflowConfiguration(
            job_name="s3d-extract-{{ ds_nodash }}",
            project_id="{{ params.project }}",
            location="{{ params.region }}",
            wait_until_finished=True,
        ),
    )

    @task
    def check_failure_rate(output_prefix: str, max_failure_rate: float) -> float:
        """Fails the run when too many videos failed; the failures table says which and why."""
        summary = read_summary(output_prefix)
        rate = failure_rate(summary)
        print(f"{summary['counts']} -> failure rate {rate:.3f} (max {max_failure_rate})")
        if rate > float(max_failure_rate):
            raise ValueError(
                f"{rate:.1%} of the videos failed (more than {float(max_failure_rate):.1%}): see "
                f"{output_prefix}/failures/ for the reasons"
            )
        return rate

    extract >> check_failure_rate(OUTPUT_PREFIX, "{{ params.max_failure_rate }}")
