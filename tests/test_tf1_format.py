"""load_s3d and the job on a module in the TF1 Hub format, the format the published module ships in."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.dataset as ds
import pytest
from floats import assert_features_close
from machine import needs_native_bf16
from tf1_hub_module import write_tf1_hub_module

from benchmarks.precision import natural_clips


@pytest.fixture(scope="module")
def tf1_module(tmp_path_factory):
    from s3d.network import calibrated_parameters, init_parameters
    from s3d.vocab import standin_vocabulary

    words = standin_vocabulary()
    params = calibrated_parameters(init_parameters(len(words), 0), words, 0)  # the stand-in's (seed 0)
    return write_tf1_hub_module(str(tmp_path_factory.mktemp("tf1") / "module"), params, words)


@pytest.fixture(scope="module")
def tf1_model(tf1_module):
    """The TF1 module as the job loads it: once a process (so the job's test below finds it loaded)."""
    from s3d.loader import load_once

    return load_once(tf1_module, "float32")


def test_the_module_has_the_tf1_hub_layout(tf1_module):
    from tensorflow.core.protobuf import saved_model_pb2

    assert os.path.exists(os.path.join(tf1_module, "tfhub_module.pb"))
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(tf1_module, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    variants = {tuple(m.meta_info_def.tags) for m in saved.meta_graphs}
    assert variants == {(), ("train",)}
    for meta in saved.meta_graphs:
        assert set(meta.signature_def) == {"video", "text"}
        assert set(meta.signature_def["video"].inputs) == {"images"}
        assert set(meta.signature_def["text"].inputs) == {"words"}


def test_load_s3d_uses_the_inference_variant_and_matches_the_tf2_export(tf1_model, standin_model):
    model = tf1_model
    assert model.provenance["kind"] == "external"
    clip = natural_clips(2, seed=3, frames=16, size=64)
    mixed, emb = model.embed_video(clip)
    ref_mixed, ref_emb = standin_model.embed_video(clip)  # the same parameters, exported for TF2
    assert_features_close(mixed, ref_mixed, "mixed_5c")  # another graph of the same arithmetic
    assert_features_close(emb, ref_emb, "video_embedding")
    sentences = ["cut the tomato", "a dog runs on the beach"]
    np.testing.assert_allclose(model.embed_text(sentences), standin_model.embed_text(sentences), rtol=1e-5, atol=1e-5)
    assert model.known_words(sentences) == [None, None]  # the vocabulary is inside the graph only


def test_no_known_words_on_a_module_without_a_vocabulary_file(tf1_model):
    """The hub module keeps its vocabulary in the graph: "no known word" is decided from the embedding.

    The sentence's embedding is compared with the empty sentence's, computed in another batch, so
    the two differ in the last bits: the decision must not rest on bit equality.
    """
    from s3d.loader import PADDING_RTOL, is_padding_only
    from s3d.vocab import standin_vocabulary

    model = tf1_model
    words = standin_vocabulary()
    unknown = ["qwerty zxcv", "", "!!!", "zzz " * 20]
    sentences = [*unknown, *words, "cut the tomato"]
    assert model.known_words(sentences) == [None] * len(sentences)
    for batch in (sentences, sentences[::-1], sentences[:7]):  # batch composition changes the last bits
        flags = dict(zip(batch, model.no_known_words(batch), strict=True))
        assert [s for s in batch if flags[s]] == [s for s in batch if s in unknown], "only the unknown ones"
    # Every sentence of one known word is far from the padding vector, next to the tolerance.
    padding = model.embed_text([""])[0]
    one_word = model.embed_text(words)
    distance = np.linalg.norm(one_word - padding, axis=1) / np.linalg.norm(padding)
    assert distance.min() > 100 * PADDING_RTOL, distance.min()
    assert not is_padding_only(one_word, padding).any()


def test_the_train_variant_uses_batch_statistics(tf1_module, tf1_model):
    from s3d.quiet import import_tensorflow, import_tensorflow_hub

    tf = import_tensorflow()
    hub = import_tensorflow_hub()
    clips = np.random.default_rng(4).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    _, inference = tf1_model.embed_video(clips)  # load_s3d's variant: the default tags, the inference graph
    images = tf.constant(clips.astype(np.float32) / 255.0)
    train = hub.load(tf1_module, tags={"train"}).signatures["video"](images=images)["video_embedding"].numpy()
    assert not np.allclose(train, inference, atol=1e-3)


@needs_native_bf16
def test_a_lower_precision_works_on_the_tf1_module(tf1_module):
    from s3d.loader import load_s3d

    model = load_s3d(tf1_module, precision="bfloat16")
    assert model.lowering.effective and len(model.lowering.kept_float32) == 3
    mixed, emb = model.embed_video(np.zeros((1, 8, 32, 32, 3), np.uint8))
    assert mixed.shape == (1, 1024) and emb.shape == (1, 512)


def test_the_job_runs_on_the_tf1_module(tf1_module, tmp_path):
    from pipeline import extract
    from synthetic.videos import write_video

    video = write_video(str(tmp_path / "v.mp4"), 20, fps=10, width=64, height=48)
    prefix = str(tmp_path / "out")
    assert extract.main(["--input", video, "--output_prefix", prefix, "--model", tf1_module,
                         "--size", "64", "--frames_per_clip", "8", "--fps", "5"]) == 0
    rows = ds.dataset(glob.glob(os.path.join(prefix, "clips", "*.parquet")), format="parquet").to_table().to_pylist()
    assert rows and all(len(r["video_embedding"]) == 512 and len(r["mixed_5c"]) == 1024 for r in rows)
