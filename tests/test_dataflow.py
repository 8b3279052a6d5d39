"""The real Dataflow job, built offline (--dry_run --no_auth): steps, accelerator hint, packaging.

Nothing is submitted and nothing touches Google Cloud. Needs apache-beam[gcp] (the `gcp`
extra, which `make test` installs).
"""

from __future__ import annotations

import json
import logging
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
    opts = options.view_as(ExtractOptions)
    io = options.view_as(IOOptions)
    extract.build_pipeline(p, io.input, io.output_prefix, opts, options.view_as(ModelOptions), opts.decode_options())
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


def test_the_launch_plans_the_precision_remote_workers_will_compute():
    remote = ["--runner", "DataflowRunner"]
    gpu = PipelineOptions([*remote, "--inference_accelerator", ACCELERATOR, "--precision", "bfloat16"]).view_as(
        ModelOptions)
    plan = gpu.precision_plan()
    assert (plan.requested, plan.effective) == ("bfloat16", "float32") and "float16 on GPUs" in plan.reason
    assert gpu.handler("video")._precision == "float32"  # what the run records is what the workers load
    # Remote CPU workers are not known at launch: bfloat16 is recorded, and each worker checks it at load.
    cpu = PipelineOptions([*remote, "--precision", "bfloat16"]).view_as(ModelOptions)
    assert cpu.precision_plan().effective == "bfloat16" and cpu.handler("video")._precision == "bfloat16"
    f16 = PipelineOptions([*remote, "--inference_accelerator", ACCELERATOR, "--precision", "float16"]).view_as(
        ModelOptions)
    assert f16.precision_plan().effective == "float16"
    assert PipelineOptions([*remote, "--precision", "float16"]).view_as(ModelOptions).precision_plan().effective \
        == "float32"  # no GPU asked for
    assert cpu.precision_plan("text").effective == "float32"  # the text tower
    with pytest.raises(SystemExit):
        PipelineOptions(["--precision", "fp8"]).view_as(ModelOptions)


def test_the_command_line_dry_run_submits_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.extract", *dataflow_args(tmp_path, "--setup_file",
                                                                                    "./setup.py")],
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
    parser_dests = {a.dest for a in make_metadata.extract_parser()._actions if a.option_strings and a.dest != "help"}
    assert names == parser_dests and {"input", "output_prefix", "model", "fps", "inference_accelerator"} <= names

    defaults = {a.dest: a.default for a in make_metadata.extract_parser()._actions
                if a.option_strings and a.dest != "help"}
    for p in committed["parameters"]:
        assert p["helpText"], p["name"]
        default = defaults[p["name"]]
        if default is not None:
            text = str(default).lower() if isinstance(default, bool) else f"{default:g}" if isinstance(default, float) else str(default)
            assert _egrep(p["regexes"][0], [text]) == [text], (p["name"], text)


