"""Vocabularies and the reference tokenizer of the MIL-NCE text tower.

The authors ship the vocabulary as `s3d_dict.npy` (66,249 words; the word at index
i is token i + 1, token 0 is padding). The stand-in model uses a small bundled list
unless told otherwise. `tokenize` is the plain-Python statement of the rules that
the in-graph tokenizer reproduces.
"""

from __future__ import annotations

import os
import re
from importlib import resources

import numpy as np

from s3d.architecture import NUM_TEXT_TOKENS

STANDIN_VOCAB_NAME = "standin_vocab.txt"
_WORD_RE = re.compile(r"[\w']+")


def standin_vocabulary() -> list[str]:
    """The small vocabulary bundled for the untrained stand-in model."""
    text = resources.files("s3d").joinpath(STANDIN_VOCAB_NAME).read_text(encoding="utf-8")
    return [w for w in text.splitlines() if w]


def load_vocabulary(path: str) -> list[str]:
    """Reads a vocabulary: the authors' `.npy` array of words, or a `.txt` file, one word a line.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty or is not a list of strings.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"vocabulary file {path!r} does not exist")
    if path.endswith(".npy"):
        array = np.load(path, allow_pickle=True)
        if array.ndim != 1:
            raise ValueError(f"vocabulary {path!r} must be a 1-d array of words, got shape {array.shape}")
        words = [w.decode("utf-8") if isinstance(w, bytes) else w for w in array.tolist()]
    else:
        with open(path, encoding="utf-8") as f:
            words = [line.rstrip("\n") for line in f]
        while words and not words[-1]:
            words.pop()
    bad = [w for w in words if not isinstance(w, str) or not w]
    if bad:
        raise ValueError(f"vocabulary {path!r} has {len(bad)} empty or non-string entries, e.g. {bad[0]!r}")
    if not words:
        raise ValueError(f"vocabulary {path!r} is empty")
    return words


def synthetic_vocabulary(size: int) -> list[str]:
    """The stand-in words followed by made-up ones (`tok00042`) up to `size` words.

    Gives a table of the real size (66,249) for parameter counts and memory figures.
    """
    words = standin_vocabulary()
    if size < len(words):
        return words[:size]
    return words + [f"tok{i:05d}" for i in range(size - len(words))]


def word_to_token(words: list[str]) -> dict[str, int]:
    """Word -> token (index + 1). A repeated word keeps its last index, as a Python dict built in order does."""
    return {w: i + 1 for i, w in enumerate(words)}


def split_words(sentence: str) -> list[str]:
    """Lower-cased `[\\w']+` matches: the reference word split."""
    return _WORD_RE.findall(str(sentence).lower())


def tokenize(sentence: str, vocab: dict[str, int], max_words: int = NUM_TEXT_TOKENS) -> list[int]:
    """The reference tokenizer: known words' tokens, first `max_words` kept, zero-padded."""
    tokens = [vocab[w] for w in split_words(sentence) if w in vocab][:max_words]
    return tokens + [0] * (max_words - len(tokens))
