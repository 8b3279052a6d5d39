"""S3D-G with the MIL-NCE heads, in TensorFlow 2 (channels-last), and its hub-style signatures.

The network follows the PyTorch port layer for layer (docs/model.md, "Architecture") so that
the authors' checkpoint maps onto it one tensor at a time. Parameters live in a
dict keyed by state_dict name, stored in TensorFlow layout.
"""

from __future__ import annotations

import numpy as np

from s3d.architecture import (
    BN_EPSILON,
    NUM_TEXT_TOKENS,
    VIDEO_LAYERS,
    Gating,
    Inception,
    MaxPool,
    STConv,
    conv_stages,
    inception_convs,
    inception_gatings,
    is_trainable,
    parameter_layout,
)
from s3d.quiet import import_tensorflow
from s3d.vocab import word_to_token

tf = import_tensorflow()  # without TensorFlow's start-up chatter

# Python's `\w` on str is a letter, a number or '_'; RE2's `\w` is ASCII-only, so spell it out.
_NOT_WORD_RE = r"[^\p{L}\p{N}_']+"

VIDEO_INPUT_SPEC = tf.TensorSpec([None, None, None, None, 3], tf.float32, name="images")
TEXT_INPUT_SPEC = tf.TensorSpec([None], tf.string, name="words")


