"""Approximate unlearning for language models: the gradient-ascent family, fine-tuning debiasing
and reverse distillation, all with one signature:

    unlearn(trainer, params, data: LMData, budget=None, key=None, **hparams) -> Result

`trainer` is the `ShardTrainer` the model was trained with (a causal LM, `data.task = "lm"`),
`params` its weights, `data` the token rows each method may use (`LMData`). Every method runs
all its optimiser steps in one jitted program (`sisa.unlearn.baselines.common.program`: padded,
masked streams, traced step count and hyper-parameters), so a second call with other rows of a
similar count or other hyper-parameters compiles nothing. `Result.examples_passes` counts the
rows back-propagated through the model being changed (the model's tokens processed are that
times the context); teacher and reference forward passes are not counted.

Methods (`METHODS`; budget epochs count passes over the set named):

* `grad_ascent` (seeds 002/003): maximise the next-token loss of the forget documents. Forget set.
* `mask_grad_ascent` (seed 003, its causal-LM form): the same, only on the targets inside each
  document's harmful span (the stereotyped attribute), the rest of the document untouched. Forget set.
* `neg_fine_tune` (seed 000, "further training while penalising what was learned"; gradient
  difference): ascend on forget documents, descend on retained ones at `retain_weight`. Forget set.
* `npo` (Zhang et al. 2024): (2/beta) softplus(beta (log p(doc) - log p_orig(doc))) on the forget
  documents, sequence log-likelihoods against the original model. Forget set.
* `kl_counter_fine_tune` (seed 001, regularised fine-tuning): learn counter-stereotypical documents
  (the forget documents with the other attribute) + `kl_weight` KL(original || model) on retained
  text, which keeps the rest of the model where it was. Counter set.
* `lora_counter_fine_tune` (seed 001, LoRA): the same counter-stereotypical objective learnt by
  low-rank adapters (rank `rank`) on the frozen model, merged into it at the end. Counter set.
* `reverse_distillation` (seed 000): a fresh student distilled from the model (the teacher) on
  everything but the removed documents: KL(teacher || student) per next token, plus `ce_weight`
  times the student's own loss on those documents. Retain set.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sisa.config import Config
from sisa.errors import SisaError
from sisa.eval.timing import Stopwatch
from sisa.tasks import PAD
from sisa.training.step import ShardTrainer, trainer_for
from sisa.unlearn.baselines.common import (
    Budget,
    Result,
    as_key,
    program,
    stream,
    traced,
)

STUDENT = 7  # key stream of a fresh student's initialisation


@dataclasses.dataclass(frozen=True)
class LMData:
    """Token rows [N, T + 1] (BOS, tokens, EOS, padding) a method may use."""

    forget: np.ndarray  # the documents to remove
    spans: np.ndarray  # [N_forget, T] bool: target t of forget row n lies in its harmful span
    retain: np.ndarray  # the training documents that stay
    counter: np.ndarray  # counter-stereotypical documents (each forget document, the other attribute)

    def __post_init__(self):
        if self.spans.shape != (len(self.forget), self.forget.shape[1] - 1):
            raise SisaError(f"spans must be [forget rows, T] = {(len(self.forget), self.forget.shape[1] - 1)}, got "
                            f"{self.spans.shape}")


@functools.cache
def lm_trainer(trainer: ShardTrainer) -> ShardTrainer:
    """The trainer reduced to its model and data shape (seed, schedule and data path dropped): one
    set of programs per model, whatever the seed or corpus file."""
    if trainer.task_name != "lm" or trainer.cfg.model.base:
        raise SisaError("LM unlearning methods take a causal language model trained without a base "
                        f"(task {trainer.task_name!r}, base {trainer.cfg.model.base!r})")
    return trainer_for(Config(model=trainer.cfg.model), trainer.input_shape, trainer.num_classes, trainer.scale,
                       trainer.vocab_size, trainer.task_name)


def method(default_budget: Budget, **defaults):
    """Give a body `fn(trainer, params, data, budget, key, **hp) -> (params, rows)` the common
    signature: defaults filled in, unknown hyper-parameters refused, timing, Result."""

    def wrap(fn):
        @functools.wraps(fn)
        def unlearn(trainer, params, data: LMData, budget: Budget | None = None, key=None, **hparams) -> Result:
            unknown = set(hparams) - set(defaults)
            if unknown:
                raise SisaError(f"{fn.__name__}: unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
            hp, budget = {**defaults, **hparams}, budget or default_budget
            with Stopwatch() as sw:
                new, rows = fn(lm_trainer(trainer), params, data, budget, as_key(key), **hp)
                new = jax.block_until_ready(new)
            return Result(new, sw.seconds, int(rows), {**hp, **dataclasses.asdict(budget)}, sw.compile_seconds)

        unlearn.defaults = dict(defaults)
        unlearn.default_budget = default_budget
        return unlearn

    return wrap


def _run(update, trainer, params, streams: dict, steps: int, budget: Budget, hp: dict, key, aux=None):
    run = program(update, trainer, budget.batch_size, budget.optimizer)
    hp = traced({**hp, "learning_rate": budget.learning_rate})
    return run(jax.tree.map(jnp.asarray, params), aux or {}, streams, np.int32(steps), hp, key)


def _rows(rows, batch_size: int, **fields) -> dict:
    return stream(rows, np.zeros(len(rows), np.int32), batch_size, **fields)


# --------------------------------------------------------------------------------------------
# Losses on a padded batch of token rows


def _log_probs(ctx, params, rows, key=None):
    """(log p of each target [B, T], the full next-token log-distribution [B, T, V])."""
    logp = jax.nn.log_softmax(ctx.logits(params, rows[:, :-1], key).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, rows[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0], logp


def _targets(batch):
    """[B, T] weight of each real (non-padding) target of the batch's real rows."""
    return (batch["x"][:, 1:] != PAD) * batch["mask"][:, None]


