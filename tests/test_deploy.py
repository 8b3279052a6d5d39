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
    assert not re.search(r"(^|\s)PATH=", envs) and "VIRTUAL_ENV" not in envs  # LD_LIBRARY_PATH is not PATH
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in envs
    assert "pip install '.[gcp]'" in runs and "pip check" in runs


@pytest.mark.parametrize("name", [*WORKER_IMAGES, "flex.Dockerfile"])
def test_every_image_copies_every_package_setup_py_ships(name):
    # A package missing from the image installs nothing and fails on the worker at import time.
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        include = re.search(r"find_packages\(include=\[([^\]]*)\]", f.read()).group(1)
    packages = {p for p in re.findall(r'"([\w.*]+)"', include) if "." not in p}
    assert {"pipeline", "transforms", "vector_index"} <= packages
    copies = {args for kw, args in _instructions(_read(name)) if kw == "COPY"}
    missing = sorted(p for p in packages if f"{p} ./{p}" not in copies)
    assert not missing, f"{name} does not copy {missing}"


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


def test_gpu_image_finds_the_driver_libraries_dataflow_mounts():
    env = [args for kw, args in _instructions(_read("Dockerfile")) if kw == "ENV" and "LD_LIBRARY_PATH" in args]
    assert len(env) == 1 and "/usr/local/nvidia/lib64" in env[0].split("=", 1)[1].split(":"), env


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


# ---- supported Pythons: the package, the Makefile, CI ---------------------------------------------


def test_the_package_declares_python_3_11_to_3_13():
    import ast

    from packaging.specifiers import SpecifierSet

    call = next(node for node in ast.walk(ast.parse(open(os.path.join(ROOT, "setup.py")).read()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("python_requires", "classifiers")}
    allowed = SpecifierSet(kwargs["python_requires"])
    assert [v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if allowed.contains(f"{v}.0")] == ["3.11", "3.12", "3.13"]
    assert {c.rsplit(" ", 1)[1] for c in kwargs["classifiers"] if c.startswith("Programming Language :: Python :: 3.")} \
        == {"3.11", "3.12", "3.13"}


def _fake_bin(tmp_path, pythons: dict[str, str]) -> str:
    """A bin directory of python3.X scripts: 'works' runs this Python (reporting X as its version), 'fails'
    is a pyenv-like shim that exists and cannot start."""
    d = tmp_path / "bin"
    d.mkdir()
    for version, kind in pythons.items():
        script = d / f"python{version}"
        if kind == "works":
            script.write_text(f'#!/bin/sh\ncase "$2" in *version_info*) echo {version};; *) exec {sys.executable} "$@";; esac\n')
        else:
            script.write_text("#!/bin/sh\necho 'pyenv: version not installed' >&2\nexit 127\n")
        script.chmod(0o755)
    return str(d)


def test_make_uses_the_newest_supported_python_that_starts(tmp_path):
    fake = _fake_bin(tmp_path, {"3.13": "fails", "3.12": "works", "3.11": "works"})
    # Not PYTHON, nor the variables a calling make passes down (CI runs this suite from make test PYTHON=...).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PATH"] = f"{fake}:/nonexistent"
    make = subprocess.run(["/usr/bin/make", "-n", "-B", "venv", f"VENV={tmp_path / 'v'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "python3.12 -m venv" in make.stdout, make.stdout + make.stderr
    given = subprocess.run(["/usr/bin/make", "-n", "-B", "venv", f"VENV={tmp_path / 'v'}", "PYTHON=python3.11"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "python3.11 -m venv" in given.stdout


def _ci(tmp_path, pythons: dict[str, str]) -> tuple[list[list[str]], str]:
    """Runs .ci/run with a `make` that only records its arguments; returns the calls and the output."""
    fake = _fake_bin(tmp_path, pythons)
    calls = tmp_path / "calls"
    (tmp_path / "bin" / "make").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (tmp_path / "bin" / "make").chmod(0o755)
    home = tmp_path / "home"  # no ~/.pyenv
    home.mkdir()
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(home)}
    proc = subprocess.run(["bash", os.path.join(ROOT, ".ci", "run")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split() for line in calls.read_text().splitlines()], proc.stdout


def test_ci_runs_the_suite_on_the_oldest_and_the_newest_python_last_the_oldest(tmp_path):
    calls, _ = _ci(tmp_path, {"3.13": "works", "3.12": "works", "3.11": "works"})
    bin_ = tmp_path / "bin"
    assert calls == [
        ["test-airflow", f"PYTHON={bin_}/python3.11"],
        ["test", f"PYTHON={bin_}/python3.13", "VENV=.venv-3.13", "EXTRAS=dev,gcp,aws"],
        ["test", f"PYTHON={bin_}/python3.11"],
    ]


def test_ci_says_when_no_newer_python_starts(tmp_path):
    calls, out = _ci(tmp_path, {"3.13": "fails", "3.11": "works"})
    assert "no Python 3.12 or 3.13 starts on this machine: the suite runs on Python 3.11 only" in out
    assert [c[0] for c in calls] == ["test-airflow", "test"]
