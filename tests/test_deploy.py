"""The worker and launcher images, checked offline (no Docker engine here).

What only a Dataflow worker's start-up would reveal is reproduced: Beam's boot program
(sdks/python/container/boot.go, Beam >= 2.44) runs `python -m venv --system-site-packages`
from the image's python and starts the SDK in that venv, unless
RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT is set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATAFLOW = os.path.join(ROOT, "deploy", "dataflow")
WORKER_IMAGES = ("Dockerfile", "Dockerfile.cpu")


def _read(name: str) -> str:
    with open(os.path.join(DATAFLOW, name), encoding="utf-8") as f:
        return f.read()


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), comments dropped, continuations joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def _setup_pin(package: str) -> str:
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        return re.search(rf'"{re.escape(package)}==([^"]+)"', f.read()).group(1)


@pytest.mark.parametrize("name", WORKER_IMAGES)
def test_worker_image_installs_into_the_system_interpreter(name):
    steps = _instructions(_read(name))
    froms = [args for kw, args in steps if kw == "FROM"]
    # One stage, on Beam's SDK image of the Beam version setup.py pins: its python is the system one.
    assert len(froms) == 1 and re.fullmatch(r"apache/beam_python\$\{PYTHON_VERSION\}_sdk:" + re.escape(
        _setup_pin("apache-beam")), froms[0]), froms
    runs = " ".join(args for kw, args in steps if kw == "RUN")
    envs = " ".join(args for kw, args in steps if kw == "ENV")
    assert "venv" not in runs and "virtualenv" not in runs  # no environment of our own for the boot venv to miss
    assert "PATH=" not in envs and "VIRTUAL_ENV" not in envs
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in envs
    assert "pip install '.[gcp]'" in runs and "pip check" in runs


def test_gpu_image_has_one_cudnn_and_says_which_cuda_tensorflow_was_built_against():
    text = _read("Dockerfile")
    steps = _instructions(text)
    assert not any("nvidia/cuda" in args for kw, args in steps if kw == "FROM")  # the pip packages carry CUDA
    assert f"tensorflow[and-cuda]=={_setup_pin('tensorflow')}" in " ".join(a for kw, a in steps if kw == "RUN")
    import tensorflow as tf

    info = tf.sysconfig.get_build_info()
    comments = " ".join(line.lstrip("# ") for line in text.splitlines())
    stated = re.search(r"built against CUDA\s+(\S+)\s+and cuDNN\s+(\S+?)[:\s]", comments)
    assert stated, "the Dockerfile states the CUDA and cuDNN TensorFlow is built against"
    assert stated.group(1) == info["cuda_version"] and stated.group(2) == str(info["cudnn_version"]).split(".")[0]


def _boot_venv(python: str, target) -> str:
    """What boot.go's setupVenv does (minus pip, so that a found pip must come from the base)."""
    subprocess.run([python, "-m", "venv", "--system-site-packages", "--without-pip", str(target)],
                   check=True, timeout=120)
    return os.path.join(str(target), "bin", "python")


def _imports(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=120).returncode == 0


def test_boot_venv_sees_the_system_interpreter_but_not_a_venv(tmp_path):
    # The old image: packages in a venv (like /opt/venv) whose python the boot program used;
    # the suite's own environment is such a venv (make test).
    assert sys.prefix != sys.base_prefix
    assert _imports(sys.executable, "apache_beam")
    from_venv = _boot_venv(sys.executable, tmp_path / "from-venv")
    assert not _imports(from_venv, "apache_beam")  # the worker would die with ModuleNotFoundError
    # The fixed image: packages in the system interpreter's own site-packages, which the
    # boot venv includes (pip stands in for them: it lives in the base's site-packages).
    base = getattr(sys, "_base_executable", None) or os.path.join(sys.base_prefix, "bin", "python3")
    from_system = _boot_venv(base, tmp_path / "from-system")
    assert _imports(from_system, "pip")


def test_flex_launcher_ships_setup_py_only_in_the_default_target():
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for kw, args in _instructions(_read("flex.Dockerfile")):
        if kw == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            stages[current] = [(kw, args)]
        else:
            stages[current].append((kw, args))
    assert list(stages) == ["launcher-prebuilt", "launcher"]  # the last stage is the default build

    def envs(stage):
        return " ".join(a for kw, a in stages[stage] if kw == "ENV")

    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/pipeline/extract.py" in envs("launcher-prebuilt")
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE" not in envs("launcher-prebuilt")  # prebuilt workers rebuild nothing
    assert stages["launcher"][0][1].startswith("launcher-prebuilt")
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py" in envs("launcher")
