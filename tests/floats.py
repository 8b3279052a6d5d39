"""Comparing S3D features by what they mean, across batches, processes and CPUs.

One clip's features change in the last bits with the batch it is computed in and the
kernels oneDNN picks for it (AVX2 blocks differently from AVX-512). What users do with
features is dot products and cosines, so two feature vectors are "the same" when their
difference is small against their length: ||a - b|| <= FEATURE_RTOL * ||b||, row by row.

FEATURE_RTOL: float32's unit roundoff is 6e-8; S3D's ~20 layers each sum up to 22,000
products (3x3x3 over 832 channels), and a change of summation order moves a sum by about
sqrt(n) roundoffs, ~1e-5 per layer at the worst, compounded through the layers. Measured
on the suite's natural-looking videos: 3.5e-6 (batch of 3 against one by one) and up to
2e-5 (job rows against the model called directly, AVX2 against AVX-512 kernels). 1e-4
leaves a margin of 5x above the largest; a real defect (another frame, a wrong mean, the
wrong crop) moves features by 1e-2 and more.

Uniform noise is not natural-looking: the untrained stand-in amplifies such differences to
5e-2, so feature comparisons run on the synthetic videos or `natural_clips`.
"""

from __future__ import annotations

import numpy as np

FEATURE_RTOL = 1e-4


def relative_errors(actual, expected) -> np.ndarray:
    """||a - b|| / ||b|| per row (vectors are the last axis)."""
    a = np.atleast_2d(np.asarray(actual, np.float64))
    b = np.atleast_2d(np.asarray(expected, np.float64))
    assert a.shape == b.shape, f"shapes differ: {a.shape} and {b.shape}"
    return np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), np.finfo(np.float64).tiny)


def assert_features_close(actual, expected, what: str = "", rtol: float = FEATURE_RTOL) -> None:
    """Each row of `actual` equals the same row of `expected` within `rtol` of its length."""
    errors = relative_errors(actual, expected)
    assert errors.size > 0, f"{what}: nothing to compare"
    worst = int(np.argmax(errors))
    assert errors[worst] <= rtol, f"{what}: row {worst} differs by {errors[worst]:.2e} of its length (> {rtol:g})"
