"""What this machine's CPU can run, for tests that need a feature: they skip, saying why, where it is absent.

Every such test has a partner that checks what users get where the feature is absent, and
that partner runs everywhere (ONEDNN_MAX_CPU_ISA=AVX2 makes any machine answer as an AVX2-only one).
"""

from __future__ import annotations

import pytest

from s3d.precision import plan_precision, this_machine

# --precision bfloat16 really runs bfloat16 here: bfloat16 units (AVX512_BF16 or AMX) not capped by
# ONEDNN_MAX_CPU_ISA, and TensorFlow's oneDNN path on.
NATIVE_BF16 = plan_precision("bfloat16", this_machine(None)).effective == "bfloat16"

needs_native_bf16 = pytest.mark.skipif(
    not NATIVE_BF16, reason="this CPU has no bfloat16 units for oneDNN (or ONEDNN_MAX_CPU_ISA caps it): "
    "--precision bfloat16 runs float32 here, which the *_runs_float32 tests check")
