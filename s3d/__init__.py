"""The S3D MIL-NCE text-video model: network, stand-in export and the one loader.

Knows nothing of Beam. Import `load_s3d` from `s3d.loader`; it pulls in TensorFlow.
"""

import os

# TensorFlow turns its oneDNN path on by itself only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX.
# Elsewhere (AVX2-only machines: AMD Zen 3, Dataflow's n2d and t2d) Conv3D runs on Eigen, measured
# 2.3x slower for this model (BENCHMARKS.md, "Model only": loaded_avx2 against loaded_avx2_onednn_off). The package sets the default before anything
# of the project imports TensorFlow, in every process (Beam's workers import this package to
# unpickle the model handler); a user's own TF_ENABLE_ONEDNN_OPTS wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def package_version() -> str:
    """This project's installed version (its run summaries and its HTTP user agent name it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("s3d-features")
    except PackageNotFoundError:
        return "0+unknown"
