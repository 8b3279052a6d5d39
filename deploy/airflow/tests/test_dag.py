"""The Airflow DAG, in Airflow's own environment (make test-airflow): import, rendering, a real run.

The extraction itself runs in the project's environment (S3D_PYTHON), as in production;
videos and the stand-in model are made there too.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
S3D_PYTHON = os.environ["S3D_PYTHON"]
DAY = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("s3d_daily_extract")


def test_dag_imports_without_errors_and_has_its_tasks(dag):
    assert dag is not None
    assert sorted(t.task_id for t in dag.tasks) == ["check_failure_rate", "extract"]
    assert dag.get_task("extract").downstream_task_ids == {"check_failure_rate"}


def test_rendered_pipeline_options_are_what_the_readme_says(dag):
    op = dag.get_task("extract")
    params = {k: v.value if hasattr(v, "value") else v for k, v in dag.params.items()}
    context = {"ds": "2026-11-24", "ds_nodash": "20261124", "params": params}
    rendered = op.render_template(op.pipeline_options, context)
    assert rendered["input"] == "gs://my-bucket/manifests/2026-11-24.txt"
    assert rendered["output_prefix"] == "gs://my-bucket/s3d-features/dt=2026-11-24"
    assert rendered["model"] == "https://tfhub.dev/deepmind/mil-nce/s3d/1"
    assert rendered["setup_file"].endswith("setup.py") and rendered["sdk_container_image"] == ""
    assert op.render_template(op.runner, context) == "DirectRunner"
    config = op.render_template(op.dataflow_config, context)
    assert config.job_name == "s3d-extract-20261124"
    assert op.py_options == ["-m"] and op.py_file == "pipeline.extract"


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


def _run(dag, inputs, day: datetime.datetime, max_failure_rate: float):
    return dag.test(logical_date=day, run_conf={
        "manifest_root": inputs["manifests"], "output_root": inputs["output"], "model": inputs["model"],
        "runner": "DirectRunner", "max_failure_rate": max_failure_rate,
    })


def test_dag_runs_the_real_job_on_two_videos(dag, inputs):
    run = _run(dag, inputs, DAY, 0.05)
    assert run.state == "success"
    summary = json.loads((Path(inputs["output"]) / "dt=2026-11-24" / "run_summary.json").read_text())
    assert summary["counts"]["videos_ok"] == 2 and summary["counts"]["videos_failed"] == 0
    assert summary["model"] == inputs["model"]


def test_the_check_fails_the_run_when_too_many_videos_failed(dag, inputs):
    run = _run(dag, inputs, DAY + datetime.timedelta(days=1), 0.2)
    assert run.state == "failed"
    summary = json.loads((Path(inputs["output"]) / "dt=2026-11-25" / "run_summary.json").read_text())
    assert summary["counts"]["videos_failed"] == 1  # the job itself completed; the check failed the run
