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
from sisa.hashing import argsort_u32, keyed_hash
from sisa import models, tasks
from sisa.errors import SisaError
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
    input_shape: tuple[int, ...]  # a data-store row's shape
    num_classes: int
    scale: float
    vocab_size: int | None = None  # rows are token ids (text data)
    task_name: str = "classify"

    @functools.cached_property
    def identity(self) -> str:
        """Everything about this trainer that shapes its programs (their cache key): the config,
        the data's shape facts and, for your own model, the digest of its source."""
        out = f"{self.cfg.digest()}|{self.input_shape}|{self.num_classes}|{self.scale}"
        if self.vocab_size is not None or self.task_name != "classify":
            out += f"|{self.vocab_size}|{self.task_name}"
        if models.is_user_model(self.cfg.model.name):
            out += f"|{models.code_digest(self.cfg.model.name)}"
        if self.base is not None:  # its arrays are constants of the programs
            from sisa.models import adapters

            out += f"|base:{adapters.digest(self.base)}"
        return out

    @functools.cached_property
    def task(self):
        return tasks.make(self.task_name, self.num_classes)

    @functools.cached_property
    def model_input_shape(self) -> tuple[int, ...]:
        return self.task.model_input_shape(self.input_shape)

    @functools.cached_property
    def _abstract_model(self):
        name = self.cfg.model.name
        if self.vocab_size is not None and name in ("mlp", "cnn", "resnet18"):
            raise SisaError(f"model {name!r} takes numeric features, and this data set is text: use model.name = "
                            "\"transformer\" (classify) or \"transformer_lm\" (lm), or your own model", kind="bad_input")
        if self.vocab_size is None and name in models.TEXT_MODELS:
            raise SisaError(f"model {name!r} reads text (token ids), and this data set has numeric features: use "
                            "\"mlp\" or \"cnn\", or give a data set with a text column", kind="bad_input")
        if (name == "transformer_lm") != (self.task_name == "lm") and not models.is_user_model(name):
            want = "transformer_lm" if self.task_name == "lm" else "transformer"
            raise SisaError(f"model {name!r} does not do the task {self.task_name!r} (data.task): use {want!r}",
                            kind="bad_input")
        model = nnx.eval_shape(lambda: self._model(jax.random.key(0)))
        self._check_outputs(model)
        return model

    def _check_outputs(self, model) -> None:
        """Refuse a model whose logits do not have the task's shape, naming both."""
        batch = 2
        x = jax.ShapeDtypeStruct((batch, *self.model_input_shape), jnp.int32 if self.vocab_size else jnp.float32)
        params = nnx.state(model, nnx.Param)
        graphdef = nnx.split(model, nnx.Param)[0]
        try:
            out = jax.eval_shape(lambda p, x: self._call(nnx.merge(graphdef, p), x, None), params, x)
        except Exception as e:
            raise SisaError(f"model {self.cfg.model.name!r} fails on a batch of inputs of shape "
                            f"{(batch, *self.model_input_shape)}: {type(e).__name__}: {e}", kind="bad_input") from e
        want = (batch, self.num_classes) if self.task_name == "classify" else (batch, *self.model_input_shape,
                                                                                self.num_classes)
        if getattr(out, "shape", None) != want:
            raise SisaError(f"model {self.cfg.model.name!r} returns {getattr(out, 'shape', type(out).__name__)} for "
                            f"inputs {(batch, *self.model_input_shape)}; task {self.task_name!r} needs logits of shape "
                            f"{want}", kind="bad_input")

    @functools.cached_property
    def graphdef(self):
        return nnx.split(self._abstract_model, nnx.Param)[0]

    @functools.cached_property
    def _keyed(self) -> bool:
        """Whether the model is called with a dropout key while training (see sisa.models)."""
        takes = models.takes_key(self._abstract_model)
        return takes and (bool(self.cfg.model.dropout) or models.is_user_model(self.cfg.model.name))

    def _call(self, model, x, key):
        return model(x, key=key) if models.takes_key(model) else model(x)

    @functools.cached_property
    def tx(self):
        return make_optimizer(self.cfg)

    def _model(self, key):
        return models.build(self.cfg.model, self.model_input_shape, self.num_classes, vocab_size=self.vocab_size,
                            rngs=nnx.Rngs(params=key))

    def _root(self, shard, seed):
        return jax.random.fold_in(jax.random.key(self.cfg.train.seed if seed is None else seed), shard)

    @functools.cached_property
    def abstract_state(self):
        """Shapes and dtypes of one shard's state, as numpy zeros (a restore target)."""
        self._abstract_model  # noqa: B018  the model's checks come first
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(self.init, 0))

    @functools.cached_property
    def base(self) -> dict | None:
        """The frozen base's parameters when training adapters (sisa.models.adapters), else None."""
        if not self.cfg.model.base:
            return None
        from sisa.models import adapters

        model_params = nnx.to_pure_dict(nnx.state(self._abstract_model, nnx.Param))
        return adapters.load_base(self.cfg.model.base, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), model_params))

    def init(self, shard, seed=None) -> State:
        """A shard's initial state: the model's parameters, or with a base its adapters (only
        they are trained, and checkpointed). `seed`: train.seed, as a traced value (None: the
        config's), so that one program serves every seed."""
        key = jax.random.fold_in(self._root(shard, seed), _INIT)
        if self.base is not None:
            from sisa.models import adapters

            params = adapters.init(self.base, self.cfg.train.lora_rank, key)
        else:
            params = nnx.to_pure_dict(nnx.state(self._model(key), nnx.Param))
        return {"params": params, "opt_state": self.tx.init(params), "step": jnp.zeros((), jnp.int32)}

    def logits(self, params, x, key=None):
        """The model's logits on model inputs `x` (a task's `split`, or its serving rows cut)."""
        if self.base is not None:
            from sisa.models import adapters

            params = adapters.merge(self.base, params)
        x = x.astype(jnp.int32) if self.vocab_size else x.astype(jnp.float32) * self.scale
        return self._call(nnx.merge(self.graphdef, params), x, key)

    def outputs(self, params, x):
        """The task's serving outputs (inference: no key) on store-format rows `x`."""
        inputs, _ = self.task.split(x, None)
        return self.task.outputs(self.logits(params, inputs), x)

    def step(self, state: State, x, y, mask, key, lr_scale=None) -> tuple[State, jax.Array]:
        """One masked Adam step. A batch that is all padding leaves `state` exactly as it was.
        `lr_scale` (None: 1) multiplies the step's updates, i.e. its learning rate."""
        inputs, targets = self.task.split(x, y)

        def loss_fn(params):
            total, count = self.task.loss(self.logits(params, inputs, key), targets, mask, self.cfg.train.label_smoothing)
            return total / jnp.maximum(count, 1)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        if lr_scale is not None:  # every optimizer here ends in a scale by -learning_rate: linear in it
            updates = jax.tree.map(lambda u: u * lr_scale, updates)
        new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state, "step": state["step"] + 1}
        # Adam moves on zero gradients; an empty batch must not.
        keep = mask.any()
        return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state), loss

    def epoch(self, state: State, data: dict, shard, stage, epoch, active, seed=None, features=None):
        """One epoch over the shard's slices 0..stage (nothing when not `active`).

        The order is a keyed hash of (id, seed, shard, stage, epoch): removing an example
        leaves the relative order of the others unchanged. `seed` as in `init`. `features`:
        rows -> their features (None: `data["x"][rows]`). Returns (state, mean loss).
        """
        if features is None:
            features = lambda rows: data["x"][rows]  # noqa: E731
        seed = self.cfg.train.seed if seed is None else seed
        b = self.cfg.train.batch_size
        member = data["valid"] & (data["slice"] <= stage) & active
        n = member.sum()
        keys = keyed_hash(data["ids"], seed, shard, stage, epoch, xp=jnp)
        order = argsort_u32(jnp.where(member, keys, _PAD_KEY))
        step_root = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(self._root(shard, seed), _STEP), stage),
                                       epoch)
        batches = (n + b - 1) // b
        # The stage's steps left for this epoch: all its batches but under "fractional"
        # (sisa.config), whose last epoch stops early. From this shard's own count only.
        steps = jnp.clip(self.cfg.stage_steps(n) - epoch * batches, 0, batches)

        def body(t, carry):
            state, total = carry
            idx = jax.lax.dynamic_slice(order, (t * b,), (b,))
            mask = t * b + jnp.arange(b) < n
            key = jax.random.fold_in(step_root, t) if self._keyed else None
            lr_scale = self._lr_scale(n, epoch, t, batches)
            state, loss = self.step(state, features(idx), data["y"][idx], mask, key, lr_scale)
            return state, total + loss * mask.sum()

        state, total = jax.lax.fori_loop(0, steps, body, (state, jnp.zeros((), jnp.float32)))
        return state, total / jnp.maximum(jnp.minimum(n, steps * b), 1)

    def _lr_scale(self, n, epoch, t, batches):
        """The learning-rate factor of batch `t` of `epoch` of a stage over `n` examples (this
        shard's slices 0..stage), in `batches` batches (None: 1, no multiply).

        "cosine" decays from 1 to 0 over the stage's steps (`Config.stage_steps`), a function of
        the config and the shard's own data only.
        """
        if self.cfg.train.lr_schedule == "cosine":
            steps = jnp.maximum(self.cfg.stage_steps(n), 1).astype(jnp.float32)
            done = (epoch * batches + t).astype(jnp.float32)
            return 0.5 * (1 + jnp.cos(jnp.pi * done / steps))
        return None


@functools.cache
def trainer_for(cfg: Config, input_shape: tuple[int, ...], num_classes: int, scale: float,
                vocab_size: int | None = None, task: str = "classify") -> ShardTrainer:
    """One trainer per process per (config, data shape): its traced shapes and programs are reused."""
    return ShardTrainer(cfg, input_shape, num_classes, scale, vocab_size, task)


def seedless(trainer: ShardTrainer) -> ShardTrainer:
    """The trainer whose programs serve `trainer` and every other seed: the seeds zeroed (the
    programs take train.seed as an argument, and the partition seed only places data)."""
    cfg = trainer.cfg.replace(train={"seed": 0}, partition={"seed": 0})
    return trainer_for(cfg, trainer.input_shape, trainer.num_classes, trainer.scale, trainer.vocab_size,
                       trainer.task_name)
