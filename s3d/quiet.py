"""Import TensorFlow without its start-up chatter, keeping every line that says something.

TensorFlow's C++ side prints a handful of lines on every start, before its log level
(TF_CPP_MIN_LOG_LEVEL) takes effect: the absl pre-init warning, the oneDNN notice, "Could
not find cuda drivers", the CPU feature-guard notice and, on machines without a GPU, a
red `failed call to cuInit ... UNKNOWN ERROR (303)` that newcomers read as a failure.
`import_tensorflow()` captures the process's stderr while TensorFlow loads and probes
its devices, then writes back everything but those known lines. The CUDA lines are
dropped only where no NVIDIA driver is installed: on a GPU machine they are real news.
S3D_TF_STARTUP_LOGS=1 keeps them all.

Every entry point takes --log_level (or -v) and sets up its console before TensorFlow is
imported: by default its own packages' INFO lines and everyone's warnings; `info` and `debug`
bring back TensorFlow's start-up lines. `set_up_console` is that set-up for this package's
commands; the jobs' (pipeline.console.configure_logging) builds on it, naming the project's
packages and quieting Beam.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from types import ModuleType

# Each pattern matches a line's start; the rest of that line goes with it.
_ALWAYS = [
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on",
    r"I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"To enable the following instructions: .* in other operations, rebuild TensorFlow",
]
_WITHOUT_DRIVER = [
    r"I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: [^\n]*\(303\)",
]
_NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def _patterns(driver_present: bool) -> str:
    return "(?:" + "|".join(_ALWAYS if driver_present else _ALWAYS + _WITHOUT_DRIVER) + r")[^\n]*"


def is_startup_noise(line: str, driver_present: bool) -> bool:
    """True for TensorFlow's known start-up lines (CUDA ones only without an NVIDIA driver)."""
    return re.fullmatch(_patterns(driver_present), line) is not None


def strip_startup_noise(text: str, driver_present: bool) -> str:
    """`text` without TensorFlow's start-up lines, wherever they begin.

    Another thread may have written part of a line (a progress line that is redrawn, with
    no newline) just before TensorFlow's: that part stays, the start-up line goes.
    """
    return re.sub(_patterns(driver_present) + r"\n?", "", text)


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, its device probe included, with the start-up noise filtered out."""
    if "tensorflow" in sys.modules or os.environ.get("S3D_TF_STARTUP_LOGS") == "1":
        import tensorflow as tf

        return tf
    driver = os.path.exists(_NVIDIA_DRIVER)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe prints here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
    kept = strip_startup_noise(text, driver)
    if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()
    return tf


def import_tensorflow_hub() -> ModuleType:
    """`import tensorflow_hub` (and TensorFlow, quietly) without its pkg_resources deprecation warning.

    tensorflow-hub 0.16 imports pkg_resources, which setuptools deprecates: every process
    that loads a model, Beam's worker processes included, would print it.
    """
    import_tensorflow()
    if os.environ.get("S3D_TF_STARTUP_LOGS") == "1":
        import tensorflow_hub as hub

        return hub
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import tensorflow_hub as hub
    return hub


# ---- the command line's log level ----------------------------------------------------------------

LOG_LEVELS = ("warning", "info", "debug")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_log_level_arguments(parser) -> None:
    """--log_level and -v, the same on every entry point."""
    parser.add_argument(
        "--log_level", choices=LOG_LEVELS, default=None,
        help="what to log besides the results: by default this project's own messages (INFO) and "
        "everyone's warnings, without TensorFlow's start-up lines and Beam's INFO chatter; 'warning' "
        "drops this project's INFO lines too; 'info' and 'debug' bring everything back")
    parser.add_argument("-v", dest="log_level", action="store_const", const="info",
                        help="the same as --log_level info")


def set_up_console(level: str | None, own_loggers: Sequence[str] = ("s3d",)) -> None:
    """Logging and TensorFlow's C++ log level for a command-line run; call before TensorFlow loads.

    `own_loggers`: the packages whose INFO lines show by default (the command's, and those below it).
    The environment carries the choice to the processes the run starts (Beam's worker processes).
    """
    if level not in (None, *LOG_LEVELS):
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    verbose = level in ("info", "debug")
    if verbose:  # an explicit flag wins over the environment
        os.environ["S3D_TF_STARTUP_LOGS"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines off, warnings on
    root = {None: logging.WARNING, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}[level]
    logging.basicConfig(level=root, format=LOG_FORMAT, force=True)
    for name in own_loggers:
        logging.getLogger(name).setLevel(logging.INFO if level is None else root)
