"""Pure single-shard training: init, one step, one epoch.

Every function here sees one shard only; `ensemble.py` maps them over the shard axis, so a
shard's result cannot depend on another shard's data (isolation by construction).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sisa.config import Config
from sisa.hashing import keyed_hash
from sisa.models import build
from sisa.training import optim

State = dict[str, Any]  # {"params", "opt_state", "step"}

# Independent key streams folded in after the seed.
_INIT, _STEP = 0, 1
_PAD_KEY = np.uint32(0xFFFFFFFF)  # numpy: a jnp constant would compile at import


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    return optim.make(cfg.train.optimizer, cfg.train.learning_rate, cfg.train.weight_decay)


@dataclasses.dataclass(frozen=True)
class ShardTrainer:
    """The single-shard functions for one config and data shape (static under jit)."""

    cfg: Config
    input_shape: tuple[int, ...]
    num_classes: int
    scale: float

    @functools.cached_property
    def graphdef(self):
        model = nnx.eval_shape(lambda: self._model(jax.random.key(0)))
        return nnx.split(model, nnx.Param)[0]

    @functools.cached_property
    def tx(self):
        return make_optimizer(self.cfg)

    def _model(self, key):
        return build(self.cfg.model, self.input_shape, self.num_classes, rngs=nnx.Rngs(params=key))

    def _root(self, shard):
        return jax.random.fold_in(jax.random.key(self.cfg.train.seed), shard)

    @functools.cached_property
    def abstract_state(self):
        """Shapes and dtypes of one shard's state, as numpy zeros (a restore target)."""
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(self.init, 0))

    def init(self, shard) -> State:
        key = jax.random.fold_in(self._root(shard), _INIT)
        params = nnx.to_pure_dict(nnx.state(self._model(key), nnx.Param))
        return {"params": params, "opt_state": self.tx.init(params), "step": jnp.zeros((), jnp.int32)}

    def logits(self, params, x, key=None):
        x = x.astype(jnp.float32) * self.scale
        return nnx.merge(self.graphdef, params)(x, key=key)

    def step(self, state: State, x, y, mask, key, lr_scale=None) -> tuple[State, jax.Array]:
        """One masked Adam step. A batch that is all padding leaves `state` exactly as it was.
        `lr_scale` (None: 1) multiplies the step's updates, i.e. its learning rate."""
        smoothing = self.cfg.train.label_smoothing

        def loss_fn(params):
            logits = self.logits(params, x, key)
            if smoothing:
                target = optax.smooth_labels(jax.nn.one_hot(y, self.num_classes, dtype=logits.dtype), smoothing)
                ce = optax.softmax_cross_entropy(logits, target)
            else:
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(ce * mask) / jnp.maximum(mask.sum(), 1)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        if lr_scale is not None:  # every optimizer here ends in a scale by -learning_rate: linear in it
            updates = jax.tree.map(lambda u: u * lr_scale, updates)
        new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state, "step": state["step"] + 1}
        # Adam moves on zero gradients; an empty batch must not.
        keep = mask.any()
        return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state), loss

    def epoch(self, state: State, data: dict, shard, stage, epoch, active):
        """One epoch over the shard's slices 0..stage (nothing when not `active`).

        The order is a keyed hash of (id, seed, shard, stage, epoch): removing an example
        leaves the relative order of the others unchanged. Returns (state, mean loss).
        """
        b = self.cfg.train.batch_size
        member = data["valid"] & (data["slice"] <= stage) & active
        n = member.sum()
        keys = keyed_hash(data["ids"], self.cfg.train.seed, shard, stage, epoch, xp=jnp)
        order = jnp.argsort(jnp.where(member, keys, _PAD_KEY), stable=True)
        step_root = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(self._root(shard), _STEP), stage), epoch)
        batches = (n + b - 1) // b

        def body(t, carry):
            state, total = carry
            idx = jax.lax.dynamic_slice(order, (t * b,), (b,))
            mask = t * b + jnp.arange(b) < n
            key = jax.random.fold_in(step_root, t) if self.cfg.model.dropout else None
            lr_scale = self._lr_scale(stage, epoch, t, batches)
            state, loss = self.step(state, data["x"][idx], data["y"][idx], mask, key, lr_scale)
            return state, total + loss * mask.sum()

        state, total = jax.lax.fori_loop(0, batches, body, (state, jnp.zeros((), jnp.float32)))
        return state, total / jnp.maximum(n, 1)

    def _lr_scale(self, stage, epoch, t, batches):
        """The learning-rate factor of batch `t` of `epoch` of `stage` (None: 1, no multiply).

        "cosine" decays from 1 to 0 over the stage's steps: its epochs x `batches` (the batches
        of this shard's slices 0..stage), a function of the config and the shard's own data only.
        """
        if self.cfg.train.lr_schedule == "cosine":
            steps = jnp.maximum(batches * self.cfg.epochs_for_stage(stage), 1).astype(jnp.float32)
            done = (epoch * batches + t).astype(jnp.float32)
            return 0.5 * (1 + jnp.cos(jnp.pi * done / steps))
        return None


@functools.cache
def trainer_for(cfg: Config, input_shape: tuple[int, ...], num_classes: int, scale: float) -> ShardTrainer:
    """One trainer per process per (config, data shape): its traced shapes and programs are reused."""
    return ShardTrainer(cfg, input_shape, num_classes, scale)
