"""Gradient ascent on the forget set ("GA"/NegGrad; Golatkar et al. 2020, Thudi et al. 2022).

Maximises the cross-entropy of K; unbounded, so it needs a small learning rate (1e-5..1e-3)
and few steps. Budget epochs: passes over the forget set.
"""

from __future__ import annotations

from sisa.unlearn.baselines.common import Budget, baseline, cross_entropy, run_steps, stream


def _update(ctx, params, opt_state, batches, key):
    f = batches["forget"]
    return ctx.descend(params, opt_state, lambda p: -cross_entropy(ctx.logits(p, f["x"], key), f["y"], f["mask"]),
                       f["mask"].sum())


@baseline(Budget(epochs=5, learning_rate=1e-4))
def unlearn(trainer, params, forget, retain, budget, key):
    streams = {"forget": stream(*forget, budget.batch_size)}
    return run_steps(_update, trainer, params, streams, budget.steps_for(len(forget[0])), budget, {}, key)
