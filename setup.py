"""Packaging: the one source of truth for dependencies, also used to ship the code to Beam workers.

    pip install -e .[dev]        # local development and tests
    --setup_file ./setup.py      # Dataflow: installs this package on every worker
"""

from setuptools import find_packages, setup

# Versions that install together on Python 3.11, 3.12 and 3.13 (checked on clean venvs).
INSTALL_REQUIRES = [
    "apache-beam==2.77.0",
    # tf-keras (needed by tensorflow-hub) depends on `tensorflow`; pinning that one package avoids a
    # second copy as tensorflow-cpu. On Linux it runs on the CPU and uses a GPU when CUDA is present.
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-hub==0.16.1",
    # tensorflow-hub imports pkg_resources, which setuptools 81 removed (torch pulls a new setuptools).
    "setuptools<81",
    "av==18.1.0",
    "pyarrow==25.0.1",
    "numpy>=2.0,<3",
    "psutil>=7.0",
    "threadpoolctl==3.8.0",
    "pillow==12.3.0",
    # The approximate index (pipeline.index): chosen by measurement, BENCHMARKS.md. One abi3 wheel for 3.11-3.13.
    "faiss-cpu==1.15.1",
    # Captions (captions/): WebVTT and SRT, chosen against pysubs2 and srt on real files' quirks (captions/parse.py).
    "webvtt-py==0.6.0",
]

EXTRAS_REQUIRE = {
    # Dataflow: the GCP I/O and runner; `build` packs this project for --setup_file.
    "gcp": ["apache-beam[gcp]==2.77.0", "build==1.6.1"],
    "aws": ["apache-beam[aws]==2.77.0"],
    # The tests' object stores run on 127.0.0.1: a GCS emulator and moto's S3 server (tests/object_stores.py).
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6", "duckdb==2.0.1",
            "gcp-storage-emulator==2026.7.19", "moto[server]==5.2.5"],
    # Only to read the authors' PyTorch checkpoint (s3d.convert). The CPU build: 2.13.0 is the
    # one this workplace's machines carry on disk; a looser pin would fetch a multi-GB CUDA build.
    "convert": ["torch==2.13.0"],
    # The index benchmark compares faiss with these two (benchmarks/index_compare.py).
    "bench": ["usearch==2.26.6", "hnswlib==0.8.0"],
}

setup(
    name="s3d-features",
    version="0.1.0",
    description="Batch S3D MIL-NCE text-video feature extraction on Apache Beam",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.14",
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
    packages=find_packages(include=["captions", "captions.*", "pipeline", "pipeline.*", "transforms", "transforms.*", "decoder", "decoder.*", "s3d", "s3d.*",
                                    "synthetic", "synthetic.*", "vector_index", "vector_index.*",
                                    "storage", "storage.*"]),
    package_data={"s3d": ["standin_vocab.txt", "state_dict_layout.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "s3d-export=s3d.export:main",
            "s3d-inspect=s3d.inspect:main",
            "s3d-extract=pipeline.extract:main",
            "s3d-embed-text=pipeline.embed_text:main",
            "s3d-search=pipeline.search:main",
            "s3d-check-run=pipeline.check_run:main",
            "s3d-frames=pipeline.frames:main",
            "s3d-index=pipeline.index:main",
            "s3d-evaluate=pipeline.evaluate:main",
        ],
    },
)
