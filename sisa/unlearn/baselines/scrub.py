"""SCRUB (Kurmanji et al. 2023, "Towards unbounded machine unlearning").

Teacher = the original model, student = a copy. Alternating steps:
- max step (forget batch): loss = -KL(teacher || student) at temperature T, pushing the
  student away from the teacher on K; done only in the first `max_epochs` epochs, one
  pass over the forget set per epoch, interleaved with the first min steps of the epoch;
- min step (retain batch): loss = gamma * CE + alpha * KL(teacher || student), staying close to
  the teacher on D \\ K.
Defaults are the paper's (T=4, gamma=0.99, alpha=0.001, 2 max epochs of 3).
Budget epochs: passes over the retain set (the min steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sisa.unlearn.baselines.common import Budget, baseline, cross_entropy, kl, run_steps, stream


def _update(ctx, params, opt_state, batches, key):
    f, r, hp = batches["forget"], batches["retain"], ctx.hp
    teacher, temp = ctx.aux["teacher"], hp["temperature"]
    do_max = (ctx.epoch["retain"] < hp["max_epochs"]) & (ctx.index["retain"] < ctx.per_epoch["forget"])

    def maximize(args):
        params, opt_state = args
        t = jax.lax.stop_gradient(ctx.logits(teacher, f["x"]))
        loss = lambda p: -kl(t, ctx.logits(p, f["x"], key), f["mask"], temp)
        return ctx.descend(params, opt_state, loss, f["mask"].sum())

    params, opt_state, n_max = jax.lax.cond(
        do_max, maximize, lambda args: (*args, jnp.zeros((), jnp.int32)), (params, opt_state))

    t = jax.lax.stop_gradient(ctx.logits(teacher, r["x"]))

    def minimize(p):
        s = ctx.logits(p, r["x"], jax.random.fold_in(key, 1))
        return hp["gamma"] * cross_entropy(s, r["y"], r["mask"]) + hp["alpha"] * kl(t, s, r["mask"], temp)

    params, opt_state, n_min = ctx.descend(params, opt_state, minimize, r["mask"].sum())
    return params, opt_state, n_max + n_min


@baseline(Budget(epochs=3, learning_rate=5e-4), temperature=4.0, gamma=0.99, alpha=0.001, max_epochs=2)
def unlearn(trainer, params, forget, retain, budget, key, **hp):
    b = budget.batch_size
    streams = {"forget": stream(*forget, b), "retain": stream(*retain, b)}
    steps = budget.steps_for(len(retain[0]))
    return run_steps(_update, trainer, params, streams, steps, budget, hp, key, aux={"teacher": params})
