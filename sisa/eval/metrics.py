"""Model outputs on a data set and the metrics built on them.

Everything works on log-probabilities (float32 `log_softmax`), so that confident predictions
keep their precision for the membership attacks. An ensemble's output is the softmax mean of
its constituents (the engine's `softmax` aggregation), taken in log space.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CHUNK = 1024  # inputs are padded to whole chunks: one program per model, whatever N


@functools.cache
def _single(trainer):
    return jax.jit(lambda params, x: jax.nn.log_softmax(trainer.logits(params, x)))


@functools.cache
def _stacked(trainer):
    return jax.jit(jax.vmap(lambda params, x: jax.nn.log_softmax(trainer.logits(params, x)), in_axes=(0, None)))


def _chunks(fn, params, x, axis):
    x = np.asarray(x)
    out = []
    for start in range(0, len(x), CHUNK):
        part = x[start : start + CHUNK]
        pad = np.zeros((CHUNK - len(part), *x.shape[1:]), x.dtype)
        out.append(np.take(np.asarray(fn(params, np.concatenate([part, pad]))), np.arange(len(part)), axis=axis))
    return out


def log_probs(trainer, params, x) -> np.ndarray:
    """[N, C] log-probabilities of one model on raw features `x`."""
    from sisa.unlearn.baselines.common import model_trainer

    out = _chunks(_single(model_trainer(trainer)), params, x, axis=0)
    return np.concatenate(out) if out else np.zeros((0, trainer.num_classes), np.float32)


def ensemble_log_probs(trainer, stacked_params, x) -> np.ndarray:
    """[S, N, C] log-probabilities of each constituent (params stacked on a leading axis)."""
    from sisa.unlearn.baselines.common import model_trainer

    out = _chunks(_stacked(model_trainer(trainer)), stacked_params, x, axis=1)
    lanes = jax.tree.leaves(stacked_params)[0].shape[0]
    return np.concatenate(out, axis=1) if out else np.zeros((lanes, 0, trainer.num_classes), np.float32)


def softmax_mean(lp: np.ndarray) -> np.ndarray:
    """[S, N, C] -> [N, C]: log of the mean of the constituents' softmax outputs."""
    return np.asarray(jax.nn.logsumexp(jnp.asarray(lp), axis=0) - np.log(lp.shape[0]))


def losses(lp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy -log p(y|x)."""
    return -np.take_along_axis(lp, np.asarray(y)[:, None], axis=-1)[:, 0]


def accuracy(lp: np.ndarray, y: np.ndarray) -> float:
    return float((lp.argmax(-1) == y).mean()) if len(y) else float("nan")


def agreement(lp: np.ndarray, lp_ref: np.ndarray) -> float:
    """Fraction of examples on which the two models predict the same label."""
    return float((lp.argmax(-1) == lp_ref.argmax(-1)).mean()) if len(lp) else float("nan")


def mean_kl(lp: np.ndarray, lp_ref: np.ndarray) -> float:
    """Mean over examples of KL(reference || model) in nats."""
    if not len(lp):
        return float("nan")
    lp, lp_ref = lp.astype(np.float64), lp_ref.astype(np.float64)
    return float(np.mean(np.sum(np.exp(lp_ref) * (lp_ref - lp), axis=-1)))


def outputs_metrics(lp: dict, y: dict, gold: dict | None = None) -> dict:
    """Accuracy on every split of `lp` (split -> [N, C]); with `gold` (same splits), agreement
    with and KL from the gold model's outputs."""
    out = {f"acc_{k}": accuracy(v, y[k]) for k, v in lp.items()}
    for k, v in (gold or {}).items():
        if k in lp:
            out[f"agree_{k}"] = agreement(lp[k], v)
            out[f"kl_{k}"] = mean_kl(lp[k], v)
    return out
