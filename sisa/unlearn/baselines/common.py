"""What the approximate-unlearning baselines share.

Every baseline is `unlearn(trainer, params, forget, retain, budget=None, key=None, **hparams)
-> Result`: it starts from `params` (the trained model), sees the forget set and the retain set
as `(x, y)` arrays (raw features: the trainer applies the data set's scale) and returns new
params of the same tree structure, with its wall time and work done.

Gradient baselines run all their optimiser steps in one jitted program (`program`): data sets
are padded to a bucketed capacity and masked, the step count and every numeric
hyper-parameter are traced values, keys come from `fold_in`, so a second call with other
data of a similar size or other hyper-parameters reuses the compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sisa.config import Config
from sisa.errors import SisaError
from sisa.eval.timing import Stopwatch
from sisa.training.step import ShardTrainer

Examples = tuple[np.ndarray, np.ndarray]  # (x, y)

# Independent key streams folded into a baseline's key.
ORDER, STEP, RELABEL, SUBSET, TEACHER, NOISE = range(6)


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work a baseline may do.

    `epochs` counts passes over the method's primary set (its docstring names it; fractions
    allowed); `steps`, when given, fixes the number of optimiser steps instead.
    """

    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | sgd

    def __post_init__(self):
        if not self.epochs > 0 or (self.steps is not None and self.steps < 1) or self.batch_size < 1:
            raise SisaError(f"budget needs epochs > 0, steps >= 1 (or none), batch_size >= 1; got {self}")
        if not self.learning_rate > 0:
            raise SisaError(f"budget learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise SisaError(f"unknown optimizer {self.optimizer!r} ({', '.join(OPTIMIZERS)})")

    def steps_for(self, n: int) -> int:
        """Optimiser steps for `epochs` passes over `n` examples (or `steps`)."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * max(1, math.ceil(n / self.batch_size))))


BUDGET_FIELDS = tuple(f.name for f in dataclasses.fields(Budget))
# Updates are -learning_rate * transform(grads); the rate stays a traced value.
OPTIMIZERS = {"adam": optax.scale_by_adam, "sgd": optax.identity}


@dataclasses.dataclass(frozen=True)
class Result:
    params: Any  # same tree structure as the input params
    seconds: float  # wall clock of the whole call, compilation included
    examples_passes: int  # examples whose loss was back-propagated, counted once per pass
    hparams: dict = dataclasses.field(default_factory=dict)  # what ran: hyper-parameters and budget
    compile_seconds: float = 0.0  # of `seconds`, spent tracing and compiling


def baseline(default_budget: Budget, **defaults):
    """Give a method body `fn(trainer, params, forget, retain, budget, key, **hp) -> (params, examples)`
    the common signature: defaults filled in, unknown hyper-parameters refused, timing, Result."""

    def wrap(fn):
        @functools.wraps(fn)
        def unlearn(trainer, params, forget, retain, budget: Budget | None = None, key=None, **hparams) -> Result:
            unknown = set(hparams) - set(defaults)
            if unknown:
                raise SisaError(f"{fn.__module__.rsplit('.', 1)[-1]}: unknown hyper-parameter(s) {sorted(unknown)}; "
                                f"known: {sorted(defaults)}")
            hp = {**defaults, **hparams}
            budget = budget or default_budget
            key = as_key(key)
            with Stopwatch() as sw:
                new, examples = fn(trainer, params, _examples(forget), _examples(retain), budget, key, **hp)
                new = jax.block_until_ready(new)
            return Result(new, sw.seconds, int(examples), {**hp, **dataclasses.asdict(budget)}, sw.compile_seconds)

        unlearn.__doc__ = sys.modules[fn.__module__].__doc__  # the method's description and paper
        unlearn.defaults = dict(defaults)
        unlearn.default_budget = default_budget
        return unlearn

    return wrap


def as_key(key):
    if key is None:
        return jax.random.key(0)
    if isinstance(key, int):
        return jax.random.key(key)
    return key


def _examples(data) -> Examples:
    x, y = data
    return np.asarray(x), np.asarray(y, np.int32)


@functools.cache
def model_trainer(trainer: ShardTrainer) -> ShardTrainer:
    """The trainer reduced to its model (seed and schedule dropped): one set of programs per model."""
    return ShardTrainer(Config(model=trainer.cfg.model), trainer.input_shape, trainer.num_classes, trainer.scale)


def capacity(n: int, batch_size: int) -> int:
    """Rows a set of `n` examples is padded to: a power-of-two number of batches."""
    batches = max(1, math.ceil(n / batch_size))
    return batch_size * (1 << (batches - 1).bit_length())


def stream(x, y, batch_size: int, **fields) -> dict:
    """A data set padded to `capacity` rows, with its true size `n` (a device scalar)."""
    n = len(x)
    cap = capacity(n, batch_size)

    def pad(a):
        a = np.asarray(a)
        out = np.zeros((cap, *a.shape[1:]), a.dtype)
        out[:n] = a
        return out

    return {"x": pad(x), "y": pad(np.asarray(y, np.int32)), **{k: pad(v) for k, v in fields.items()}, "n": np.int32(n)}


def traced(hp: dict) -> dict:
    """The numeric hyper-parameters, as device scalars (so new values do not recompile)."""
    out = {}
    for k, v in hp.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k] = np.asarray(v, np.int32 if isinstance(v, int) else np.float32)
    return out


# --------------------------------------------------------------------------------------------
# Losses (all masked means over a padded batch)


def masked_mean(v, mask):
    return jnp.sum(v * mask) / jnp.maximum(mask.sum(), 1)


def cross_entropy(logits, y, mask):
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, y), mask)


def descend_cross_entropy(name: str) -> Update:
    """The update of plain training on stream `name`. Make it once, at import: the update
    function keys the compiled program."""

    def update(ctx, params, opt_state, batches, key):
        b = batches[name]
        return ctx.descend(params, opt_state, lambda p: cross_entropy(ctx.logits(p, b["x"], key), b["y"], b["mask"]),
                           b["mask"].sum())

    return update


def kl(teacher_logits, student_logits, mask, temperature=1.0):
    """Mean KL(teacher || student) at `temperature`, times temperature² (Hinton et al.)."""
    t = jax.nn.log_softmax(teacher_logits / temperature)
    s = jax.nn.log_softmax(student_logits / temperature)
    return masked_mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1), mask) * temperature**2


# --------------------------------------------------------------------------------------------
# The step loop


@dataclasses.dataclass(frozen=True)
class Context:
    """What an update function sees at step `t` (all traced except trainer and tx)."""

    trainer: ShardTrainer
    tx: optax.GradientTransformation
    t: jax.Array
    steps: jax.Array
    epoch: dict  # stream -> epoch index of this step
    index: dict  # stream -> batch index within the epoch
    per_epoch: dict  # stream -> batches per epoch
    hp: dict
    aux: dict

    def logits(self, params, x, key=None):
        """Training-mode logits (dropout on when the model has it and a key is given)."""
        return self.trainer.logits(params, x, key if self.trainer.cfg.model.dropout else None)

    def descend(self, params, opt_state, loss_fn, examples):
        """One step on `loss_fn(params)`; `aux["update_mask"]` (if any) freezes weights bit for bit,
        and a step that saw no example leaves everything as it was."""
        grads = jax.grad(loss_fn)(params)
        updates, new_state = self.tx.update(grads, opt_state, params)
        lr = self.hp["learning_rate"]
        new = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), params, updates)
        mask = self.aux.get("update_mask")
        if mask is not None:
            new = jax.tree.map(lambda m, n, p: jnp.where(m, n, p), mask, new, params)
        keep = examples > 0
        new, new_state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), (new, new_state), (params, opt_state))
        return new, new_state, examples.astype(jnp.int32)


def _order(key, n, cap):
    """A random permutation of rows 0..n-1, then the padding rows."""
    u = jax.random.uniform(key, (cap,))
    return jnp.argsort(jnp.where(jnp.arange(cap) < n, u, 2.0)).astype(jnp.int32)


Update = Callable[..., tuple]  # (ctx, params, opt_state, batches, key) -> (params, opt_state, examples)


@functools.cache
def program(update: Update, trainer: ShardTrainer, batch_size: int, optimizer: str):
    """jit(run(params, aux, streams, steps, hp, key) -> (params, examples)).

    Every stream is visited in epochs of a fresh random order (keys folded from (stream, epoch));
    a smaller stream simply cycles. `update` is called once per step with one batch per stream.
    """
    tx = OPTIMIZERS[optimizer]()
    b = batch_size

    def run(params, aux, streams, steps, hp, key):
        names = sorted(streams)
        per_epoch = {k: jnp.maximum(1, (streams[k]["n"] + b - 1) // b) for k in names}
        order_keys = {k: jax.random.fold_in(jax.random.fold_in(key, ORDER), i) for i, k in enumerate(names)}
        step_key = jax.random.fold_in(key, STEP)

        def body(t, carry):
            params, opt_state, orders, count = carry
            batches, epoch, index, new_orders = {}, {}, {}, {}
            for k in names:
                s, cap = streams[k], streams[k]["y"].shape[0]
                e, j = t // per_epoch[k], t % per_epoch[k]
                order = jax.lax.cond(
                    j == 0,
                    lambda s=s, e=e, cap=cap, k=k: _order(jax.random.fold_in(order_keys[k], e), s["n"], cap),
                    lambda k=k: orders[k],
                )
                idx = jax.lax.dynamic_slice(order, (j * b,), (b,))
                batches[k] = {f: v[idx] for f, v in s.items() if f != "n"}
                batches[k]["mask"] = j * b + jnp.arange(b) < s["n"]
                epoch[k], index[k], new_orders[k] = e, j, order
            ctx = Context(trainer, tx, t, steps, epoch, index, per_epoch, hp, aux)
            params, opt_state, n = update(ctx, params, opt_state, batches, jax.random.fold_in(step_key, t))
            return params, opt_state, new_orders, count + n

        orders = {k: jnp.zeros(streams[k]["y"].shape[0], jnp.int32) for k in names}
        init = (params, tx.init(params), orders, jnp.zeros((), jnp.int32))
        params, _, _, count = jax.lax.fori_loop(0, steps, body, init)
        return params, count

    return jax.jit(run)


def run_steps(update: Update, trainer, params, streams: dict, steps: int, budget: Budget, hp: dict, key, aux=None):
    """Run `steps` optimiser steps of `update` (see `program`); returns (params, examples)."""
    hp = traced({**hp, "learning_rate": budget.learning_rate})
    run = program(update, model_trainer(trainer), budget.batch_size, budget.optimizer)
    params = jax.tree.map(jnp.asarray, params)
    return run(params, aux or {}, streams, np.int32(steps), hp, key)


def union(forget: Examples, retain: Examples, batch_size: int, forget_labels=None) -> dict:
    """Forget and retain sets as one stream, with a boolean `forget` field marking the rows."""
    (xf, yf), (xr, yr) = forget, retain
    yf = yf if forget_labels is None else forget_labels
    flag = np.concatenate([np.ones(len(xf), bool), np.zeros(len(xr), bool)])
    return stream(np.concatenate([xf, xr]), np.concatenate([yf, yr]), batch_size, forget=flag)


def random_labels(y: np.ndarray, num_classes: int, key) -> np.ndarray:
    """A uniformly random label other than the true one, per example."""
    shift = _draw(lambda k, shape: jax.random.randint(k, shape, 1, max(num_classes, 2)), key, RELABEL, len(y))
    return ((y + shift) % num_classes).astype(np.int32)


def random_subset(n: int, k: int, key) -> np.ndarray:
    """`k` of the rows 0..n-1, uniformly at random, sorted."""
    u = _draw(lambda key, shape: jax.random.uniform(key, shape), key, SUBSET, n)
    return np.sort(np.argsort(u, kind="stable")[:k])


def _draw(sample, key, stream_id: int, n: int) -> np.ndarray:
    """`n` draws of `sample`, made at a power-of-two size so that new sizes rarely compile."""
    size = 1 << max(n - 1, 0).bit_length()
    return np.asarray(sample(jax.random.fold_in(key, stream_id), (size,)))[:n]


@functools.cache
def _init(trainer: ShardTrainer):
    return jax.jit(lambda index: trainer.init(index)["params"])


def random_init(trainer: ShardTrainer, key):
    """Fresh parameters from the model's own initialisers, drawn by `key`."""
    index = jax.random.randint(jax.random.fold_in(key, TEACHER), (), 1 << 20, 1 << 30)
    return _init(model_trainer(trainer))(index)
