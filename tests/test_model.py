"""The S3D MIL-NCE network and its SavedModel: interface, shapes, determinism, tokenizer, size."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from floats import FEATURE_RTOL, assert_features_close, relative_errors

from s3d.architecture import REAL_VOCAB_SIZE, is_trainable, parameter_layout, torch_shape
from s3d.export import PROVENANCE_FILE
from s3d.loader import ModelLoadError, load_s3d
from s3d.network import S3DNetwork, calibrated_parameters, init_parameters, max_pool_same, space_to_depth
from s3d.vocab import (
    load_vocabulary,
    standin_vocabulary,
    synthetic_vocabulary,
    tokenize,
    word_to_token,
)


def _clip(batch: int, t: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, t, size, size, 3), dtype=np.uint8)


# ---- the exported interface ------------------------------------------------------------------


@pytest.fixture(scope="module")
def module(standin_dir):
    """The export as hub.load gives it, loaded once for the tests that only call it (about 2.5 s a load)."""
    return hub.load(standin_dir)


def test_export_reloads_with_hub_and_has_exactly_the_two_signatures(module):
    assert sorted(module.signatures.keys()) == ["text", "video"]

    video = module.signatures["video"]
    _, inputs = video.structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.float32
    assert inputs["images"].shape.as_list() == [None, None, None, None, 3]
    outputs = video.structured_outputs
    assert sorted(outputs) == ["mixed_5c", "video_embedding"]
    assert outputs["mixed_5c"].shape.as_list() == [None, 1024]
    assert outputs["video_embedding"].shape.as_list() == [None, 512]
    assert all(o.dtype == tf.float32 for o in outputs.values())

    text = module.signatures["text"]
    _, inputs = text.structured_input_signature
    assert list(inputs) == ["words"]
    assert inputs["words"].dtype == tf.string and inputs["words"].shape.as_list() == [None]
    assert list(text.structured_outputs) == ["text_embedding"]
    assert text.structured_outputs["text_embedding"].shape.as_list() == [None, 512]

    out = video(images=tf.zeros([2, 16, 64, 64, 3]))
    assert out["mixed_5c"].shape == (2, 1024) and out["video_embedding"].shape == (2, 512)
    assert text(words=tf.constant(["cut the tomato"]))["text_embedding"].shape == (1, 512)


def test_export_says_it_is_untrained(standin_dir, standin_model):
    with open(os.path.join(standin_dir, PROVENANCE_FILE)) as f:
        provenance = json.load(f)
    assert provenance["trained"] is False and provenance["kind"] == "standin"
    assert provenance["seed"] == 0 and provenance["vocab_size"] == len(standin_vocabulary())
    assert standin_model.trained is False


@pytest.mark.parametrize("t", [16, 32])
@pytest.mark.parametrize("size", [200, 224, 256])
def test_network_is_fully_convolutional(standin_model, t, size):
    mixed_5c, embedding = standin_model.embed_video(_clip(1, t, size))
    assert mixed_5c.shape == (1, 1024) and embedding.shape == (1, 512)
    assert mixed_5c.dtype == np.float32 and np.isfinite(mixed_5c).all() and np.isfinite(embedding).all()
    assert (mixed_5c >= 0).all()  # a mean of gated ReLU outputs
    assert np.abs(embedding).max() > 0


@pytest.mark.parametrize("t,size", [(16, 200), (32, 224)])
def test_batch_of_three_equals_clips_one_by_one(standin_model, t, size):
    from benchmarks.precision import natural_clips

    clips = natural_clips(3, seed=1, frames=t, size=size)  # natural-looking: see tests/floats.py on noise
    mixed_5c, embedding = standin_model.embed_video(clips)
    assert mixed_5c.shape == (3, 1024) and embedding.shape == (3, 512)
    for i in range(3):
        m1, e1 = standin_model.embed_video(clips[i])
        # Equal up to float32 summation order (batched convolutions block differently).
        assert_features_close(m1[0], mixed_5c[i], f"clip {i} mixed_5c")
        assert_features_close(e1[0], embedding[i], f"clip {i} video_embedding")
    assert relative_errors(embedding[0], embedding[1]).min() > 100 * FEATURE_RTOL  # different clips differ


def test_standin_embeddings_depend_on_the_input(standin_model):
    """BatchNorm calibration at export keeps the random network from mapping every clip to one vector."""
    from s3d.network import calibration_clips

    clips = calibration_clips(seed=99, count=4, frames=16, size=112)
    _, emb = standin_model.embed_video(clips)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert cosine[~np.eye(4, dtype=bool)].max() < 0.99


@pytest.mark.parametrize("shape", [(1, 15, 224, 224, 3), (1, 16, 223, 224, 3), (1, 16, 224, 225, 3)])
def test_odd_dimensions_give_a_clear_error(standin_model, shape):
    with pytest.raises(ValueError, match="even"):
        standin_model.embed_video(np.zeros(shape, np.uint8))
    # The exported graph itself refuses too, with a message rather than a reshape failure.
    with pytest.raises(tf.errors.InvalidArgumentError, match="even number of frames"):
        standin_model._video(images=tf.zeros(shape))


def test_bad_frame_arrays_are_refused(standin_model):
    with pytest.raises(ValueError, match="shape"):
        standin_model.embed_video(np.zeros((16, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        standin_model.embed_video(np.zeros((16, 64, 64, 3), np.int32))
    with pytest.raises(TypeError):
        standin_model.embed_text("one string, not a list")


def test_uint8_and_float_inputs_agree(standin_model):
    clip = _clip(1, 16, 64)
    a = standin_model.embed_video(clip)[1]
    b = standin_model.embed_video(clip.astype(np.float32) / 255.0)[1]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _saved_variables(export_dir: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def test_the_export_is_deterministic_for_a_seed(standin_dir):
    """The export writes exactly its seed's calibrated parameters, and calibrating is deterministic: the
    same seed, the same variables bit for bit; another seed, others (the graph is the same code, so the
    outputs are too: they are compared with numpy statements of the network elsewhere). Checked on the
    parameters in memory, without exporting again (an export is about 13 s of tracing)."""
    vocab = standin_vocabulary()
    first = calibrated_parameters(init_parameters(len(vocab), seed=0), vocab, 0)
    again = calibrated_parameters(init_parameters(len(vocab), seed=0), vocab, 0)
    other = calibrated_parameters(init_parameters(len(vocab), seed=1), vocab, 1)
    assert first.keys() == again.keys() == other.keys() and len(first) > 100
    assert all(np.array_equal(again[name], first[name]) for name in first)

    def contents(arrays) -> list[tuple]:
        return sorted((a.shape, np.asarray(a, np.float32).tobytes()) for a in arrays)

    assert contents(_saved_variables(standin_dir).values()) == contents(first.values())  # what the export wrote
    differ = [name for name in first if not np.array_equal(other[name], first[name])]
    assert any("word_embd" in name for name in differ)  # the text tower
    assert sum(not name.startswith("text_module") for name in differ) > 50  # and the video tower's convolutions


def test_head_on_mixed_5c_equals_video_embedding(module):
    out = module.signatures["video"](images=tf.constant(_clip(2, 16, 128).astype(np.float32) / 255.0))
    np.testing.assert_allclose(
        module.video_head_fn(out["mixed_5c"]).numpy(), out["video_embedding"].numpy(), rtol=1e-5, atol=1e-5
    )
    # And the head is the stored fc layer: video_embedding = mixed_5c @ W + b.
    params = init_parameters(len(standin_vocabulary()), seed=0)
    np.testing.assert_allclose(
        out["mixed_5c"].numpy() @ params["fc.weight"] + params["fc.bias"], out["video_embedding"].numpy(), rtol=1e-4, atol=1e-4
    )


# ---- building blocks against numpy statements of the spec ---------------------------------------


def test_space_to_depth_orders_channels_dt_dh_dw_c():
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 8, 3)).astype(np.float32)
    y = space_to_depth(tf.constant(x)).numpy()
    assert y.shape == (2, 2, 3, 4, 24)
    for dt in range(2):
        for dh in range(2):
            for dw in range(2):
                for c in range(3):
                    channel = ((dt * 2 + dh) * 2 + dw) * 3 + c
                    np.testing.assert_array_equal(y[..., channel], x[:, dt::2, dh::2, dw::2, c])


def _reference_max_pool(x: np.ndarray, kernel, stride) -> np.ndarray:
    """PyTorch's ConstantPad3d(max(k-s,0), smaller half first) + MaxPool3d(ceil_mode=True), in numpy."""
    for axis, (k, s) in enumerate(zip(kernel, stride, strict=True), start=1):
        total = max(k - s, 0)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (total // 2, total - total // 2)
        x = np.pad(x, pad)
        n = x.shape[axis]
        out = -(-(n - k) // s) + 1
        windows = [np.take(x, range(i * s, min(i * s + k, n)), axis=axis).max(axis=axis) for i in range(out)]
        x = np.stack(windows, axis=axis)
    return x


@pytest.mark.parametrize("shape", [(1, 4, 8, 8, 2), (2, 5, 25, 13, 3), (1, 7, 7, 9, 1)])
@pytest.mark.parametrize("kernel,stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (1, 1, 1))])
def test_max_pool_matches_the_ports_padding(shape, kernel, stride):
    x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)  # non-negative, as in the network
    np.testing.assert_array_equal(max_pool_same(tf.constant(x), kernel, stride).numpy(), _reference_max_pool(x, kernel, stride))


# ---- text tower ---------------------------------------------------------------------------------

TRICKY_VOCAB = [
    "cut", "the", "tomato", "let's", "don't", "'quoted'", "crème", "brûlée", "トマト", "нож",
    "snake_case", "123", "½", "ünïcödé", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m",
    "cafe", "the",  # "the" twice: the later index wins, as in the authors' dict
]

TRICKY_SENTENCES = [
    "Cut the TOMATO!!!",
    "let's go, don't stop",
    "'quoted' words and \"double\" ones",
    "a b c d e f g h i j k l m cut the tomato extra words past sixteen",
    "qwerty zxcv",
    "",
    "   ",
    "Crème BRÛLÉE à la carte",
    "ÜNÏCÖDÉ tomato",
    "切る トマト",
    "НОЖ и хлеб",
    "cafe\u0301 with a combining accent",
    "snake_case words_here",
    "numbers 123 ½ 4.5",
    "cut\tthe\nbread",
    "tomato-cut/the;tomato",
]


@pytest.fixture(scope="module")
def tricky_network():
    return S3DNetwork(init_parameters(len(TRICKY_VOCAB), seed=3), TRICKY_VOCAB)


def test_tokenizer_matches_the_reference_rules(tricky_network):
    vocab = word_to_token(TRICKY_VOCAB)
    got = tricky_network.tokenize(tf.constant(TRICKY_SENTENCES)).numpy()
    assert got.shape == (len(TRICKY_SENTENCES), 16)
    for sentence, row in zip(TRICKY_SENTENCES, got, strict=True):
        assert row.tolist() == tokenize(sentence, vocab), sentence
    # The rules themselves, on a few rows: dropped unknowns, first 16 kept, padding, last index wins.
    assert tokenize("qwerty zxcv", vocab) == [0] * 16
    assert tokenize("Cut the TOMATO!!!", vocab)[:3] == [1, len(TRICKY_VOCAB), 3]
    assert len([t for t in tokenize(TRICKY_SENTENCES[3], vocab) if t]) == 16


def test_text_signature_equals_a_numpy_text_tower(module):
    """Tokenizer + embedding + fc1/ReLU/max + fc2, exported, against the spec in numpy."""
    words = standin_vocabulary()
    params = init_parameters(len(words), seed=0)
    sentences = ["Cut the tomato into pieces", "", "zzz qqq", "Let's MIX the flour, the sugar & the eggs!"]
    got = module.signatures["text"](words=tf.constant(sentences))["text_embedding"].numpy()
    vocab = word_to_token(words)
    for sentence, row in zip(sentences, got, strict=True):
        tokens = tokenize(sentence, vocab)
        hidden = np.maximum(params["text_module.word_embd.weight"][tokens] @ params["text_module.fc1.weight"] + params["text_module.fc1.bias"], 0)
        expected = hidden.max(axis=0) @ params["text_module.fc2.weight"] + params["text_module.fc2.bias"]
        np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[1], got[2])  # no known word: both are the padding-only vector


# ---- size and vocabularies ----------------------------------------------------------------------


def test_parameter_count_with_the_real_vocabulary_is_31_2_million():
    net = S3DNetwork(init_parameters(REAL_VOCAB_SIZE, seed=0), synthetic_vocabulary(REAL_VOCAB_SIZE))
    learned = sum(int(np.prod(v.shape)) for k, v in net.params.items() if is_trainable(k))
    assert learned == 31_211_336
    assert round(learned / 1e6, 1) == 31.2
    assert net.params["text_module.word_embd.weight"].shape == (66_250, 300)


def test_layout_matches_the_checkpoint_layout_file():
    path = os.path.join(os.path.dirname(__file__), "..", "s3d", "state_dict_layout.json")
    with open(path) as f:
        reference = [e for e in json.load(f) if not e["key"].endswith("num_batches_tracked")]
    layout = parameter_layout(REAL_VOCAB_SIZE)
    assert list(layout) == [e["key"] for e in reference]
    assert [list(torch_shape(k, s)) for k, s in layout.items()] == [e["shape"] for e in reference]


def test_vocabulary_files(tmp_path):
    npy = tmp_path / "s3d_dict.npy"
    np.save(npy, np.array(["cut", "the", "tomato"], dtype=object), allow_pickle=True)
    assert load_vocabulary(str(npy)) == ["cut", "the", "tomato"]
    txt = tmp_path / "vocab.txt"
    txt.write_text("cut\n\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_vocabulary(str(txt))
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_vocabulary(str(tmp_path / "nope.npy"))


def test_export_command_with_a_vocab_file(other_standin_dir):
    """The second stand-in of the suite is the command's own export (conftest: --vocab of 2 words, --seed 5)."""
    from conftest import OTHER_SEED

    from s3d.export import main

    model = load_s3d(other_standin_dir)
    assert model.provenance["vocab_size"] == 2 and model.provenance["seed"] == OTHER_SEED
    emb = model.embed_text(["a knife", "a fork", "a spoon"])
    assert not np.allclose(emb[0], emb[1]) and not np.allclose(emb[0], emb[2])
    with pytest.raises(SystemExit):  # refuses to overwrite without --force
        main(["--output", other_standin_dir])


# ---- the loader's errors ------------------------------------------------------------------------


def test_missing_path_names_the_handle(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="no-such-model.*does not exist"):
        load_s3d(missing)


def test_unreachable_hub_names_the_handle_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    handle = "http://127.0.0.1:9/deepmind/mil-nce/s3d/1"
    with pytest.raises(ModelLoadError) as info:
        load_s3d(handle)
    assert handle in str(info.value) and "TFHUB_CACHE_DIR" in str(info.value)


def test_unreadable_gcs_path_names_the_handle():
    handle = "gs://no-such-bucket-s3d-test/models/mil-nce"  # no network here: unreadable, not missing
    with pytest.raises(ModelLoadError) as info:
        load_s3d(handle)
    assert handle in str(info.value) and "--model" in str(info.value)


def test_a_savedmodel_without_the_signatures_is_refused(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"serving_default": module.f})
    with pytest.raises(ModelLoadError, match="serving_default"):
        load_s3d(str(tmp_path / "other"))


def test_loading_the_stand_in_warns_that_its_embeddings_mean_nothing(standin_dir, caplog):
    import logging

    from s3d.loader import load_s3d

    with caplog.at_level(logging.WARNING, logger="s3d.loader"):
        model = load_s3d(standin_dir)
    assert model.trained is False
    assert any("untrained stand-in" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_only_the_known_start_up_lines_count_as_noise():
    """A real error line is not noise; the CUDA lines are noise only where no driver is installed.

    The command lines with and without the start-up lines: tests/test_console.py.
    """
    from s3d.quiet import is_startup_noise

    cuinit = ("E0000 00:00:1795704260.137925   11169 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
              "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
    assert is_startup_noise(cuinit, driver_present=False) and not is_startup_noise(cuinit, driver_present=True)
    assert not is_startup_noise("E0000 00:00:1.0  1 saved_model.cc:1] could not read variables", False)
    # The progress line, redrawn by another thread while TensorFlow starts, stays; the noise after it goes.
    from s3d.quiet import strip_startup_noise

    captured = ("\r\x1b[Kvideos 0/counting | ETA -WARNING: All log messages before absl::InitializeLog() is called "
                f"are written to STDERR\n{cuinit}\nW0000 00:00:1.0  1 real.cc:1] a real warning\n")
    assert strip_startup_noise(captured, driver_present=False) == (
        "\r\x1b[Kvideos 0/counting | ETA -W0000 00:00:1.0  1 real.cc:1] a real warning\n")
    assert cuinit in strip_startup_noise(captured, driver_present=True)
