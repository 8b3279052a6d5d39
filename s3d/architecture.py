"""The S3D-G / MIL-NCE architecture as data: layer list and parameter layout.

Parameter names are the PyTorch port's state_dict keys (docs/model.md, "Checkpoint layout"), so
the TensorFlow network, the stand-in initialiser and the checkpoint converter all
speak one naming. Shapes here are TensorFlow's (channels-last kernels, [in, out]
linear weights); `torch_shape` gives the matching PyTorch shape.
"""

from __future__ import annotations

from typing import NamedTuple

BN_EPSILON = 1e-5
NUM_TEXT_TOKENS = 16
WORD_EMBEDDING_DIM = 300
TEXT_HIDDEN_DIM = 2048
EMBEDDING_DIM = 512
MIXED_5C_DIM = 1024
# The authors' vocabulary has 66,249 words; row 0 of the table is padding.
REAL_VOCAB_SIZE = 66_249


class Inception(NamedTuple):
    name: str
    in_channels: int
    c0: int
    c1a: int
    c1b: int
    c2a: int
    c2b: int
    c3b: int

    @property
    def out_channels(self) -> int:
        return self.c0 + self.c1b + self.c2b + self.c3b


class MaxPool(NamedTuple):
    name: str
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]


class STConv(NamedTuple):
    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int, int]
    separable: bool


class Gating(NamedTuple):
    name: str
    channels: int


# The video tower after space-to-depth, in execution order (docs/model.md, "Architecture").
VIDEO_LAYERS: tuple = (
    STConv("conv1", 24, 64, (2, 4, 4), False),
    MaxPool("maxpool_2a", (1, 3, 3), (1, 2, 2)),
    STConv("conv_2b", 64, 64, (1, 1, 1), False),
    STConv("conv_2c", 64, 192, (3, 3, 3), True),
    Gating("gating", 192),
    MaxPool("maxpool_3a", (1, 3, 3), (1, 2, 2)),
    Inception("mixed_3b", 192, 64, 96, 128, 16, 32, 32),
    Inception("mixed_3c", 256, 128, 128, 192, 32, 96, 64),
    MaxPool("maxpool_4a", (3, 3, 3), (2, 2, 2)),
    Inception("mixed_4b", 480, 192, 96, 208, 16, 48, 64),
    Inception("mixed_4c", 512, 160, 112, 224, 24, 64, 64),
    Inception("mixed_4d", 512, 128, 128, 256, 24, 64, 64),
    Inception("mixed_4e", 512, 112, 144, 288, 32, 64, 64),
    Inception("mixed_4f", 528, 256, 160, 320, 32, 128, 128),
    MaxPool("maxpool_5a", (2, 2, 2), (2, 2, 2)),
    Inception("mixed_5b", 832, 256, 160, 320, 32, 128, 128),
    Inception("mixed_5c", 832, 384, 192, 384, 48, 128, 128),
)


def inception_convs(block: Inception) -> list[STConv]:
    """The STConv layers of an inception block, named as in the state_dict."""
    n = block.name
    return [
        STConv(f"{n}.conv_b0", block.in_channels, block.c0, (1, 1, 1), False),
        STConv(f"{n}.conv_b1_a", block.in_channels, block.c1a, (1, 1, 1), False),
        STConv(f"{n}.conv_b1_b", block.c1a, block.c1b, (3, 3, 3), True),
        STConv(f"{n}.conv_b2_a", block.in_channels, block.c2a, (1, 1, 1), False),
        STConv(f"{n}.conv_b2_b", block.c2a, block.c2b, (3, 3, 3), True),
        STConv(f"{n}.conv_b3_b", block.in_channels, block.c3b, (1, 1, 1), False),
    ]


def inception_gatings(block: Inception) -> list[Gating]:
    n = block.name
    return [
        Gating(f"{n}.gating_b0", block.c0),
        Gating(f"{n}.gating_b1", block.c1b),
        Gating(f"{n}.gating_b2", block.c2b),
        Gating(f"{n}.gating_b3", block.c3b),
    ]


def conv_stages(conv: STConv) -> list[tuple[str, tuple[int, int, int], int, int]]:
    """(stage suffix, kernel, in, out) for each conv of an STConv: one, or two if separable."""
    kt, kh, kw = conv.kernel
    if conv.separable and kt != 1:
        return [
            ("1", (1, kh, kw), conv.in_channels, conv.out_channels),
            ("2", (kt, 1, 1), conv.out_channels, conv.out_channels),
        ]
    return [("1", conv.kernel, conv.in_channels, conv.out_channels)]


def _bn_params(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
    }


def _stconv_params(conv: STConv) -> dict[str, tuple[int, ...]]:
    params: dict[str, tuple[int, ...]] = {}
    for stage, kernel, cin, cout in conv_stages(conv):
        params[f"{conv.name}.conv{stage}.weight"] = (*kernel, cin, cout)
        params.update(_bn_params(f"{conv.name}.bn{stage}", cout))
    return params


def _linear_params(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cin, cout), f"{prefix}.bias": (cout,)}


def parameter_layout(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every parameter of the network: state_dict key -> TensorFlow shape, in state_dict order.

    `vocab_size` counts words; the embedding table has one more row (padding, token 0).
    `num_batches_tracked` entries are training bookkeeping and are not parameters here.
    """
    params: dict[str, tuple[int, ...]] = {}
    for layer in VIDEO_LAYERS:
        if isinstance(layer, STConv):
            params.update(_stconv_params(layer))
        elif isinstance(layer, Gating):
            params.update(_linear_params(f"{layer.name}.fc", layer.channels, layer.channels))
        elif isinstance(layer, Inception):
            for conv in inception_convs(layer):
                params.update(_stconv_params(conv))
            for gating in inception_gatings(layer):
                params.update(_linear_params(f"{gating.name}.fc", gating.channels, gating.channels))
    params.update(_linear_params("fc", MIXED_5C_DIM, EMBEDDING_DIM))
    params["text_module.word_embd.weight"] = (vocab_size + 1, WORD_EMBEDDING_DIM)
    params.update(_linear_params("text_module.fc1", WORD_EMBEDDING_DIM, TEXT_HIDDEN_DIM))
    params.update(_linear_params("text_module.fc2", TEXT_HIDDEN_DIM, EMBEDDING_DIM))
    return params


def torch_shape(key: str, tf_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch state_dict shape of a parameter given its TensorFlow shape."""
    if len(tf_shape) == 5:  # conv kernel [kT, kH, kW, in, out] -> [out, in, kT, kH, kW]
        kt, kh, kw, cin, cout = tf_shape
        return (cout, cin, kt, kh, kw)
    if len(tf_shape) == 2 and not key.endswith("word_embd.weight"):  # linear [in, out] -> [out, in]
        return (tf_shape[1], tf_shape[0])
    return tf_shape


def is_trainable(key: str) -> bool:
    """True for learned weights; False for BatchNorm running statistics."""
    return not (key.endswith(".running_mean") or key.endswith(".running_var"))
