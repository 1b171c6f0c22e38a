"""l1-sparse fine-tuning (Jia et al. 2023, "Model sparsity can simplify machine unlearning").

Fine-tunes on the retain set with an l1 penalty on all weights whose strength decays
linearly to zero over the run: loss = CE + gamma * (1 - t/T) * ||θ||_1 (the paper's
"l1-sparse MU"; gamma 5e-4). Budget epochs: passes over the retain set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sisa.unlearn.baselines.common import Budget, baseline, cross_entropy, run_steps, stream


def _update(ctx, params, opt_state, batches, key):
    r = batches["retain"]
    strength = ctx.hp["gamma"] * (1.0 - ctx.t / jnp.maximum(ctx.steps, 1))

    def loss(p):
        l1 = sum(jnp.abs(w).sum() for w in jax.tree.leaves(p))
        return cross_entropy(ctx.logits(p, r["x"], key), r["y"], r["mask"]) + strength * l1

    return ctx.descend(params, opt_state, loss, r["mask"].sum())


@baseline(Budget(epochs=2, learning_rate=1e-3), gamma=5e-4)
def unlearn(trainer, params, forget, retain, budget, key, **hp):
    streams = {"retain": stream(*retain, budget.batch_size)}
    return run_steps(_update, trainer, params, streams, budget.steps_for(len(retain[0])), budget, hp, key)
