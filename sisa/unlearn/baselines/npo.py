"""Negative preference optimisation (NPO; Zhang et al. 2024), against the original model.

On the forget set, with r = log p_θ(y|x) - log p_ref(y|x) and p_ref the original model:
    L_NPO = (2/β) · mean softplus(β · r)
a bounded, slower-diverging form of gradient ascent (β -> 0 recovers GA). `retain_weight > 0`
adds a retain cross-entropy term (the paper's NPO+RT). Budget epochs: passes over the forget set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sisa.unlearn.baselines.common import Budget, baseline, cross_entropy, masked_mean, run_steps, stream


def _label_logp(logits, y):
    return jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)[:, 0]


def _npo(ctx, p, f, key):
    beta = ctx.hp["beta"]
    ref = jax.lax.stop_gradient(_label_logp(ctx.logits(ctx.aux["reference"], f["x"]), f["y"]))
    ratio = _label_logp(ctx.logits(p, f["x"], key), f["y"]) - ref
    return 2.0 / beta * masked_mean(jax.nn.softplus(beta * ratio), f["mask"])


def _update(ctx, params, opt_state, batches, key):
    f = batches["forget"]
    return ctx.descend(params, opt_state, lambda p: _npo(ctx, p, f, key), f["mask"].sum())


def _update_rt(ctx, params, opt_state, batches, key):
    f, r = batches["forget"], batches["retain"]

    def loss(p):
        ce_r = cross_entropy(ctx.logits(p, r["x"], key), r["y"], r["mask"])
        return _npo(ctx, p, f, key) + ctx.hp["retain_weight"] * ce_r

    return ctx.descend(params, opt_state, loss, f["mask"].sum() + r["mask"].sum())


@baseline(Budget(epochs=5, learning_rate=1e-4), beta=0.1, retain_weight=0.0)
def unlearn(trainer, params, forget, retain, budget, key, **hp):
    if not hp["beta"] > 0:
        from sisa.errors import SisaError

        raise SisaError(f"npo: beta must be > 0, got {hp['beta']}")
    b = budget.batch_size
    streams = {"forget": stream(*forget, b)}
    update = _update
    if hp["retain_weight"]:
        streams["retain"], update = stream(*retain, b), _update_rt
    steps = budget.steps_for(len(forget[0]))
    return run_steps(update, trainer, params, streams, steps, budget, hp, key, aux={"reference": params})
