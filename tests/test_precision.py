"""--precision: the video tower in bfloat16 or float16, what it keeps in float32, and what it does to the features."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from benchmarks.precision import TEXT_QUERIES, cosine, embed, natural_clips, top10_overlap
from s3d.precision import KEEP_DEPTH, check_precision, hardware_warning, keep_float32, op_dtypes


@pytest.fixture(scope="module")
def models(standin_dir):
    from s3d.loader import load_s3d

    # float16 is loaded by the test of its CPU fallback (the warning is logged at load)
    return {p: load_s3d(standin_dir, precision=p) for p in ("float32", "bfloat16")}


@pytest.fixture(scope="module")
def clips():
    """The benchmark's corpus: natural-looking clips at the job's size (32 frames, 224x224), uint8 as the job feeds them."""
    return natural_clips(48)


@pytest.fixture(scope="module")
def features(models, clips):
    return {p: embed(m, clips) for p, m in models.items()}


def _check_shapes(model, precision):
    frames = natural_clips(2, seed=7, frames=16, size=112)
    assert model.precision == precision
    mixed, emb = model.embed_video(frames)
    assert mixed.shape == (2, 1024) and emb.shape == (2, 512), precision
    assert mixed.dtype == np.float32 and emb.dtype == np.float32, precision
    assert np.isfinite(mixed).all() and np.isfinite(emb).all(), precision


def test_float32_and_bfloat16_load_run_and_keep_the_shapes_and_dtypes(models):
    for precision, model in models.items():
        _check_shapes(model, precision)


def test_float32_is_the_modules_own_signature_bit_for_bit(standin_dir, models, clips):
    import tensorflow as tf

    from s3d.quiet import import_tensorflow_hub

    module = import_tensorflow_hub().load(standin_dir)
    direct = module.signatures["video"](images=tf.cast(tf.constant(clips[:4]), tf.float32) / 255.0)
    mixed, emb = models["float32"].embed_video(clips[:4])
    assert models["float32"].lowering is None
    np.testing.assert_array_equal(mixed, direct["mixed_5c"].numpy())
    np.testing.assert_array_equal(emb, direct["video_embedding"].numpy())


def test_bfloat16_lowers_the_network_and_keeps_the_first_convolutions_in_float32(models):
    model = models["bfloat16"]
    graph = model._video.graph_def
    dtypes = op_dtypes(graph)
    assert dtypes["bfloat16"] > 400, dtypes  # the convolutions, pools, gating, concatenations
    report = model.lowering
    assert report.effective and report.lowered_ops == dtypes["bfloat16"]
    kept = {n.name: n for n in graph.node if n.name in report.kept_float32}
    assert len(kept) == KEEP_DEPTH and all(n.op == "Conv3D" and n.attr["T"].type == 1 for n in kept.values())
    # conv1 (2x4x4 over 24 space-to-depth channels) reads the images: the first one kept.
    first = next(n for n in graph.node if n.op == "Conv3D")
    assert first.name in kept
    convs = [n for n in graph.node if n.op == "Conv3D"]
    lowered = [n for n in convs if n.attr["T"].type == 14]
    assert len(lowered) == len(convs) - KEEP_DEPTH


def test_keep_float32_goes_by_convolution_depth_from_the_input():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 8, 3], tf.float32)])
    def net(x):
        k = tf.ones
        a = tf.nn.conv3d(x, k([1, 3, 3, 3, 4]), [1] * 5, "SAME", name="reads_images")
        b = tf.nn.conv3d(tf.nn.relu(a), k([1, 1, 1, 4, 4]), [1] * 5, "SAME", name="second")
        c = tf.nn.conv3d(b, k([1, 1, 1, 4, 4]), [1] * 5, "SAME", name="third")
        d = tf.nn.conv3d(c, k([3, 1, 1, 4, 4]), [1] * 5, "SAME", name="fourth")
        e = tf.nn.conv3d(a, k([1, 1, 1, 4, 4]), [1] * 5, "SAME", name="branch_of_the_first")
        return tf.concat([c, d, e], -1)

    graph = net.get_concrete_function().graph.as_graph_def()
    assert keep_float32(graph, 1) == ["reads_images"]
    assert sorted(keep_float32(graph, 2)) == ["branch_of_the_first", "reads_images", "second"]
    assert sorted(keep_float32(graph, 3)) == ["branch_of_the_first", "reads_images", "second", "third"]
    assert keep_float32(graph, 0) == []


def test_natural_clips_in_bfloat16_stay_close_to_float32(features):
    for key in ("video_embedding", "mixed_5c"):
        c = cosine(features["float32"][key][:16], features["bfloat16"][key][:16])
        assert c.mean() >= 0.998 and c.min() >= 0.995, (key, c)
        assert c.min() < 1.0  # it did change: a lower precision really ran


def test_text_queries_find_the_same_top_10_clips_in_bfloat16(models, features):
    queries = models["float32"].embed_text(TEXT_QUERIES)
    overlap = top10_overlap(queries, features["float32"]["video_embedding"], features["bfloat16"]["video_embedding"])
    assert overlap["mean"] >= 0.9


def test_the_text_tower_stays_float32_at_every_precision(models):
    sentences = ["someone cutting an apple", "a dog running on grass"]
    np.testing.assert_array_equal(models["bfloat16"].embed_text(sentences), models["float32"].embed_text(sentences))


@pytest.mark.skipif("__import__('tensorflow').config.list_physical_devices('GPU')",
                    reason="this checks the CPU-only fallback")
def test_float16_without_a_gpu_warns_and_computes_float32(standin_dir, models, clips, caplog):
    from s3d.loader import load_s3d

    with caplog.at_level(logging.WARNING, logger="s3d.loader"):
        model = load_s3d(standin_dir, precision="float16")
    warnings = [r.getMessage() for r in caplog.records if "float16" in r.getMessage()]
    assert warnings and "no GPU" in warnings[0] and "float32" in warnings[0]
    assert model.lowering.lowered_ops == 0
    _check_shapes(model, "float16")
    np.testing.assert_array_equal(model.embed_video(clips[:2])[1], models["float32"].embed_video(clips[:2])[1])


def test_hardware_warnings_say_what_to_expect():
    assert hardware_warning("float32", None, False, None) is None
    assert hardware_warning("bfloat16", None, True, None) is None
    no_units = hardware_warning("bfloat16", None, False, None)
    assert "AVX512_BF16" in no_units and "slower than float32" in no_units
    on_gpu = hardware_warning("bfloat16", "/device:GPU:0", True, (8, 9))
    assert "/device:GPU:0" in on_gpu and "float16" in on_gpu
    assert hardware_warning("float16", "/device:GPU:0", None, (7, 5)) is None
    old_gpu = hardware_warning("float16", "/device:GPU:0", None, (6, 1))
    assert "6.1" in old_gpu and "tensor cores" in old_gpu
    assert "no GPU" in hardware_warning("float16", None, True, None)


def test_a_bad_precision_is_named():
    from s3d.loader import load_s3d

    with pytest.raises(ValueError, match="'half'"):
        check_precision("half")
    with pytest.raises(ValueError, match="'fp8'"):
        load_s3d("/nowhere", precision="fp8")
