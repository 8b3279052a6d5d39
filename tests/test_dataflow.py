"""The real Dataflow job, built offline (--dry_run --no_auth): steps, accelerator hint, packaging.

Nothing is submitted and nothing touches Google Cloud. Needs apache-beam[gcp] (the `gcp`
extra, which `make test` installs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient", reason="needs apache-beam[gcp]")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from pipeline import extract  # noqa: E402
from pipeline.options import ExtractOptions, IOOptions, ModelOptions  # noqa: E402
from pipeline.runner import create_pipeline  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATOR = "type:nvidia-tesla-t4;count:2;install-nvidia-driver"
ACCELERATOR_URN = "beam:resources:accelerator:v1"


def dataflow_args(tmp_path, *extra: str) -> list[str]:
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("gs://bucket/videos/a.mp4\n")
    return [
        "--input", str(manifest), "--output_prefix", "gs://bucket/features/dt=2026-11-24",
        "--model", "gs://bucket/models/mil-nce-s3d-1",
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
        "--temp_location", "gs://bucket/tmp", "--staging_location", "gs://bucket/staging",
        "--dry_run=True", "--no_auth", "--requirements_cache=skip", "--job_name", "s3d-test", *extra,
    ]


def build_job(args: list[str]):
    options = PipelineOptions(args)
    p = create_pipeline(options)
    extract.build_pipeline(p, options.view_as(IOOptions), options.view_as(ExtractOptions), options.view_as(ModelOptions))
    result = p.run()
    return result.job, p.runner.proto_pipeline


def transforms_with_accelerator(proto) -> set[str]:
    hinted = {env_id for env_id, env in proto.components.environments.items() if ACCELERATOR_URN in env.resource_hints}
    return {t.unique_name for t in proto.components.transforms.values() if t.environment_id in hinted}


def test_dataflow_job_has_the_steps_and_the_setup_file(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # --setup_file ./setup.py as a user would pass it from the repository
    job, proto = build_job(dataflow_args(tmp_path, "--setup_file", "./setup.py"))
    names = {t.unique_name for t in proto.components.transforms.values()}
    for step in ("ReadInput", "Reshuffle", "DecodeClips", "EmbedClips", "AssembleVideos",
                 "WriteTables/WriteClips", "WriteTables/WriteVideos", "WriteTables/WriteFailures",
                 "WriteTables/WriteRunSummary"):
        assert step in names, step
    assert not transforms_with_accelerator(proto)  # no hint unless asked for
    # The package travels to the workers as an sdist built from setup.py.
    artifacts = [dep for env in proto.components.environments.values() for dep in env.dependencies]
    staged = [json.dumps(str(a)) for a in artifacts]
    assert any("workflow.tar.gz" in s for s in staged), staged[:3]
    assert job.options.view_as(IOOptions).output_prefix == "gs://bucket/features/dt=2026-11-24"


def test_accelerator_hint_is_on_the_inference_step_only(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    image = "us-docker.pkg.dev/my-project/s3d/worker:gpu"
    _, proto = build_job(dataflow_args(tmp_path, "--inference_accelerator", ACCELERATOR,
                                       "--sdk_container_image", image, "--sdk_location", "container"))
    hinted = transforms_with_accelerator(proto)
    assert hinted and all(name.startswith("EmbedClips") for name in hinted)
    assert any(name.endswith("RunInference") or "RunInference" in name for name in hinted)
    assert not any(name.startswith(("DecodeClips", "ReadInput", "WriteTables")) for name in hinted)
    images = {env.payload for env in proto.components.environments.values()}
    assert any(image.encode() in payload for payload in images)


def test_gpu_defaults_share_one_model_per_gpu():
    options = PipelineOptions(["--inference_accelerator", ACCELERATOR]).view_as(ModelOptions)
    handler = options.handler("video")
    assert handler.share_model_across_processes() and handler.model_copies() == 2
    assert not PipelineOptions([]).view_as(ModelOptions).handler("video").share_model_across_processes()
    with pytest.raises(ValueError, match="--inference_accelerator must look like"):
        PipelineOptions(["--inference_accelerator", "t4"]).view_as(ModelOptions).validate_model()


def test_the_command_line_dry_run_submits_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.extract", *dataflow_args(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dry run: the job was built and not submitted" in proc.stderr


def test_flex_template_metadata_covers_every_option():
    sys.path.insert(0, os.path.join(ROOT, "deploy", "dataflow"))
    try:
        import make_metadata
    finally:
        sys.path.pop(0)
    generated = make_metadata.metadata()
    with open(os.path.join(ROOT, "deploy", "dataflow", "metadata.json")) as f:
        committed = json.load(f)
    assert committed == generated, "run: python deploy/dataflow/make_metadata.py > deploy/dataflow/metadata.json"
    names = {p["name"] for p in committed["parameters"]}
    parser_dests = {a.dest for a in make_metadata.extract_parser()._actions if a.option_strings}
    assert names == parser_dests and {"input", "output_prefix", "model", "fps", "inference_accelerator"} <= names
    import re

    defaults = {a.dest: a.default for a in make_metadata.extract_parser()._actions if a.option_strings}
    for p in committed["parameters"]:
        assert p["helpText"], p["name"]
        default = defaults[p["name"]]
        if default is not None:
            text = str(default).lower() if isinstance(default, bool) else f"{default:g}" if isinstance(default, float) else str(default)
            assert re.match(p["regexes"][0], text), (p["name"], text)