def init_parameters(vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded random parameters for the untrained stand-in, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for key, shape in parameter_layout(vocab_size).items():
        if len(shape) == 5:  # conv kernel: He-normal on fan-in
            fan_in = int(np.prod(shape[:4]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif key.endswith("word_embd.weight"):
            value = rng.normal(0.0, 1.0, shape)
        elif len(shape) == 2:  # linear [in, out]
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        elif key.endswith(".running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif ".bn" in key and key.endswith(".weight"):
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:  # biases, BN shifts and running means
            value = 0.1 * rng.normal(size=shape)
        params[key] = value.astype(np.float32)
    return params


def calibration_clips(seed: int, count: int = 4, frames: int = 16, size: int = 112) -> np.ndarray:
    """Synthetic clips with video-like statistics (smooth, moving, coloured) to calibrate BatchNorm on."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None, None]
    y = np.arange(size)[None, :, None, None]
    x = np.arange(size)[None, None, :, None]
    clips = []
    for _ in range(count):
        freq = rng.uniform(0.02, 0.3, (1, 1, 1, 3))
        speed = rng.uniform(-2, 2, (1, 1, 1, 3))
        phase = rng.uniform(0, 2 * np.pi, (1, 1, 1, 3))
        angle = rng.uniform(0, np.pi)
        wave = np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y + speed * t) + phase)
        coarse = rng.uniform(0, 1, (frames // 4 + 1, size // 16 + 1, size // 16 + 1, 3))
        blocks = coarse.repeat(4, 0)[:frames].repeat(16, 1)[:, :size].repeat(16, 2)[:, :, :size]
        clips.append(np.clip(0.5 + 0.3 * wave + 0.4 * (blocks - 0.5), 0, 1))
    return np.stack(clips).astype(np.float32)


def calibrated_parameters(params: dict[str, np.ndarray], vocabulary: list[str], seed: int) -> dict[str, np.ndarray]:
    """`params` with BatchNorm running statistics measured on synthetic clips (see calibrate_batchnorm)."""
    network = S3DNetwork(params, vocabulary)
    network.calibrate_batchnorm(tf.constant(calibration_clips(seed)))
    return {key: variable.numpy() for key, variable in network.params.items()}


def space_to_depth(images: tf.Tensor) -> tf.Tensor:
    """[B, T, H, W, C] -> [B, T/2, H/2, W/2, 8C] with channels ordered (dt, dh, dw, c)."""
    shape = tf.shape(images)
    b, t, h, w, c = shape[0], shape[1], shape[2], shape[3], images.shape[-1]
    x = tf.reshape(images, [b, t // 2, 2, h // 2, 2, w // 2, 2, c])
    x = tf.transpose(x, [0, 1, 3, 5, 2, 4, 6, 7])
    return tf.reshape(x, [b, t // 2, h // 2, w // 2, 8 * c])


def max_pool_same(x: tf.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> tf.Tensor:
    """The port's MaxPool3dTFPadding: zero-pad max(k - s, 0) (smaller half first), then ceil-mode pooling.

    Zero padding acts as -inf because every pooled tensor in the network is non-negative
    (after ReLU or gating). Ceil mode is reproduced by padding the tail with zeros.
    """
    shape = tf.shape(x)
    paddings = [[0, 0]]
    for axis, (k, s) in enumerate(zip(kernel, stride, strict=True), start=1):
        total = max(k - s, 0)
        before = total // 2
        padded = shape[axis] + total
        out = (padded - k + s - 1) // s + 1
        ceil_extra = (out - 1) * s + k - padded
        paddings.append([before, total - before + ceil_extra])
    paddings.append([0, 0])
    x = tf.pad(x, paddings)
    return tf.nn.max_pool3d(x, ksize=kernel, strides=stride, padding="VALID")


def conv3d_same(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Stride-1 'SAME' 3-d convolution; every conv of S3D has stride 1.

    With oneDNN, one general conv3d is as fast as lowering [1,k,k] / [k,1,1] / 1x1x1 kernels
    to conv2d or matmul over reshaped tensors (measured: ratio 1.00), so it stays simple.
    """
    return tf.nn.conv3d(x, kernel, strides=[1, 1, 1, 1, 1], padding="SAME")


class S3DNetwork(tf.Module):
    """The video and text towers over a dict of parameters (state_dict keys, TF layout)."""

    def __init__(self, params: dict[str, np.ndarray], vocabulary: list[str]):
        super().__init__(name="s3d_milnce")
        vocab_size = len(vocabulary)
        expected = parameter_layout(vocab_size)
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        if missing or extra:
            raise ValueError(f"parameters do not match the S3D layout: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, shape in expected.items():
            if tuple(params[key].shape) != shape:
                raise ValueError(f"parameter {key} has shape {tuple(params[key].shape)}, expected {shape}")
        # Weights, BatchNorm scales and offsets are trainable; BatchNorm's running statistics are not.
        self.params = {
            k: tf.Variable(params[k], trainable=is_trainable(k), name=k.replace(".", "/")) for k in expected
        }
        mapping = word_to_token(vocabulary)
        self.vocab_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(mapping.keys()), tf.string), tf.constant(list(mapping.values()), tf.int64)
            ),
            default_value=0,
        )

    # ---- video tower -------------------------------------------------------------------------

    def calibrate_batchnorm(self, images: tf.Tensor) -> None:
        """Sets every BatchNorm's running statistics to those of its input on `images` (eagerly).

        For the untrained stand-in only: with random statistics a deep random network maps
        every clip to nearly the same embedding; calibrated, its outputs depend on the input
        the way a trained network's do, which keeps search tests and demos honest.
        """
        self._calibrating = True
        try:
            self.embed_video(images)
        finally:
            self._calibrating = False

    def _stconv(self, x: tf.Tensor, conv: STConv, training: bool = False) -> tf.Tensor:
        for stage, *_ in conv_stages(conv):
            p = self.params
            bn = f"{conv.name}.bn{stage}"
            weight = p[f"{conv.name}.conv{stage}.weight"]
            if training:
                # BatchNorm in training mode (the published module's "train" graph): the batch's
                # own statistics; the running statistics are left as they are.
                z = conv3d_same(x, weight)
                mean, var = tf.nn.moments(z, axes=[0, 1, 2, 3])
                x = tf.nn.relu((z - mean) * tf.math.rsqrt(var + BN_EPSILON) * p[f"{bn}.weight"] + p[f"{bn}.bias"])
                continue
            if getattr(self, "_calibrating", False):
                z = conv3d_same(x, weight)
                mean, var = tf.nn.moments(z, axes=[0, 1, 2, 3])
                p[f"{bn}.running_mean"].assign(mean)
                p[f"{bn}.running_var"].assign(var)
            scale = p[f"{bn}.weight"] * tf.math.rsqrt(p[f"{bn}.running_var"] + BN_EPSILON)
            shift = p[f"{bn}.bias"] - p[f"{bn}.running_mean"] * scale
            # BatchNorm in inference mode folded into the kernel: one multiply on the weights.
            x = tf.nn.relu(conv3d_same(x, weight * scale) + shift)
        return x

    def _gating(self, x: tf.Tensor, gating: Gating) -> tf.Tensor:
        pooled = tf.reduce_mean(x, axis=[1, 2, 3])
        weights = tf.sigmoid(tf.matmul(pooled, self.params[f"{gating.name}.fc.weight"]) + self.params[f"{gating.name}.fc.bias"])
        return x * weights[:, None, None, None, :]

    def _inception(self, x: tf.Tensor, block: Inception, training: bool = False) -> tf.Tensor:
        b0, b1a, b1b, b2a, b2b, b3b = inception_convs(block)
        g0, g1, g2, g3 = inception_gatings(block)
        t = training
        branch0 = self._gating(self._stconv(x, b0, t), g0)
        branch1 = self._gating(self._stconv(self._stconv(x, b1a, t), b1b, t), g1)
        branch2 = self._gating(self._stconv(self._stconv(x, b2a, t), b2b, t), g2)
        branch3 = self._gating(self._stconv(max_pool_same(x, (3, 3, 3), (1, 1, 1)), b3b, t), g3)
        return tf.concat([branch0, branch1, branch2, branch3], axis=-1)

    def embed_video(self, images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        """images float32 [B, T, H, W, 3] in [0, 1], T/H/W even -> video_embedding, mixed_5c.

        `training=True` runs BatchNorm on the batch's statistics (for fine-tuning).
        """
        dims = tf.shape(images)[1:4]
        tf.debugging.assert_equal(
            tf.math.floormod(dims, 2),
            tf.zeros_like(dims),
            message="S3D needs an even number of frames, height and width (images is [B, T, H, W, 3])",
        )
        x = space_to_depth(images)
        for layer in VIDEO_LAYERS:
            if isinstance(layer, STConv):
                x = self._stconv(x, layer, training)
            elif isinstance(layer, MaxPool):
                x = max_pool_same(x, layer.kernel, layer.stride)
            elif isinstance(layer, Gating):
                x = self._gating(x, layer)
            else:
                x = self._inception(x, layer, training)
        mixed_5c = tf.reduce_mean(x, axis=[1, 2, 3])
        return {"video_embedding": self.video_head(mixed_5c), "mixed_5c": mixed_5c}

    def video_head(self, mixed_5c: tf.Tensor) -> tf.Tensor:
        """The linear 1024 -> 512 layer from `mixed_5c` to `video_embedding`."""
        return tf.matmul(mixed_5c, self.params["fc.weight"]) + self.params["fc.bias"]

    # ---- text tower --------------------------------------------------------------------------

    def tokenize(self, words: tf.Tensor) -> tf.Tensor:
        """string [B] -> int64 [B, 16]: lower-case, `[\\w']+` words, known ones' tokens, first 16, zero-padded."""
        lowered = tf.strings.lower(words, encoding="utf-8")
        split = tf.strings.split(tf.strings.regex_replace(lowered, _NOT_WORD_RE, " "))
        tokens = tf.ragged.map_flat_values(self.vocab_table.lookup, split)
        known = tf.ragged.boolean_mask(tokens, tokens > 0)
        return known.to_tensor(default_value=0, shape=[None, NUM_TEXT_TOKENS])

    def embed_text(self, words: tf.Tensor) -> dict[str, tf.Tensor]:
        p = self.params
        x = tf.gather(p["text_module.word_embd.weight"], self.tokenize(words))
        x = tf.nn.relu(tf.einsum("btd,dh->bth", x, p["text_module.fc1.weight"]) + p["text_module.fc1.bias"])
        x = tf.reduce_max(x, axis=1)
        return {"text_embedding": tf.matmul(x, p["text_module.fc2.weight"]) + p["text_module.fc2.bias"]}


def signatures(network: S3DNetwork) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """The hub module's two signatures, `video(images)` and `text(words)`, and no `default`."""

    @tf.function(input_signature=[VIDEO_INPUT_SPEC], autograph=False)
    def video(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return network.embed_video(images)

    @tf.function(input_signature=[TEXT_INPUT_SPEC], autograph=False)
    def text(words: tf.Tensor) -> dict[str, tf.Tensor]:
        return network.embed_text(words)

    return {"video": video.get_concrete_function(), "text": text.get_concrete_function()}


class _Reusable(tf.__internal__.tracking.AutoTrackable):
    """An object with TF Hub's Reusable SavedModel attributes (set by `reusable`)."""


def _tower_variables(network: S3DNetwork, text: bool) -> list[tf.Variable]:
    return [v for k, v in network.params.items() if k.startswith("text_module.") == text]


def _as_saving():
    """The context `tf.saved_model.save` traces in (with its default options), for `reusable`'s traces.

    The save traces every traced signature of a tf.function again inside its save context, which is part
    of a trace's cache key (TensorFlow's polymorphic_function/function_context.py): the video tower's two
    traces made outside it cost two more at the save (about 2.6 s of a core an export). Traced inside the
    same context, the save finds them. The context is TensorFlow's internal module: where it has moved,
    the export traces twice again, as before, and writes the same model.
    """
    import contextlib

    try:
        from tensorflow.python.saved_model import save_context, save_options
    except ImportError:
        return contextlib.nullcontext()
    return save_context.save_context(save_options.SaveOptions())


def reusable(network: S3DNetwork) -> _Reusable:
    """The object to save: TF Hub's Reusable SavedModel API over the video tower, the text tower beside it.

    - `obj(images, training=False)` -> the `video` signature's dict; `training=True` runs
      BatchNorm on the batch's statistics, like the published module's "train" graph;
    - `obj.variables`, `obj.trainable_variables` (convolutions, BatchNorm scales and offsets,
      gating and the head; not the running statistics), `obj.regularization_losses` (none);
    - `obj.text`: the same for the text tower, `obj.text(words)` -> {"text_embedding": ...};
    - `obj.video_head_fn(mixed_5c)` -> video_embedding (for checks).
    So `hub.KerasLayer(path, trainable=True, output_key="video_embedding")` fine-tunes it.
    """
    root = _Reusable()
    root.network = network

    @tf.function(autograph=False)
    def video(images, training=False):
        return network.embed_video(images, training=training)

    @tf.function(autograph=False)
    def text(words, training=False):
        del training  # no BatchNorm or dropout in the text tower
        return network.embed_text(words)

    with _as_saving():
        for training in (False, True):  # both traces are saved; a Python bool picks one after loading
            video.get_concrete_function(VIDEO_INPUT_SPEC, training=training)
            text.get_concrete_function(TEXT_INPUT_SPEC, training=training)
    root.__call__ = video
    root.variables = _tower_variables(network, text=False)
    root.trainable_variables = [v for v in root.variables if v.trainable]
    root.regularization_losses = []
    root.text = _Reusable()
    root.text.__call__ = text
    root.text.variables = _tower_variables(network, text=True)
    root.text.trainable_variables = list(root.text.variables)
    root.text.regularization_losses = []
    root.video_head_fn = tf.function(
        network.video_head, input_signature=[tf.TensorSpec([None, 1024], tf.float32, name="mixed_5c")], autograph=False
    )
    return root
