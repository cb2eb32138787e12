"""A learnable token stream without a corpus: a random sparse Markov chain.

Each token is followed by one of ``branching`` successors (fixed per token, drawn once),
so a model's loss can fall from ln(vocab) towards ln(branching): enough to compare how
fast two training setups learn, in seconds, with nothing to download or tokenize.
"""
from __future__ import annotations

import numpy as np


def markov_tokens(vocab_size: int, n_tokens: int, branching: int = 4, seed: int = 0) -> np.ndarray:
    """``n_tokens`` int32 tokens of a chain where each token has ``branching`` equally likely successors."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab_size, size=(vocab_size, branching))
    choices = rng.integers(0, branching, size=n_tokens)
    tokens = np.empty(n_tokens, dtype=np.int32)
    tokens[0] = 0
    for i in range(1, n_tokens):
        tokens[i] = successors[tokens[i - 1], choices[i]]
    return tokens
