"""The Airflow DAG, in Airflow's own environment (make test-airflow): import, rendering, real runs.

The extraction itself runs in the project's environment (S3D_PYTHON), as in production;
videos and the stand-in model are made there too.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
S3D_PYTHON = os.environ["S3D_PYTHON"]
UTC = datetime.UTC


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("s3d_daily_extract")


def _extract(dag, chunk: str = "00000"):
    """The `extract` task of one chunk, as a mapped task instance runs it."""
    return dag.get_task("extract").unmap({"chunk": chunk})


def test_dag_imports_without_errors_and_has_its_tasks(dag):
    assert dag is not None
    assert sorted(t.task_id for t in dag.tasks) == [
        "aggregate", "check_failure_rate", "chunk_names", "extract", "plan_chunks"]
    assert dag.get_task("plan_chunks").downstream_task_ids == {"chunk_names"}
    assert dag.get_task("extract").upstream_task_ids == {"chunk_names"}
    assert dag.get_task("extract").downstream_task_ids == {"aggregate"}
    assert dag.get_task("aggregate").downstream_task_ids == {"check_failure_rate"}


def test_without_the_interpreter_setting_the_import_error_says_what_to_set():
    env = {k: v for k, v in os.environ.items() if k != "S3D_PYTHON"}
    code = f"import runpy; runpy.run_path({str(DAGS / 's3d_daily_extract.py')!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "set the environment variable S3D_PYTHON" in proc.stderr


def _params(dag) -> dict:
    return {k: v.value if hasattr(v, "value") else v for k, v in dag.params.items()}


def _render(dag, dag_run, **params):
    op = _extract(dag)
    context = {"params": {**_params(dag), **params}, "dag_run": dag_run}
    # Nested objects are rendered in place: render a copy, as each task run renders its own.
    return (op.render_template(op.pipeline_options, context),
            op.render_template(copy.deepcopy(op.dataflow_config), context),
            op.render_template(op.runner, context))


def _scheduled_run(dag, after: datetime.datetime):
    """The next scheduled run after `after`, as the DAG's own timetable makes it."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    info = coerce_to_core_timetable(dag.timetable).next_dagrun_info(
        last_automated_data_interval=DataInterval(after, after),
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    return SimpleNamespace(logical_date=info.logical_date, run_after=info.run_after)


def test_a_scheduled_run_processes_the_day_that_just_ended(dag):
    run = _scheduled_run(dag, datetime.datetime(2026, 11, 24, 0, 0, tzinfo=UTC))
    assert run.logical_date == datetime.datetime(2026, 11, 25, tzinfo=UTC)  # runs at midnight...
    options, config, runner = _render(dag, run)
    # ...and reads the manifest of the day before, not of the day it runs on.
    assert options["input"] == "gs://my-bucket/manifests/2026-11-24.txt"
    assert options["output_prefix"] == "gs://my-bucket/s3d-features/dt=2026-11-24"
    assert options["model"].startswith("gs://")  # workers may have no internet
    assert options["wait"] == "false"  # a string: the Beam hook drops False
    assert runner == "DirectRunner"
    assert options["chunk_videos"] == "10000"
    assert config.job_name == "s3d-extract-20261124"  # the chunk's suffix is added when it runs
    # DataflowConfiguration does not template project_id; the DAG's subclass does.
    assert config.project_id == "my-project" and config.location == "us-central1"


def test_a_manual_run_without_a_logical_date_processes_the_day_before_it_ran(dag):
    run = SimpleNamespace(logical_date=None, run_after=datetime.datetime(2026, 11, 26, 9, 30, tzinfo=UTC))
    options, config, _ = _render(dag, run, project="other-project", region="europe-west4")
    assert options["input"] == "gs://my-bucket/manifests/2026-11-25.txt"
    assert config.job_name == "s3d-extract-20261125"
    assert config.project_id == "other-project" and config.location == "europe-west4"


def test_the_day_parameter_overrides_the_date(dag):
    run = SimpleNamespace(logical_date=None, run_after=datetime.datetime(2026, 11, 26, tzinfo=UTC))
    options, config, _ = _render(dag, run, day="2026-10-01")
    assert options["output_prefix"].endswith("dt=2026-10-01") and config.job_name == "s3d-extract-20261001"


