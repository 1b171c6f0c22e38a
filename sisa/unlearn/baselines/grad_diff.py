"""Gradient difference / NegGrad+ (Liu et al. 2022; Kurmanji et al. 2023).

Each step ascends on a forget batch and descends on a retain batch:
    loss = retain_weight * CE(retain) - forget_weight * CE(forget).
Budget epochs: passes over the forget set (the retain set is cycled alongside).
"""

from __future__ import annotations

from sisa.unlearn.baselines.common import Budget, baseline, cross_entropy, run_steps, stream


def _update(ctx, params, opt_state, batches, key):
    f, r, hp = batches["forget"], batches["retain"], ctx.hp

    def loss(p):
        ce_f = cross_entropy(ctx.logits(p, f["x"], key), f["y"], f["mask"])
        ce_r = cross_entropy(ctx.logits(p, r["x"], key), r["y"], r["mask"])
        return hp["retain_weight"] * ce_r - hp["forget_weight"] * ce_f

    return ctx.descend(params, opt_state, loss, f["mask"].sum() + r["mask"].sum())


@baseline(Budget(epochs=5, learning_rate=1e-4), forget_weight=1.0, retain_weight=1.0)
def unlearn(trainer, params, forget, retain, budget, key, **hp):
    b = budget.batch_size
    streams = {"forget": stream(*forget, b), "retain": stream(*retain, b)}
    return run_steps(_update, trainer, params, streams, budget.steps_for(len(forget[0])), budget, hp, key)
