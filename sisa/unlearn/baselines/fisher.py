"""Fisher forgetting (Golatkar et al. 2020, "Eternal sunshine of the spotless net").

Adds Gaussian noise to every weight, scaled by the inverse of the diagonal Fisher information
of the retain set: weights the retain set pins down (large Fisher) barely move, weights it
does not constrain (small Fisher: what only K needed) are drowned in noise:
    θ' = θ + sqrt(alpha * min(1 / (F + 1e-8), clip)) * ε,   ε ~ N(0, I).
F is the true Fisher E_x Σ_c p(c|x) (∂ log p(c|x)/∂θ)², one gradient per class per retain
example (`fisher="empirical"`: the gradient at the true label only, K times cheaper); `clip`
bounds the inverse (the paper's 1e3). No optimiser steps: the budget's batch size only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sisa.errors import SisaError
from sisa.unlearn.baselines.common import NOISE, Budget, baseline, model_trainer, stream


@functools.cache
def _fisher(trainer, batch_size: int, mode: str):
    b, classes = batch_size, trainer.num_classes

    def logp(p, x, c):
        return jax.nn.log_softmax(trainer.logits(p, x[None]))[0, c]

    per_example = jax.vmap(jax.grad(logp), in_axes=(None, 0, 0))

    def run(params, s):
        def body(i, acc):
            x = jax.lax.dynamic_slice_in_dim(s["x"], i * b, b)
            y = jax.lax.dynamic_slice_in_dim(s["y"], i * b, b)
            mask = (i * b + jnp.arange(b) < s["n"]).astype(jnp.float32)
            if mode == "empirical":
                g = per_example(params, x, y)
                return jax.tree.map(lambda a, g: a + jnp.tensordot(mask, g**2, axes=1), acc, g)
            probs = jax.nn.softmax(trainer.logits(params, x))

            def per_class(acc, c):
                g = per_example(params, x, jnp.full((b,), c))
                return jax.tree.map(lambda a, g: a + jnp.tensordot(probs[:, c] * mask, g**2, axes=1), acc, g), None

            return jax.lax.scan(per_class, acc, jnp.arange(classes))[0]

        total = jax.lax.fori_loop(0, (s["n"] + b - 1) // b, body, jax.tree.map(jnp.zeros_like, params))
        return jax.tree.map(lambda f: f / jnp.maximum(s["n"], 1), total)

    return jax.jit(run)


def fisher_diagonal(trainer, params, data, mode: str = "true", batch_size: int = 64):
    """Diagonal Fisher information of `data` (x, y) at `params`, a tree like `params`."""
    if mode not in ("true", "empirical"):
        raise SisaError(f"fisher: mode must be 'true' or 'empirical', got {mode!r}")
    s = stream(*data, batch_size)
    return _fisher(model_trainer(trainer), batch_size, mode)(jax.tree.map(jnp.asarray, params), s)


def noise_scale(fisher, alpha: float, clip: float):
    """Per-weight standard deviation of the added noise."""
    return jax.tree.map(lambda f: jnp.sqrt(alpha * jnp.minimum(1.0 / (f + 1e-8), clip)), fisher)


@jax.jit
def _perturb(params, fisher, key, alpha, clip):
    leaves, tree = jax.tree.flatten(params)
    scales = jax.tree.leaves(noise_scale(fisher, alpha, clip))
    noisy = [p + s * jax.random.normal(jax.random.fold_in(key, i), p.shape, p.dtype)
             for i, (p, s) in enumerate(zip(leaves, scales))]
    return jax.tree.unflatten(tree, noisy)


@baseline(Budget(epochs=1, learning_rate=1e-3), alpha=1e-7, clip=1e3, fisher="true")
def unlearn(trainer, params, forget, retain, budget, key, **hp):
    f = fisher_diagonal(trainer, params, retain, hp["fisher"], budget.batch_size)
    params = _perturb(jax.tree.map(jnp.asarray, params), f, jax.random.fold_in(key, NOISE),
                      np.float32(hp["alpha"]), np.float32(hp["clip"]))
    per_example = trainer.num_classes if hp["fisher"] == "true" else 1
    return params, len(retain[0]) * per_example
