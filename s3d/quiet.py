"""Import TensorFlow without its start-up chatter, keeping every line that says something.

TensorFlow's C++ side prints a handful of lines on every start, before its log level
(TF_CPP_MIN_LOG_LEVEL) takes effect: the absl pre-init warning, the oneDNN notice, "Could
not find cuda drivers", the CPU feature-guard notice and, on machines without a GPU, a
red `failed call to cuInit ... UNKNOWN ERROR (303)` that newcomers read as a failure.
`import_tensorflow()` captures the process's stderr while TensorFlow loads and probes
its devices, then writes back everything but those known lines. The CUDA lines are
dropped only where no NVIDIA driver is installed: on a GPU machine they are real news.
S3D_TF_STARTUP_LOGS=1 keeps them all.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

_ALWAYS = [
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .* in other operations, rebuild TensorFlow"),
]
_WITHOUT_DRIVER = [
    re.compile(r"^I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
    re.compile(r"^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)$"),
]
_NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def is_startup_noise(line: str, driver_present: bool) -> bool:
    """True for TensorFlow's known start-up lines (CUDA ones only without an NVIDIA driver)."""
    patterns = _ALWAYS if driver_present else _ALWAYS + _WITHOUT_DRIVER
    return any(p.match(line) for p in patterns)


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
    kept = [line for line in text.splitlines() if not is_startup_noise(line, driver)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()
    return tf
