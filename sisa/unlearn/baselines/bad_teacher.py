"""Bad-teacher knowledge distillation (Chundawat et al. 2023, "Can bad teaching induce forgetting?").

The student (a copy of the trained model) distils from two teachers: on retain examples from
the competent teacher (the trained model), on forget examples from an incompetent teacher (a
randomly initialised model of the same architecture): loss = KL(teacher || student) at
temperature T. As in the paper, only a random `retain_fraction` of the retain set is used.
Budget epochs: passes over forget ∪ (retain subset).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sisa.unlearn.baselines.common import Budget, baseline, kl, random_init, random_subset, run_steps, union


def _update(ctx, params, opt_state, batches, key):
    u = batches["union"]
    good = ctx.logits(ctx.aux["teacher"], u["x"])
    bad = ctx.logits(ctx.aux["bad_teacher"], u["x"])
    t = jax.lax.stop_gradient(jnp.where(u["forget"][:, None], bad, good))
    loss = lambda p: kl(t, ctx.logits(p, u["x"], key), u["mask"], ctx.hp["temperature"])
    return ctx.descend(params, opt_state, loss, u["mask"].sum())


@baseline(Budget(epochs=1, learning_rate=1e-4), temperature=1.0, retain_fraction=0.3)
def unlearn(trainer, params, forget, retain, budget, key, **hp):
    n = len(retain[0])
    keep = min(n, max(1, math.ceil(hp["retain_fraction"] * n)))
    rows = random_subset(n, keep, key)
    subset = (retain[0][rows], retain[1][rows])
    streams = {"union": union(forget, subset, budget.batch_size)}
    aux = {"teacher": params, "bad_teacher": random_init(trainer, key)}
    steps = budget.steps_for(len(forget[0]) + keep)
    return run_steps(_update, trainer, params, streams, steps, budget, hp, key, aux=aux)
