"""Optimizers, written so that XLA compiles them the same way for any device layout.

optax's Adam divides the moments by a per-shard bias-correction scalar. Under vmap that is
a divide by a broadcast, which XLA rewrites into a multiply by a reciprocal in some
compilations (one device) and not in others (a sharded mesh): the float results then differ.
Here the reciprocal is taken explicitly, so every compilation runs the same arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam's update direction (Kingma & Ba), bias correction as explicit reciprocals."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdamState(jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        count = state.count + 1
        t = count.astype(jnp.float32)
        c1, c2 = 1 / (1 - b1**t), 1 / (1 - b2**t)
        updates = jax.tree.map(lambda m, v: (m * c1) / (jnp.sqrt(v * c2) + eps), mu, nu)
        return updates, AdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def make(name: str, learning_rate: float, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    if name == "adam":
        return optax.chain(scale_by_adam(), optax.scale(-learning_rate))
    if name == "adamw":
        return optax.chain(scale_by_adam(), optax.add_decayed_weights(weight_decay), optax.scale(-learning_rate))
    if name == "sgd":
        return optax.sgd(learning_rate)
    raise ValueError(name)
