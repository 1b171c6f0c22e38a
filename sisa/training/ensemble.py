"""The shard ensemble: the single-shard functions under `jax.vmap` over a lane axis.

A lane holds one shard. Lane counts are bucketed (powers of two, at most S) so that a
train and any number of deletions compile only a few programs; spare lanes are inactive
and their results dropped.

Bitwise results do not depend on the lane count, with one exception that `lane_bucket`
avoids: XLA lowers a vmap of width one to unbatched kernels, whose float results differ
from the batched ones. So an ensemble of S >= 2 shards never runs fewer than two lanes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sisa.training.step import ShardTrainer


def lane_bucket(width: int, shards: int) -> int:
    """Lanes to run `width` shards of an ensemble of `shards`: a power of two, at least 2, at most S."""
    return min(1 << (max(width, 2) - 1).bit_length(), max(shards, width))


class Ensemble:
    def __init__(self, trainer: ShardTrainer):
        self.trainer = trainer
        self.init = jax.jit(jax.vmap(trainer.init))
        self.epoch = jax.jit(jax.vmap(trainer.epoch, in_axes=(0, 0, 0, None, None, 0)), donate_argnums=0)
        self._logits = jax.jit(jax.vmap(trainer.logits, in_axes=(0, None)))

    def probabilities(self, params, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        """Softmax outputs of every lane: [lanes, N, classes]. Inputs padded to fixed chunks."""
        out = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            pad = np.zeros((batch - len(chunk), *x.shape[1:]), x.dtype)
            logits = self._logits(params, np.concatenate([chunk, pad]))
            out.append(np.asarray(jax.nn.softmax(logits, axis=-1))[:, : len(chunk)])
        if not out:
            return np.zeros((jax.tree.leaves(params)[0].shape[0], 0, self.trainer.num_classes), np.float32)
        return np.concatenate(out, axis=1)


@functools.cache
def ensemble_for(trainer: ShardTrainer) -> Ensemble:
    """One Ensemble (and so one set of compiled programs) per process per trainer."""
    return Ensemble(trainer)


def stack(states: list) -> dict:
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def unstack(states, lanes: int) -> list:
    host = jax.device_get(states)
    return [jax.tree.map(lambda a: a[i], host) for i in range(lanes)]