def _egrep(regex: str, lines: list[str]) -> list[str]:
    """The lines POSIX egrep matches whole (POSIXLY_CORRECT grep -Ex): how Flex Templates check a parameter."""
    env = {**os.environ, "POSIXLY_CORRECT": "1", "LC_ALL": "C"}
    run = subprocess.run(["grep", "-Ex", "-e", regex], input="".join(f"{line}\n" for line in lines),
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode in (0, 1), run.stderr  # 2: grep could not read the regex
    return run.stdout.splitlines()


def test_flex_template_regexes_are_posix_egrep():
    """Flex Templates check parameters with POSIX egrep regexes ("Create a Flex Template: metadata"): Perl
    classes (\\S, \\d, \\w) are not POSIX, and POSIXLY_CORRECT grep -E is the referee."""
    import re

    with open(os.path.join(ROOT, "deploy", "dataflow", "metadata.json")) as f:
        parameters = json.load(f)["parameters"]
    examples = {"^(true|false)$": ("true", "yes"), "^[0-9]+$": ("12", "1.5"), "^[0-9]+(\\.[0-9]+)?$": ("2.5", "2,5"),
                "^[^[:space:]]+$": ("gs://b/videos/*.mp4", "gs://b/my videos")}
    seen = set()
    for p in parameters:
        for regex in p["regexes"]:
            assert not re.search(r"\\[SsDdWwbB]", regex), (p["name"], regex)  # Perl shorthands
            seen.add(regex)
    assert set(examples) <= seen
    for regex, (good, bad) in examples.items():
        assert _egrep(regex, [good, bad]) == [good], regex


# Steps that do not merge the stages on their two sides: a GroupByKey (inside Reshuffle too)
# materializes its input; Dataflow "unzips" a Flatten into a copy per input's stage.
UNFUSED_URNS = {"beam:transform:group_by_key:v1", "beam:transform:flatten:v1"}


def dataflow_stages(proto) -> list[set[str]]:
    """The fused stages Dataflow would make, as sets of primitive transform names.

    Dataflow's fusion ("Pipeline lifecycle" in its docs) merges producer-consumer steps into
    one stage; a GroupByKey (inside Reshuffle too) and a side input materialize their data and
    break fusion, and a Flatten is copied into its inputs' stages rather than joining them. A
    stage runs on a worker meeting the union of its steps' resource hints.
    """
    from apache_beam.portability.api import beam_runner_api_pb2

    transforms = proto.components.transforms
    primitives = {tid: t for tid, t in transforms.items() if not t.subtransforms and t.spec.urn}
    parent = {tid: tid for tid in primitives}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    producers = {pc: tid for tid, t in primitives.items() for pc in t.outputs.values()}
    for tid, t in primitives.items():
        side = set()
        if t.spec.urn == "beam:transform:pardo:v1":
            side = set(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs)
        for local, pc in t.inputs.items():
            producer = producers.get(pc)
            if producer is None or local in side:
                continue
            if {t.spec.urn, primitives[producer].spec.urn} & UNFUSED_URNS:
                continue
            parent[find(tid)] = find(producer)
    stages: dict[str, set[str]] = {}
    for tid, t in primitives.items():
        stages.setdefault(find(tid), set()).add(t.unique_name)
    return list(stages.values())


def _stage_of(stages, prefix):
    return [s for s in stages if any(name.startswith(prefix) for name in s)]


def test_with_the_gpu_hint_decoding_is_not_fused_with_inference(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    _, proto = build_job(dataflow_args(tmp_path, "--inference_accelerator", ACCELERATOR,
                                       "--sdk_container_image", "img", "--sdk_location", "container"))
    stages = dataflow_stages(proto)
    inference = [s for s in stages if any("RunInference" in n for n in s)]
    assert inference and not any(name.startswith("DecodeClips") for s in inference for name in s)
    assert "ToGpuWorkers" in {t.unique_name for t in proto.components.transforms.values()}


def test_without_a_gpu_hint_decoding_and_inference_share_a_stage_and_no_clip_is_shuffled(tmp_path, monkeypatch):
    # The fusion model above is not vacuous: this graph does fuse them (and pays no shuffle).
    monkeypatch.chdir(ROOT)
    _, proto = build_job(dataflow_args(tmp_path, "--setup_file", "./setup.py"))
    stages = dataflow_stages(proto)
    assert any(any(n.startswith("DecodeClips") for n in s) and any("RunInference" in n for n in s) for s in stages)
    assert "ToGpuWorkers" not in {t.unique_name for t in proto.components.transforms.values()}


def test_a_dataflow_job_without_setup_file_or_worker_image_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.extract", *dataflow_args(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "--setup_file" in proc.stderr and "--sdk_container_image" in proc.stderr


@pytest.mark.parametrize("gpus", [["--inference_accelerator", ACCELERATOR],
                                  ["--dataflow_service_options", f"worker_accelerator={ACCELERATOR}"]])
def test_gpus_with_only_a_setup_file_are_refused_naming_the_worker_image(gpus, tmp_path):
    from pipeline.runner import check_worker_packaging

    with pytest.raises(ValueError, match="deploy/dataflow/Dockerfile.*--sdk_container_image"):
        check_worker_packaging(PipelineOptions(dataflow_args(tmp_path, "--setup_file", "./setup.py", *gpus)))
    check_worker_packaging(PipelineOptions(dataflow_args(tmp_path, *gpus, "--sdk_container_image", "img:gpu")))
    check_worker_packaging(PipelineOptions(dataflow_args(tmp_path, "--setup_file", "./setup.py")))  # CPU: fine


def test_a_template_launch_with_no_job_counts_as_submitted(tmp_path, monkeypatch):
    """A Flex Template launch stages the job: the result has no job, whatever --wait says."""
    from apache_beam.runners.dataflow.dataflow_runner import DataflowPipelineResult

    from pipeline import runner

    options = PipelineOptions(["--runner", "DataflowRunner", "--project", "p", "--region", "r",
                               "--temp_location", "gs://b/tmp"])  # --wait defaults to true

    class TemplatePipeline:
        def run(self):
            return DataflowPipelineResult(None, None, options)  # what create_job returns in template mode

    monkeypatch.setattr(runner, "create_pipeline", lambda opts: TemplatePipeline())
    summary, path = runner.launch(options, str(tmp_path / "out"), ("clips",), lambda p, progress: None, {"job": "x"},
                                  lambda counts, prefix: {})
    assert summary["status"] == "submitted" and path.endswith("run_summary.json")
    assert not os.path.exists(path)  # the job writes it when it completes


def test_the_job_id_logger_stays_at_info():

    from pipeline.console import JOB_ID_LOGGER, configure_logging

    configure_logging()
    assert logging.getLogger(JOB_ID_LOGGER).getEffectiveLevel() == logging.INFO
    assert logging.getLogger("apache_beam.runners.dataflow").getEffectiveLevel() == logging.WARNING
    import apache_beam.runners.dataflow.internal.apiclient as apiclient

    assert apiclient._LOGGER.name == JOB_ID_LOGGER  # the logger Beam writes "Created job with id" to


@pytest.mark.parametrize("args, error", [
    (["--inference_accelerator", "type:nvidia-l4;count:1;install-nvidia-driver"], "run only on G2 machines"),
    (["--inference_accelerator", "type:nvidia-l4;count:1;machine_type:n1-standard-8"], "got machine_type"),
    (["--inference_accelerator", "type:nvidia-tesla-t4;count:1;machine_type:g2-standard-8"], "run only on N1"),
    (["--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1", "--machine_type", "n1-standard-8"],
     "got --machine_type 'n1-standard-8'"),
    (["--dataflow_service_options", "worker_accelerator=type:nvidia-tesla-t4;count:1",
      "--inference_accelerator", ACCELERATOR], "exclude each other"),
])
def test_gpu_and_machine_pairings_are_checked(args, error):
    with pytest.raises(ValueError, match=error):
        PipelineOptions(args).view_as(ModelOptions).validate_model()


def test_good_pairings_pass_and_the_hint_carries_the_machine_type(tmp_path, monkeypatch):
    l4 = "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver"
    for args in (["--inference_accelerator", l4], ["--inference_accelerator", ACCELERATOR],
                 ["--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1",
                  "--machine_type", "g2-standard-8"]):
        PipelineOptions(args).view_as(ModelOptions).validate_model()
    monkeypatch.chdir(ROOT)
    _, proto = build_job(dataflow_args(tmp_path, "--inference_accelerator", l4, "--setup_file", "./setup.py"))
    hints = [env.resource_hints[ACCELERATOR_URN] for env in proto.components.environments.values()
             if ACCELERATOR_URN in env.resource_hints]
    assert hints and all(b"machine_type:g2-standard-8" in h for h in hints)


def test_the_whole_job_gpu_route_shares_one_model_per_gpu_too():
    options = PipelineOptions(["--dataflow_service_options",
                               "worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver"])
    handler = options.view_as(ModelOptions).handler("video")
    assert handler.share_model_across_processes() and handler.model_copies() == 2
    explicit = PipelineOptions(["--dataflow_service_options", "worker_accelerator=type:nvidia-tesla-t4;count:2",
                                "--model_copies", "1"]).view_as(ModelOptions).handler("video")
    assert explicit.model_copies() == 1


def test_wait_false_submits_and_returns_without_waiting(tmp_path, monkeypatch):
    from pipeline import runner

    class SubmittedJob:
        has_job = True

        def wait_until_finish(self):
            raise AssertionError("--wait=false must not wait for the job")

    class RemotePipeline:
        def run(self):
            return SubmittedJob()

    monkeypatch.setattr(runner, "create_pipeline", lambda opts: RemotePipeline())
    options = PipelineOptions(["--runner", "DataflowRunner", "--wait=false"])
    summary, path = runner.launch(options, str(tmp_path / "out"), ("clips",), lambda p, progress: None, {"job": "x"},
                                  lambda counts, prefix: {})
    assert summary["status"] == "submitted" and not os.path.exists(path)
    # Local runs always wait: the same flag on the local runner runs the job to the end.
    local = PipelineOptions(["--wait=false"])
    assert runner.runs_locally(local)


def test_the_index_job_builds_as_a_dataflow_job(tmp_path, monkeypatch):
    # The shards are planned from the runs' footers before the job (gs:// is not reachable here), so the
    # plan is given; what is checked is the job Dataflow would get: its steps, pickled DoFns, the package.
    from pipeline.index import IndexOptions
    from transforms.index import BuildIndex
    from vector_index import Manifest
    from vector_index.builder import ShardSpec

    monkeypatch.chdir(ROOT)
    options = PipelineOptions(dataflow_args(tmp_path, "--setup_file", "./setup.py") + ["--features", "gs://bucket/features/run1", "--output", "gs://bucket/index"])
    assert options.view_as(IndexOptions).output == "gs://bucket/index"
    base = Manifest(level="clip", quantization="f16", model="gs://bucket/models/mil-nce-s3d-1", preprocessing={},
                    dim=512, params={"m": 16, "ef_construction": 64, "ef_search": 64}, library="faiss-cpu")
    specs = [ShardSpec(f"b-run000-{i:05d}", "gs://bucket/features/run1",
                       ((f"gs://bucket/features/run1/clips/clips-{i:05d}-of-00002.parquet", 0, 1000),))
             for i in range(2)]
    p = create_pipeline(options)
    _ = p | "BuildIndex" >> BuildIndex("gs://bucket/index", specs, base, [{"features": "gs://bucket/features/run1"}])
    result = p.run()
    names = {t.unique_name for t in p.runner.proto_pipeline.components.transforms.values()}
    for step in ("BuildIndex/Shards", "BuildIndex/Spread", "BuildIndex/BuildShard", "BuildIndex/AllShards",
                 "BuildIndex/WriteManifest"):
        assert step in names, step
    staged = [json.dumps(str(dep)) for env in p.runner.proto_pipeline.components.environments.values()
              for dep in env.dependencies]
    assert any("workflow.tar.gz" in s for s in staged)
    assert result.job.options.view_as(IndexOptions).features == "gs://bucket/features/run1"


def test_a_worker_on_another_python_than_the_launcher_fails_naming_both(standin_dir, monkeypatch):
    """cloudpickle ships bytecode: a worker image on another Python minor version must fail at once, and say so."""
    from decoder import DecodeOptions
    from transforms.decode import DecodeClipsFn
    from transforms.inference import S3DModelHandler

    handler, decode = S3DModelHandler(standin_dir), DecodeClipsFn(DecodeOptions())
    monkeypatch.setattr(sys, "version_info", (3, 99, 0, "final", 0))  # the worker's interpreter
    for setup in (handler.load_model, decode.setup):
        with pytest.raises(RuntimeError, match=r"worker runs Python 3\.99 but the job was launched with Python 3\.1"):
            setup()