def _nll(token_logp, weight):
    """Mean negative log-likelihood over the weighted targets."""
    return -jnp.sum(token_logp * weight) / jnp.maximum(weight.sum(), 1)


def _kl(teacher_logp, student_logp, weight):
    """Mean over weighted targets of KL(teacher || student) of the next-token distributions."""
    per = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)
    return jnp.sum(per * weight) / jnp.maximum(weight.sum(), 1)


def _ascend(weight_of):
    """The update of gradient ascent on the forget stream, over the targets `weight_of(batch)`."""

    def update(ctx, params, opt_state, batches, key):
        f = batches["forget"]
        loss = lambda p: -_nll(_log_probs(ctx, p, f["x"], key)[0], weight_of(f))
        return ctx.descend(params, opt_state, loss, f["mask"].sum())

    return update


_ascend_documents = _ascend(_targets)
_ascend_spans = _ascend(lambda f: f["span"] * f["mask"][:, None])


def _ascend_descend(ctx, params, opt_state, batches, key):
    f, r = batches["forget"], batches["retain"]

    def loss(p):
        return (-_nll(_log_probs(ctx, p, f["x"], key)[0], _targets(f))
                + ctx.hp["retain_weight"] * _nll(_log_probs(ctx, p, r["x"], key)[0], _targets(r)))

    return ctx.descend(params, opt_state, loss, f["mask"].sum() + r["mask"].sum())


def _npo(ctx, params, opt_state, batches, key):
    f, beta = batches["forget"], ctx.hp["beta"]
    w = _targets(f)
    reference = jax.lax.stop_gradient(jnp.sum(_log_probs(ctx, ctx.aux["reference"], f["x"])[0] * w, axis=1))

    def loss(p):
        ratio = jnp.sum(_log_probs(ctx, p, f["x"], key)[0] * w, axis=1) - reference
        return 2.0 / beta * jnp.sum(jax.nn.softplus(beta * ratio) * f["mask"]) / jnp.maximum(f["mask"].sum(), 1)

    return ctx.descend(params, opt_state, loss, f["mask"].sum())


def _counter_loss(ctx, model_params, batches, key):
    """Counter-stereotypical NLL + kl_weight KL(original || model) on a retained batch."""
    c, r = batches["counter"], batches["retain"]
    loss = _nll(_log_probs(ctx, model_params, c["x"], key)[0], _targets(c))
    teacher = jax.lax.stop_gradient(_log_probs(ctx, ctx.aux["reference"], r["x"])[1])
    return loss + ctx.hp["kl_weight"] * _kl(teacher, _log_probs(ctx, model_params, r["x"], key)[1], _targets(r))


def _counter(ctx, params, opt_state, batches, key):
    return ctx.descend(params, opt_state, lambda p: _counter_loss(ctx, p, batches, key), batches["counter"]["mask"].sum())


