"""Flax NNX models, chosen by name in the config."""

from __future__ import annotations

from flax import nnx

from sisa.config import ModelConfig
from sisa.models.cnn import CNN
from sisa.models.mlp import MLP

REGISTRY = {"mlp": MLP, "cnn": CNN}


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    return REGISTRY[cfg.name](input_shape, num_classes, hidden=cfg.hidden, dropout=cfg.dropout, rngs=rngs)
