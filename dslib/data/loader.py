"""The Transformer-XL data loader: one contiguous stream per batch row.

The token stream is cut into ``batch_size`` equal lanes, one per batch row; step ``s``
reads columns ``[s*T, s*T+T)`` of every lane (targets one to the right). Row ``b`` of
segment ``s+1`` therefore continues row ``b`` of segment ``s``, which is what makes the
memory a model carries between segments meaningful. After the last full segment the
loader wraps to the start (a new epoch): ``at_start`` tells the caller to drop its memory.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class StreamLoader:
    """Yields ``(idx, targets)``, both ``LongTensor[B, T]`` on ``device``; its position is
    saved and restored with ``state_dict`` / ``load_state_dict``."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int,
                 device: torch.device | str = "cpu") -> None:
        lane_len = len(tokens) // batch_size
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if lane_len < seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens are too few for batch_size={batch_size} x "
                             f"seq_len={seq_len}: need at least {batch_size * (seq_len + 1)}")
        self.batch_size, self.seq_len = batch_size, seq_len
        self.num_tokens = len(tokens)
        # int32 lanes on the device, built once: a step is a slice plus a cast, no host copy
        lanes = np.asarray(tokens[: batch_size * lane_len]).astype(np.int32).reshape(batch_size, lane_len)
        self.lanes = torch.from_numpy(lanes).to(device)
        self.steps_per_epoch = (lane_len - 1) // seq_len
        self.step_in_epoch = 0
        self.epoch = 0

    @property
    def at_start(self) -> bool:
        """True when the next batch begins the lanes (no earlier segment to remember)."""
        return self.step_in_epoch == 0

    def rewind(self) -> None:
        """Back to the first segment of the first epoch."""
        self.step_in_epoch, self.epoch = 0, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.step_in_epoch * self.seq_len
        window = self.lanes[:, start:start + self.seq_len + 1]
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:
            self.step_in_epoch, self.epoch = 0, self.epoch + 1
        return window[:, :-1].long(), window[:, 1:].long()

    def __iter__(self) -> "StreamLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"step_in_epoch": self.step_in_epoch, "epoch": self.epoch, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shape = (self.batch_size, self.seq_len, self.num_tokens)
        saved = (state["batch_size"], state["seq_len"], state["num_tokens"])
        if saved != shape:
            raise ValueError(f"loader state is for (batch_size, seq_len, num_tokens)={saved}, "
                             f"this loader has {shape}")
        self.step_in_epoch, self.epoch = int(state["step_in_epoch"]), int(state["epoch"])


def random_windows(tokens: torch.Tensor, step: int, global_batch: int, seq_len: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: ``global_batch`` windows drawn at random from the stream,
    the same for every stage, world size and resume (the draw depends on seed and step only)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (global_batch,), generator=gen)
    windows = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]