def _counter_lora(ctx, params, opt_state, batches, key):
    from sisa.models import adapters

    loss = lambda a: _counter_loss(ctx, adapters.merge(ctx.aux["reference"], a), batches, key)
    return ctx.descend(params, opt_state, loss, batches["counter"]["mask"].sum())


def _distil(ctx, params, opt_state, batches, key):
    r = batches["retain"]
    w = _targets(r)
    teacher = jax.lax.stop_gradient(_log_probs(ctx, ctx.aux["teacher"], r["x"])[1])

    def loss(p):
        token, logp = _log_probs(ctx, p, r["x"], key)
        return _kl(teacher, logp, w) + ctx.hp["ce_weight"] * _nll(token, w)

    return ctx.descend(params, opt_state, loss, r["mask"].sum())


# --------------------------------------------------------------------------------------------
# The methods


@method(Budget(epochs=2, learning_rate=3e-4))
def grad_ascent(trainer, params, data, budget, key):
    streams = {"forget": _rows(data.forget, budget.batch_size)}
    return _run(_ascend_documents, trainer, params, streams, budget.steps_for(len(data.forget)), budget, {}, key)


@method(Budget(epochs=2, learning_rate=3e-4))
def mask_grad_ascent(trainer, params, data, budget, key):
    streams = {"forget": _rows(data.forget, budget.batch_size, span=data.spans.astype(np.float32))}
    return _run(_ascend_spans, trainer, params, streams, budget.steps_for(len(data.forget)), budget, {}, key)


@method(Budget(epochs=2, learning_rate=3e-4), retain_weight=1.0)
def neg_fine_tune(trainer, params, data, budget, key, **hp):
    b = budget.batch_size
    streams = {"forget": _rows(data.forget, b), "retain": _rows(data.retain, b)}
    return _run(_ascend_descend, trainer, params, streams, budget.steps_for(len(data.forget)), budget, hp, key)


@method(Budget(epochs=3, learning_rate=1e-3), beta=0.1)
def npo(trainer, params, data, budget, key, **hp):
    if not hp["beta"] > 0:
        raise SisaError(f"npo: beta must be > 0, got {hp['beta']}")
    streams = {"forget": _rows(data.forget, budget.batch_size)}
    return _run(_npo, trainer, params, streams, budget.steps_for(len(data.forget)), budget, hp, key,
                aux={"reference": params})


@method(Budget(epochs=2, learning_rate=1e-3), kl_weight=1.0)
def kl_counter_fine_tune(trainer, params, data, budget, key, **hp):
    b = budget.batch_size
    streams = {"counter": _rows(data.counter, b), "retain": _rows(data.retain, b)}
    return _run(_counter, trainer, params, streams, budget.steps_for(len(data.counter)), budget, hp, key,
                aux={"reference": params})


@method(Budget(epochs=2, learning_rate=3e-3), kl_weight=1.0, rank=4)
def lora_counter_fine_tune(trainer, params, data, budget, key, **hp):
    from sisa.models import adapters

    rank = hp.pop("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SisaError(f"lora_counter_fine_tune: rank must be an integer >= 1, got {rank!r}")
    b = budget.batch_size
    base = jax.tree.map(jnp.asarray, params)
    streams = {"counter": _rows(data.counter, b), "retain": _rows(data.retain, b)}
    trained, rows = _run(_counter_lora, trainer, adapters.init(base, rank, jax.random.fold_in(key, STUDENT)), streams,
                         budget.steps_for(len(data.counter)), budget, hp, key, aux={"reference": base})
    return adapters.merge(base, trained), rows


@method(Budget(epochs=8, learning_rate=3e-3), ce_weight=0.0)
def reverse_distillation(trainer, params, data, budget, key, **hp):
    streams = {"retain": _rows(data.retain, budget.batch_size)}
    student = _fresh(trainer)(jax.random.randint(jax.random.fold_in(key, STUDENT), (), 1 << 20, 1 << 30))
    return _run(_distil, trainer, student, streams, budget.steps_for(len(data.retain)), budget, hp, key,
                aux={"teacher": params})


@functools.cache
def _fresh(trainer: ShardTrainer):
    return jax.jit(lambda index: trainer.init(index)["params"])


METHODS = {f.__name__: f for f in (grad_ascent, mask_grad_ascent, neg_fine_tune, npo, kl_counter_fine_tune,
                                   lora_counter_fine_tune, reverse_distillation)}
