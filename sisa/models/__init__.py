"""Flax NNX models, chosen by name in the config.

The contract a model meets, built in or your own (`model.name = "package.module:Class"`):

* built as ``Class(input_shape, num_classes, *, rngs, **options)``: `input_shape` is one
  example's shape as the model receives it, `num_classes` the outputs per prediction (the
  vocabulary size for a language model), `rngs` an `nnx.Rngs` with a `params` stream, and
  `options` the config's ``[model.options]`` table. On text data it also gets
  ``vocab_size=V``: inputs are then int32 token ids, 0 being padding (sisa.data.text).
* called as ``model(x, *, key=None)`` on a batch: returns logits ``[B, num_classes]`` for
  classification, ``[B, T, num_classes]`` (next-token logits at every position) for a language
  model. `key` is a PRNG key while training (for dropout) and None at inference; a model
  without a `key` parameter is called as ``model(x)``.
* deterministic given its parameters and `key`: sisa's exactness rests on it.

Your module's source is hashed into the run's manifest: a later command refuses to retrain or
serve with changed model code, which would no longer be the model that was trained.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable

from flax import nnx

from sisa.config import ModelConfig
from sisa.errors import SisaError


def _builtin(name: str) -> type:
    if name == "mlp":
        from sisa.models.mlp import MLP

        return MLP
    if name == "cnn":
        from sisa.models.cnn import CNN

        return CNN
    if name == "resnet18":
        from sisa.models.resnet import ResNet18

        return ResNet18
    from sisa.models import transformer

    return {"transformer": transformer.Transformer, "transformer_lm": transformer.TransformerLM}[name]


BUILTIN = ("mlp", "cnn", "resnet18", "transformer", "transformer_lm")
TEXT_MODELS = ("transformer", "transformer_lm")


def is_user_model(name: str) -> bool:
    return name not in BUILTIN


def resolve(name: str) -> Callable:
    """The class (or factory) a model name stands for; "package.module:Class" is imported (the
    current directory searched too, as `python -m` would)."""
    if not is_user_model(name):
        return _builtin(name)
    module_name, _, attr = name.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:
        raise SisaError(f"cannot import the module of model {name!r}: {type(e).__name__}: {e} (put it on PYTHONPATH, "
                        "or run sisa from the directory that holds it)", kind="bad_input") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise SisaError(f"model {name!r}: module {module_name!r} has no {attr!r}", kind="bad_input")
    if not callable(obj):
        raise SisaError(f"model {name!r} is not a class or function that builds a model", kind="bad_input")
    return obj


def name_of(factory: Callable) -> str:
    """The config name of a model class or factory given in Python: "module:qualname". It must be
    importable under that name, so that a later process (forget, verify) builds the same model."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise SisaError(f"model {factory!r} must be defined at the top level of an importable module (not in "
                        "__main__, a notebook cell or a function): later commands import it by name", kind="usage")
    name = f"{module}:{qualname}"
    if resolve(name) is not factory:
        raise SisaError(f"model {factory!r} is not what {name!r} imports", kind="usage")
    return name


def code_digest(name: str) -> str | None:
    """sha256 (16 hex) of the source file that defines a user model (None for built-in ones, which
    sisa's own version covers)."""
    if not is_user_model(name):
        return None
    module = sys.modules.get(name.partition(":")[0]) or importlib.import_module(name.partition(":")[0])
    try:
        path = inspect.getsourcefile(module)
        data = open(path, "rb").read() if path else None
    except (TypeError, OSError):
        data = None
    if data is None:
        raise SisaError(f"model {name!r}: the source of its module cannot be read, so a later command could not tell "
                        "whether it changed; define it in a .py file", kind="bad_input")
    return hashlib.sha256(data).hexdigest()[:16]


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, vocab_size: int | None = None,
          rngs: nnx.Rngs) -> nnx.Module:
    cls, kwargs = resolve(cfg.name), dict(cfg.options)
    if not is_user_model(cfg.name):
        kwargs = {"hidden": cfg.hidden, "dropout": cfg.dropout, **kwargs}
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    try:
        model = cls(input_shape, num_classes, rngs=rngs, **kwargs)
    except SisaError:
        raise
    except Exception as e:
        raise SisaError(f"model {cfg.name!r} could not be built for inputs of shape {tuple(input_shape)} and "
                        f"{num_classes} outputs (options {kwargs}): {type(e).__name__}: {e}", kind="bad_input") from e
    if not isinstance(model, nnx.Module):
        raise SisaError(f"model {cfg.name!r} built a {type(model).__name__}, not a Flax NNX module", kind="bad_input")
    return model


def takes_key(model) -> bool:
    """Whether `model` is called with `key=` (see the contract above)."""
    try:
        params = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False
    return "key" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
