"""An independent PyTorch statement of docs/model.md, "Architecture" (the architecture the checkpoint was saved from).

Written from the spec, channels-first, with PyTorch's own layers; it shares no code
with the TensorFlow network. Used to check the converter numerically.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class STConv3D(nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0, separable=False):
        super().__init__()
        self.separable = separable and kernel[0] != 1
        if self.separable:
            self.conv1 = nn.Conv3d(cin, cout, (1, kernel[1], kernel[2]), stride, (0, padding, padding), bias=False)
            self.bn1 = nn.BatchNorm3d(cout, eps=1e-5)
            self.conv2 = nn.Conv3d(cout, cout, (kernel[0], 1, 1), stride, (padding, 0, 0), bias=False)
            self.bn2 = nn.BatchNorm3d(cout, eps=1e-5)
        else:
            self.conv1 = nn.Conv3d(cin, cout, kernel, stride, padding, bias=False)
            self.bn1 = nn.BatchNorm3d(cout, eps=1e-5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.separable:
            x = F.relu(self.bn2(self.conv2(x)))
        return x


class SelfGating(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x):
        weights = torch.sigmoid(self.fc(x.mean(dim=[2, 3, 4])))
        return weights[:, :, None, None, None] * x


class MaxPool3dTFPadding(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        pads = []
        for k, s in zip(kernel, stride, strict=True):
            total = max(k - s, 0)
            pads.append((total // 2, total - total // 2))
        # ConstantPad3d takes (w_before, w_after, h_before, h_after, t_before, t_after)
        self.pad = nn.ConstantPad3d((*pads[2], *pads[1], *pads[0]), 0)
        self.pool = nn.MaxPool3d(kernel, stride, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.pad(x))


class InceptionBlock(nn.Module):
    def __init__(self, cin, c0, c1a, c1b, c2a, c2b, c3b):
        super().__init__()
        self.conv_b0 = STConv3D(cin, c0, (1, 1, 1))
        self.conv_b1_a = STConv3D(cin, c1a, (1, 1, 1))
        self.conv_b1_b = STConv3D(c1a, c1b, (3, 3, 3), padding=1, separable=True)
        self.conv_b2_a = STConv3D(cin, c2a, (1, 1, 1))
        self.conv_b2_b = STConv3D(c2a, c2b, (3, 3, 3), padding=1, separable=True)
        self.maxpool_b3 = nn.MaxPool3d((3, 3, 3), stride=1, padding=1)
        self.conv_b3_b = STConv3D(cin, c3b, (1, 1, 1))
        self.gating_b0 = SelfGating(c0)
        self.gating_b1 = SelfGating(c1b)
        self.gating_b2 = SelfGating(c2b)
        self.gating_b3 = SelfGating(c3b)

    def forward(self, x):
        b0 = self.gating_b0(self.conv_b0(x))
        b1 = self.gating_b1(self.conv_b1_b(self.conv_b1_a(x)))
        b2 = self.gating_b2(self.conv_b2_b(self.conv_b2_a(x)))
        b3 = self.gating_b3(self.conv_b3_b(self.maxpool_b3(x)))
        return torch.cat([b0, b1, b2, b3], dim=1)


class SentenceEmbedding(nn.Module):
    def __init__(self, words: list[str], embd_dim=512, word_dim=300, hidden=2048, max_words=16):
        super().__init__()
        self.word_embd = nn.Embedding(len(words) + 1, word_dim)
        self.fc1 = nn.Linear(word_dim, hidden)
        self.fc2 = nn.Linear(hidden, embd_dim)
        self.word_to_token = {w: i + 1 for i, w in enumerate(words)}
        self.max_words = max_words

    def tokens(self, sentences: list[str]) -> torch.Tensor:
        rows = []
        for sentence in sentences:
            words = re.findall(r"[\w']+", str(sentence).lower())
            ids = [self.word_to_token[w] for w in words if w in self.word_to_token][: self.max_words]
            rows.append(ids + [0] * (self.max_words - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def forward(self, sentences: list[str]) -> torch.Tensor:
        x = F.relu(self.fc1(self.word_embd(self.tokens(sentences))))
        return self.fc2(x.max(dim=1)[0])


class S3D(nn.Module):
    def __init__(self, words: list[str]):
        super().__init__()
        self.conv1 = STConv3D(24, 64, (2, 4, 4), stride=1, padding=(1, 2, 2))
        self.conv_2b = STConv3D(64, 64, (1, 1, 1))
        self.conv_2c = STConv3D(64, 192, (3, 3, 3), padding=1, separable=True)
        self.gating = SelfGating(192)
        self.maxpool_2a = MaxPool3dTFPadding((1, 3, 3), (1, 2, 2))
        self.maxpool_3a = MaxPool3dTFPadding((1, 3, 3), (1, 2, 2))
        self.mixed_3b = InceptionBlock(192, 64, 96, 128, 16, 32, 32)
        self.mixed_3c = InceptionBlock(256, 128, 128, 192, 32, 96, 64)
        self.maxpool_4a = MaxPool3dTFPadding((3, 3, 3), (2, 2, 2))
        self.mixed_4b = InceptionBlock(480, 192, 96, 208, 16, 48, 64)
        self.mixed_4c = InceptionBlock(512, 160, 112, 224, 24, 64, 64)
        self.mixed_4d = InceptionBlock(512, 128, 128, 256, 24, 64, 64)
        self.mixed_4e = InceptionBlock(512, 112, 144, 288, 32, 64, 64)
        self.mixed_4f = InceptionBlock(528, 256, 160, 320, 32, 128, 128)
        self.maxpool_5a = MaxPool3dTFPadding((2, 2, 2), (2, 2, 2))
        self.mixed_5b = InceptionBlock(832, 256, 160, 320, 32, 128, 128)
        self.mixed_5c = InceptionBlock(832, 384, 192, 384, 48, 128, 128)
        self.fc = nn.Linear(1024, 512)
        self.text_module = SentenceEmbedding(words)

    @staticmethod
    def space_to_depth(x):
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // 2, 2, h // 2, 2, w // 2, 2)
        x = x.permute(0, 3, 5, 7, 1, 2, 4, 6)
        return x.contiguous().view(b, 8 * c, t // 2, h // 2, w // 2)

    def forward_video(self, x):
        x = self.space_to_depth(x)
        x = self.conv1(x)[:, :, 1:, 1:, 1:]
        x = self.maxpool_2a(x)
        x = self.conv_2b(x)
        x = self.conv_2c(x)
        x = self.gating(x)
        x = self.maxpool_3a(x)
        x = self.mixed_3c(self.mixed_3b(x))
        x = self.maxpool_4a(x)
        for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
            x = block(x)
        x = self.maxpool_5a(x)
        x = self.mixed_5c(self.mixed_5b(x))
        mixed_5c = x.mean(dim=[2, 3, 4])
        return mixed_5c, self.fc(mixed_5c)


def randomized(model: S3D, seed: int) -> S3D:
    """Random weights and BatchNorm statistics, scaled so activations stay O(1) through the network."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bn" in name:
                p.copy_((1.0 + 0.1 * torch.randn(p.shape, generator=generator)) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=generator))
            elif p.ndim == 5:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif p.ndim == 2 and "word_embd" not in name:
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * (1.0 if "word_embd" in name else 0.1))
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=generator))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=generator))
    return model.eval()
