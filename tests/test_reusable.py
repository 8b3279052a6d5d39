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


def test_the_fine_tune_example_trains_every_convolution_of_the_encoder(standin_dir):
    """examples/fine_tune.py's classifier through Keras's fit: the gradients reach every convolution of the
    hub.KerasLayer, and BatchNorm's running statistics are the layer's only non-trainable weights.

    Plain SGD moves a weight only by its gradient, so a convolution whose weights changed had a gradient
    that was there and not zero (one fit serves both checks: tracing a training step costs ~10 s).
    """
    from examples.fine_tune import build

    clips = _clips(batch=4, seed=0)
    classifier = build(standin_dir, classes=2, seed=0, learning_rate=0.1)
    encoder = classifier.layers[1]
    convolutions = [w for w in encoder.trainable_weights if "conv" in w.name and "weight" in w.name]
    before = {w.name: w.numpy().copy() for w in convolutions}
    output_before = encoder(clips, training=False).numpy()
    history = classifier.fit(clips, np.array([0, 1, 0, 1]), batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert len(convolutions) > 50 and any("conv1/weight" in name for name in before)
    unchanged = [w.name for w in convolutions if np.array_equal(w.numpy(), before[w.name])]
    assert not unchanged, unchanged  # the encoder itself was trained, every layer of it, not only the head
    assert not np.allclose(encoder(clips, training=False).numpy(), output_before)
    assert encoder.non_trainable_weights and all("running_" in w.name for w in encoder.non_trainable_weights)