def test_setup_file_comes_from_configuration_and_is_dropped_for_a_worker_image(dag):
    run = SimpleNamespace(logical_date=None, run_after=datetime.datetime(2026, 11, 26, tzinfo=UTC))
    options, _, _ = _render(dag, run)
    assert options["setup_file"] == os.environ.get("S3D_SETUP_FILE", "")
    options, _, _ = _render(dag, run, worker_image="us-docker.pkg.dev/p/r/worker:gpu")
    assert options["setup_file"] == "" and options["sdk_container_image"] == "us-docker.pkg.dev/p/r/worker:gpu"


def test_the_job_id_line_the_launcher_prints_is_what_airflow_parses():
    """The launcher's logging (pipeline.runner) lets Beam's 'Created job with id' line through,
    and Airflow's Dataflow hook extracts the id from it."""
    from airflow.providers.google.cloud.hooks.dataflow import process_line_and_extract_dataflow_job_id_callback

    code = (
        "import logging; from pipeline.console import configure_logging, JOB_ID_LOGGER; configure_logging(); "
        "logging.getLogger(JOB_ID_LOGGER).info('Created job with id: [%s]', '2026-11-26_01_02_03-123')"
    )
    proc = subprocess.run([S3D_PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = []
    callback = process_line_and_extract_dataflow_job_id_callback(found.append)
    for line in (proc.stdout + proc.stderr).splitlines():
        callback(line)
    assert found == ["2026-11-26_01_02_03-123"]


def _project(code: str) -> None:
    subprocess.run([S3D_PYTHON, "-c", code], check=True, timeout=600)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("airflow")
    model = d / "model"
    subprocess.run([S3D_PYTHON, "-m", "s3d.export", "--output", str(model)], check=True, timeout=600)
    manifests = d / "manifests"
    manifests.mkdir()
    _project(
        "from synthetic.videos import write_video\n"
        f"write_video({str(d / 'a.mp4')!r}, 30, fps=10)\n"
        f"write_video({str(d / 'b.mp4')!r}, 20, fps=10, codec='mjpeg', pix_fmt='yuvj420p')\n"
    )
    (manifests / "2026-11-24.txt").write_text(f"{d / 'a.mp4'}\n{d / 'b.mp4'}\n")
    (d / "broken.mp4").write_text("not a video")
    (manifests / "2026-11-25.txt").write_text(f"{d / 'a.mp4'}\n{d / 'broken.mp4'}\n")
    return {"dir": d, "model": str(model), "manifests": str(manifests), "output": str(d / "features")}


def _conf(inputs, max_failure_rate: float) -> dict:
    return {"manifest_root": inputs["manifests"], "output_root": inputs["output"], "model": inputs["model"],
            "runner": "DirectRunner", "max_failure_rate": max_failure_rate}


def _summary(inputs, day: str) -> dict:
    return json.loads((Path(inputs["output"]) / f"dt={day}" / "run_summary.json").read_text())


def test_a_scheduled_style_run_extracts_the_day_before_its_logical_date(dag, inputs, monkeypatch, capfd, caplog):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # as on a scheduler nobody tuned
    with caplog.at_level(logging.INFO):
        run = dag.test(logical_date=datetime.datetime(2026, 11, 25, tzinfo=UTC), run_conf=_conf(inputs, 0.05))
    assert run.state == "success"
    # The task's log has the job's lines, without TensorFlow's start-up lines.
    out, err = capfd.readouterr()
    log = "\n".join([out, err, *(r.getMessage() for r in caplog.records)])
    assert "untrained stand-in" in log and "S3D features: 2 videos ok" in log
    for startup in ("absl::InitializeLog", "oneDNN custom operations", "Could not find cuda drivers",
                    "failed call to cuInit", "cpu_feature_guard", "pkg_resources is deprecated"):
        assert startup not in log
    summary = _summary(inputs, "2026-11-24")
    assert summary["counts"]["videos_ok"] == 2 and summary["counts"]["videos_failed"] == 0
    assert summary["model"] == inputs["model"]


def test_a_manual_run_without_logical_date_whose_check_fails(dag, inputs):
    # No logical date (no `ds`): the day before the run time, 2026-11-25, with one broken video.
    run = dag.test(logical_date=None, run_after=datetime.datetime(2026, 11, 26, 8, tzinfo=UTC),
                   run_conf=_conf(inputs, 0.2))
    assert run.state == "failed"
    summary = _summary(inputs, "2026-11-25")
    assert summary["counts"]["videos_failed"] == 1  # the job itself completed; the check failed the run


def test_deferrable_applies_to_dataflow_runs_only(dag, monkeypatch):
    """A deferred local run would run the whole job inside the triggerer: only Dataflow runs defer."""
    from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "google-cloud-platform://")
    monkeypatch.setattr(DataflowHook, "get_conn", lambda self: _FakeDataflowApi("other-job", polls=-1))  # none live
    seen = []
    monkeypatch.setattr(BeamRunPythonPipelineOperator, "execute", lambda self, context: seen.append(self.deferrable))
    op = _extract(dag)
    for runner in ("DirectRunner", "DataflowRunner"):
        op.deferrable, op.runner = True, runner
        op.execute({})
    assert seen == [False, True]


def test_missed_days_are_run_later_oldest_first(dag):
    """catchup: after a last run for 2026-11-20, the scheduler's next run is the next day, not today."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    last = datetime.datetime(2026, 11, 21, tzinfo=UTC)  # the run that processed 2026-11-20
    info = coerce_to_core_timetable(dag.timetable).next_dagrun_info(
        last_automated_data_interval=DataInterval(last, last),
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup),
    )
    assert info.logical_date == datetime.datetime(2026, 11, 22, tzinfo=UTC)
    assert dag.max_active_runs == 1  # one day at a time


def test_retries_and_time_limits(dag):
    extract, check = dag.get_task("extract"), dag.get_task("check_failure_rate")  # each chunk's task
    assert extract.retries == 2 and extract.retry_delay == datetime.timedelta(minutes=15)
    assert extract.retry_exponential_backoff
    # A day's run ends, and its retries start, before the next day's run is due.
    assert extract.execution_timeout == datetime.timedelta(hours=20) < datetime.timedelta(days=1)
    assert check.retries == 0 and check.execution_timeout == datetime.timedelta(minutes=30)


def test_the_retry_delay_comes_from_the_environment_and_a_bad_one_is_an_import_error(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("S3D_RETRY_DELAY_MIN", "2.5")
    extract = DagBag(dag_folder=str(DAGS)).get_dag("s3d_daily_extract").get_task("extract")
    assert extract.retry_delay == datetime.timedelta(minutes=2.5)
    monkeypatch.setenv("S3D_RETRY_DELAY_MIN", "soon")
    errors = DagBag(dag_folder=str(DAGS)).import_errors
    [message] = errors.values()
    assert "S3D_RETRY_DELAY_MIN must be a number of minutes >= 0, got 'soon'" in message


def test_the_shuffle_free_gpu_route_and_its_disk_are_parameters(dag):
    run = SimpleNamespace(logical_date=None, run_after=datetime.datetime(2026, 11, 26, tzinfo=UTC))
    gpu = {"runner": "DataflowRunner", "machine_type": "g2-standard-8", "disk_size_gb": "50", "batch_size": "8",
           "dataflow_service_options": "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"}
    options, _, runner = _render(dag, run, **gpu)
    assert runner == "DataflowRunner"
    assert {k: options[k] for k in gpu if k != "runner"} == {k: v for k, v in gpu.items() if k != "runner"}
    assert options["inference_accelerator"] == ""  # no fusion break, no shuffle of clips
    local, _, _ = _render(dag, run, **{**gpu, "runner": "DirectRunner"})
    assert local["machine_type"] == local["disk_size_gb"] == local["dataflow_service_options"] == ""


class _FakeDataflowApi:
    """Dataflow's REST API as the provider's hook calls it (projects.locations.jobs list/get): one job
    of the day, running for `polls` looks, then done. The boundary below the hook; nothing of it is faked."""

    def __init__(self, name: str, polls: int):
        self.job = {"id": "2026-11-26_01_02_03-42", "name": name, "type": "JOB_TYPE_BATCH",
                    "currentState": "JOB_STATE_RUNNING"}
        self.polls = polls
        self.calls = []

    def projects(self):
        return self

    def locations(self):
        return self

    def jobs(self):
        return self

    def _request(self, result):
        return SimpleNamespace(execute=lambda num_retries=None: result)

    def list(self, projectId, location, **_):  # noqa: N803 (the API's names)
        self.calls.append(("list", projectId, location))
        return self._request({"jobs": [dict(self._advance())]})

    def list_next(self, previous_request, previous_response):
        return None

    def get(self, projectId, location, jobId, **_):  # noqa: N803
        self.calls.append(("get", jobId))
        return self._request(dict(self._advance()))

    def _advance(self):
        self.polls -= 1
        if self.polls < 0:
            self.job["currentState"] = "JOB_STATE_DONE"
        return self.job


@pytest.mark.parametrize("running", [True, False])
def test_a_retry_waits_for_the_days_job_that_still_runs(dag, monkeypatch, running):
    from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "google-cloud-platform://")  # a connection, no key
    api = _FakeDataflowApi("s3d-extract-20261125-c00003-a1b2c3", polls=2 if running else -1)
    monkeypatch.setattr(DataflowHook, "get_conn", lambda self: api)
    launched = []
    monkeypatch.setattr(BeamRunPythonPipelineOperator, "execute", lambda self, context: launched.append(True))
    op = _extract(dag, "00003")
    op.runner = "DataflowRunner"
    op.dataflow_config.job_name, op.dataflow_config.project_id = "s3d-extract-20261125", "my-project"
    op.dataflow_config.location, op.dataflow_config.poll_sleep = "us-central1", 0
    op.execute({})
    assert op.dataflow_config.job_name == "s3d-extract-20261125-c00003"  # the chunk's own job
    if running:  # no second job: the first one was waited for until it was done
        assert launched == [] and api.job["currentState"] == "JOB_STATE_DONE"
        assert ("list", "my-project", "us-central1") in api.calls
    else:  # the day's job is over (or never ran): the task launches it
        assert launched == [True]


def test_a_chunk_whose_task_fails_once_is_retried_alone(inputs, tmp_path, monkeypatch):
    """Two chunks; chunk 00001's first task attempt dies (its worker process exits 1 before the launcher
    runs, as a lost Airflow worker would): that task alone runs again, and the day completes.

    The interpreter and the retry delay are set as a deployment sets them, in the environment the DAG
    file is parsed in: dag.test parses the file again and schedules from that version, so changes made
    to a DAG object alone were honoured only some of the time (a run then waited the 15 minutes).
    """
    calls, failed = tmp_path / "calls.log", tmp_path / "failed_once"
    flaky = tmp_path / "flaky_python"
    flaky.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f'case "$*" in *--chunk_step=00001*) [ -e {failed} ] || {{ touch {failed}; echo "worker lost" >&2; exit 1; }};; esac\n'
        f'exec {S3D_PYTHON} "$@"\n')
    flaky.chmod(0o755)
    monkeypatch.setenv("S3D_PYTHON", str(flaky))
    monkeypatch.setenv("S3D_RETRY_DELAY_MIN", "0")
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).get_dag("s3d_daily_extract")
    extract = dag.get_task("extract")
    assert extract.partial_kwargs["py_interpreter"] == str(flaky) and extract.retry_delay == datetime.timedelta(0)
    conf = {**_conf(inputs, 0.05), "output_root": str(tmp_path / "features"), "chunk_videos": 1}
    run = dag.test(logical_date=datetime.datetime(2026, 11, 25, tzinfo=UTC), run_conf=conf)
    assert run.state == "success"
    lines = calls.read_text().splitlines()
    assert sum("--chunk_step=00000" in line for line in lines) == 1
    assert sum("--chunk_step=00001" in line for line in lines) == 2  # the failed attempt and its retry
    summary = json.loads((tmp_path / "features" / "dt=2026-11-24" / "run_summary.json").read_text())
    assert summary["counts"]["chunks_total"] == 2 and summary["counts"]["videos_ok"] == 2
