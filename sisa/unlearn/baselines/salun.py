"""SalUn: saliency-based unlearning (Fan et al. 2024, ICLR).

1. Weight saliency: the gradient of the forget loss (cross-entropy on K) at the trained
   weights, summed over K; the `ratio` fraction of weights with the largest |gradient|, ranked
   over the whole model, are salient (paper default 0.5).
2. Random-label fine-tuning (as `random_labels`) on forget ∪ retain in which only salient
   weights are updated: every other weight stays bit for bit as it was.
Budget epochs: passes over forget ∪ retain.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from sisa.unlearn.baselines.common import (
    Budget, baseline, descend_cross_entropy, model_trainer, random_labels, run_steps, stream, union,
)


@functools.cache
def _saliency(trainer, batch_size: int):
    b = batch_size

    def run(params, s, ratio):
        def body(i, acc):
            x = jax.lax.dynamic_slice_in_dim(s["x"], i * b, b)
            y = jax.lax.dynamic_slice_in_dim(s["y"], i * b, b)
            mask = i * b + jnp.arange(b) < s["n"]
            g = jax.grad(lambda p: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
                trainer.logits(p, x), y) * mask))(params)
            return jax.tree.map(jnp.add, acc, g)

        grads = jax.lax.fori_loop(0, (s["n"] + b - 1) // b, body, jax.tree.map(jnp.zeros_like, params))
        flat, unravel = ravel_pytree(jax.tree.map(jnp.abs, grads))
        rank = jnp.argsort(jnp.argsort(-flat, stable=True), stable=True)
        keep = rank < jnp.round(ratio * flat.size)
        return jax.tree.map(lambda m: m > 0.5, unravel(keep.astype(flat.dtype)))

    return jax.jit(run)


def saliency_mask(trainer, params, forget, ratio: float = 0.5, batch_size: int = 64):
    """Bool tree like `params`: True for the `ratio` most salient weights for forgetting `forget`."""
    s = stream(*forget, batch_size)
    return _saliency(model_trainer(trainer), batch_size)(jax.tree.map(jnp.asarray, params), s, np.float32(ratio))


_update = descend_cross_entropy("union")


@baseline(Budget(epochs=1, learning_rate=1e-3), ratio=0.5)
def unlearn(trainer, params, forget, retain, budget, key, **hp):
    mask = saliency_mask(trainer, params, forget, hp["ratio"], budget.batch_size)
    labels = random_labels(forget[1], trainer.num_classes, key)
    streams = {"union": union(forget, retain, budget.batch_size, labels)}
    steps = budget.steps_for(len(forget[0]) + len(retain[0]))
    params, examples = run_steps(_update, trainer, params, streams, steps, budget, hp, key, aux={"update_mask": mask})
    return params, examples + len(forget[0])  # + the saliency pass over K
