"""What a model learns: a task is its loss, its serving outputs and how they aggregate.

A task is an object with these members (add one by writing such a class and listing it in
TASKS; `data.task` names it):

* `model_input_shape(row_shape)`: the shape the model sees, from a data-store row's shape;
* `split(x, y)`: a batch's (model inputs, targets) from data-store rows and labels;
* `loss(logits, targets, mask, smoothing)`: (summed loss, count) over the examples with `mask`
  set; the step minimises summed / count. Nothing of a masked-out example may enter either;
* `outputs(logits, x)`: what serving keeps of one constituent's logits on store-format rows `x`
  (a pytree of arrays with a leading batch axis), aggregated over constituents on the host.

Classification serves each constituent's softmax (sisa.aggregate combines them). A language
model serves, per constituent, the log-probability of every next token of the row and the
next-token log-distribution after its last token; the ensemble's distribution is the MEAN of
the constituents' distributions (a mixture, log-mean-exp of log-probabilities), and its
perplexity is that mixture's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

PAD = 0  # sisa.data.text.PAD: padding token (no JAX import there)


def cross_entropy(logits, targets, smoothing: float):
    """Cross-entropy of integer `targets` over the last axis of `logits`, against (1 - a) one-hot +
    a / classes when smoothing a > 0."""
    if smoothing:
        onehot = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype), smoothing)
        return optax.softmax_cross_entropy(logits, onehot)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


class Classify:
    name = "classify"
    predict_batch = 1024  # inputs per call of the serving program

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def model_input_shape(self, row_shape):
        return tuple(row_shape)

    def split(self, x, y):
        return x, y

    def loss(self, logits, targets, mask, smoothing: float):
        return jnp.sum(cross_entropy(logits, targets, smoothing) * mask), mask.sum()

    def outputs(self, logits, x):
        return jax.nn.softmax(logits, axis=-1)


class LanguageModel:
    """Next-token prediction on token rows [BOS, t1, .., tn, (EOS), PAD, ..] of length T + 1: the
    model reads the first T and predicts the last T; padding targets count for nothing."""

    name = "lm"
    predict_batch = 32  # logits are [batch, T, vocab]: keep a call's memory small

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def model_input_shape(self, row_shape):
        (length,) = row_shape
        return (length - 1,)

    def split(self, x, y):
        del y
        return x[:, :-1], x[:, 1:]

    def loss(self, logits, targets, mask, smoothing: float):
        weight = (targets != PAD) * mask[:, None]
        return jnp.sum(cross_entropy(logits, targets, smoothing) * weight), weight.sum()

    def outputs(self, logits, x):
        """{"token": log p(row[t+1] | row[..t]) [N, T], "next": log p(. | the row's last token) [N, V]}."""
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        targets = x[:, 1:].astype(jnp.int32)
        token = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        last = jnp.clip(jnp.sum(x != PAD, axis=1) - 1, 0, logp.shape[1] - 1)  # the last non-padding input
        nxt = jnp.take_along_axis(logp, last[:, None, None], axis=1)[:, 0]
        return {"token": token, "next": nxt}


TASKS = {"classify": Classify, "lm": LanguageModel}


def make(name: str, num_classes: int):
    return TASKS[name](num_classes)
