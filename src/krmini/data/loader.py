"""Training batches as a pure function of (step, micro-step): resuming needs only the step.

The token stream of a split is cut into windows of seq_len + 1 tokens (input and shifted target).
Each epoch visits every window once in an order drawn from (seed, epoch). Sample number i of the
run is window perm_epoch[i % W] of epoch i // W — no hidden iterator state, so an interrupted run
resumes on exactly the batch it would have seen, and data-parallel ranks take disjoint samples.
Documents are packed back to back (BOS … EOS BOS …): nothing is ever padded.
"""

from __future__ import annotations

import numpy as np
import torch

from krmini.data.shards import load_split, read_manifest
from krmini.errors import KrminiError


class TokenWindows:
    def __init__(self, shards: list[np.ndarray], seq_len: int, seed: int) -> None:
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        counts = np.array([max(0, (len(s) - 1) // seq_len) for s in shards], dtype=np.int64)
        self.num_windows = int(counts.sum())
        if self.num_windows == 0:
            total = sum(len(s) for s in shards)
            raise KrminiError(f"data: {total} tokens is too few for one window of seq_len={seq_len} + 1")
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._perm_epoch = epoch
        return self._perm

    def window(self, index: int) -> np.ndarray:
        """Tokens of window number `index` (seq_len + 1 of them)."""
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        offset = (index - self._starts[shard]) * self.seq_len
        return self.shards[shard][offset : offset + self.seq_len + 1]

    def sample(self, i: int) -> np.ndarray:
        epoch, pos = divmod(i, self.num_windows)
        return self.window(int(self._permutation(epoch)[pos]))

    def batch(self, first_sample: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples first_sample … first_sample + size - 1 of the shuffled epochs (training)."""
        return self._to_device([self.sample(first_sample + b) for b in range(size)], device)

    def batch_in_order(self, first_window: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows in stream order (evaluation: the same tokens every time)."""
        return self._to_device([self.window(first_window + b) for b in range(size)], device)

    @staticmethod
    def _to_device(rows: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(np.stack(rows).astype(np.int64))
        x, y = t[:, :-1], t[:, 1:]
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def epoch_of(self, i: int) -> float:
        return i / self.num_windows


def split_windows(data_dir, split: str, seq_len: int, seed: int) -> tuple[TokenWindows, float]:
    """Windows over a prepared split, and its raw UTF-8 bytes per token (what turns nats into bits/byte)."""
    stats = read_manifest(data_dir)["splits"][split]
    return TokenWindows(load_split(data_dir, split), seq_len, seed), stats["bytes"] / stats["tokens"]
