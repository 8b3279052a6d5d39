"""The export as TF Hub's Reusable SavedModel: fine-tuning through hub.KerasLayer, and a linear probe on mixed_5c."""

from __future__ import annotations

import numpy as np
import pytest

from s3d.quiet import import_tensorflow, import_tensorflow_hub

tf = import_tensorflow()
hub = import_tensorflow_hub()


def _clips(batch: int = 2, frames: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (batch, frames, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def loaded(standin_dir):
    return hub.load(standin_dir)


def test_the_export_has_the_reusable_savedmodel_attributes(loaded):
    names = {v.name for v in loaded.variables}
    trainable = {v.name for v in loaded.trainable_variables}
    assert trainable < names
    assert not any("running_" in n for n in trainable)  # BatchNorm statistics are not trained
    assert any("running_mean" in n for n in names - trainable)
    assert any("conv1/weight" in n for n in trainable) and any("bn1/weight" in n for n in trainable)
    assert not any(n.startswith("text_module") for n in names)  # the video tower's own
    assert list(loaded.regularization_losses) == []
    text_names = {v.name for v in loaded.text.trainable_variables}
    assert text_names and all(n.startswith("text_module") for n in text_names)


def test_inference_mode_equals_the_video_signature_and_training_mode_differs(loaded):
    images = tf.constant(_clips())
    signature = loaded.signatures["video"](images=images)
    inference = loaded(images, training=False)
    training = loaded(images, training=True)
    for key in ("mixed_5c", "video_embedding"):
        np.testing.assert_allclose(inference[key].numpy(), signature[key].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(training["video_embedding"].numpy(), inference["video_embedding"].numpy(), atol=1e-3)
    words = tf.constant(["cut the tomato"])
    np.testing.assert_allclose(loaded.text(words)["text_embedding"].numpy(),
                               loaded.signatures["text"](words=words)["text_embedding"].numpy(), rtol=1e-6)


def fine_tune_one_step(path: str) -> dict:
    """One SGD step through hub.KerasLayer(trainable=True): gradients and the output before and after."""
    import tf_keras

    layer = hub.KerasLayer(path, trainable=True, output_key="video_embedding")
    inputs = tf_keras.Input(shape=(None, None, None, 3))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(layer(inputs)))
    images = tf.constant(_clips(seed=1))
    labels = tf.constant([0, 1])
    before = layer(images, training=False).numpy()
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    tf_keras.optimizers.SGD(0.1).apply_gradients(zip(grads, model.trainable_variables, strict=True))
    after = layer(images, training=False).numpy()
    conv_grads = [g for g, v in zip(grads, model.trainable_variables, strict=True) if "conv" in v.name and "weight" in v.name]
    return {"before": before, "after": after, "conv_grads": conv_grads, "trainable": layer.trainable_weights,
            "non_trainable": layer.non_trainable_weights}


def test_one_optimizer_step_through_keras_layer_trains_the_convolutions(standin_dir):
    result = fine_tune_one_step(standin_dir)
    assert result["conv_grads"] and all(g is not None for g in result["conv_grads"])
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in result["conv_grads"])
    assert not np.allclose(result["before"], result["after"])
    assert result["non_trainable"] and all("running_" in w.name for w in result["non_trainable"])


def _stripes(seed: int):
    def frame(i: int, w: int, h: int) -> np.ndarray:
        x = np.arange(w)[None, :, None]
        value = 127.5 + 127.5 * np.sin(2 * np.pi * (x + (3 + seed) * i) / (8 + seed))
        return np.broadcast_to(value, (h, w, 3)).astype(np.uint8)
    return frame


def _blobs(seed: int):
    colour = np.random.default_rng(seed).integers(60, 256, 3)
    def frame(i: int, w: int, h: int) -> np.ndarray:
        y, x = np.mgrid[0:h, 0:w]
        cx, cy = (w // 2 + 12 * np.cos(0.3 * i + seed)), (h // 2 + 8 * np.sin(0.3 * i + seed))
        inside = ((x - cx) ** 2 + (y - cy) ** 2) < (10 + seed) ** 2
        return (inside[..., None] * colour).astype(np.uint8)
    return frame


def test_the_linear_probe_example_separates_two_scene_kinds(standin_dir, tmp_path):
    from examples.linear_probe import evaluate
    from pipeline import extract
    from synthetic.videos import write_video

    labels, uris = {}, []
    for kind, make in (("stripes", _stripes), ("blobs", _blobs)):
        for seed in range(6):
            uri = write_video(str(tmp_path / f"{kind}{seed}.mp4"), 30, fps=10, width=96, height=96, frame_fn=make(seed))
            uris.append(uri)
            labels[f"{kind}{seed}"] = kind
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,uri\n" + "".join(f"{v},{u}\n" for v, u in zip(labels, uris, strict=True)))
    prefix = str(tmp_path / "run")
    assert extract.main(["--input", str(manifest), "--output_prefix", prefix, "--model", standin_dir,
                         "--size", "96", "--frames_per_clip", "8", "--fps", "10"]) == 0
    for level in ("clips", "videos"):
        result = evaluate(prefix, labels, level)
        assert result["test_rows"] >= 4 and result["accuracy"] >= 0.9, (level, result)


def test_the_fine_tune_example_trains_the_encoder(standin_dir):
    from examples.fine_tune import build

    clips = np.random.default_rng(0).uniform(0, 1, (4, 8, 32, 32, 3)).astype(np.float32)
    classifier = build(standin_dir, classes=2, seed=0)
    encoder = classifier.layers[1]
    conv1 = next(w for w in encoder.trainable_weights if "conv1/weight" in w.name)
    before = conv1.numpy().copy()
    history = classifier.fit(clips, np.array([0, 1, 0, 1]), batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(conv1.numpy(), before)  # the encoder itself was trained, not only the head
