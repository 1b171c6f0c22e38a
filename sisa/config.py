"""Every knob of a run as frozen dataclasses; load/save TOML.

A run's config is saved in its workdir; every later command checks it against the
workdir's so that a deletion retrains with exactly the program that trained the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from pathlib import Path

from sisa.errors import SisaError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist5k"  # registry name or path
    num_classes: int | None = None  # default: max label + 1


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    shards: int = 5
    slices: int = 4
    strategy: str = "uniform"  # uniform | stratified | grouped
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # mlp | cnn
    hidden: tuple[int, ...] = (128,)  # MLP hidden widths / CNN channels
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    # Epochs per stage. "budget": the paper's fixed budget, spread so that all stages
    # together cost `epochs` passes over the shard (each stage gets ceil(2E/(R+1)) epochs);
    # "uniform": every stage trains `epochs` epochs.
    schedule: str = "budget"
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | sgd | adamw
    seed: int = 0
    # Keep the checkpoint of every k-th stage (and always the last). k > 1 saves disk; a
    # deletion then restarts from the latest kept stage before it, retraining more.
    checkpoint_every: int = 1


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    aggregation: str = "softmax"  # vote | softmax; default for predict/evaluate

    def __post_init__(self):
        check(self)

    def epochs_for_stage(self, stage: int) -> int:
        """Epochs stage `stage` trains (same for every shard)."""
        del stage  # both schedules are flat over stages
        e, r = self.train.epochs, self.partition.slices
        if self.train.schedule == "uniform":
            return e
        return max(1, math.ceil(2 * e / (r + 1)))

    def keeps_checkpoint(self, stage: int) -> bool:
        k, last = self.train.checkpoint_every, self.partition.slices - 1
        return stage == last or (stage + 1) % k == 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of everything that changes what training computes."""
        d = self.to_dict()
        d.pop("aggregation")  # chosen at prediction time; does not change the models
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **sections) -> Config:
        """`cfg.replace(partition={"shards": 8})` -> new config with those fields changed."""
        new = {}
        for name, changes in sections.items():
            cur = getattr(self, name)
            new[name] = dataclasses.replace(cur, **changes) if dataclasses.is_dataclass(cur) else changes
        return dataclasses.replace(self, **new)


AGGREGATIONS = ("vote", "softmax")


def check(cfg: Config) -> None:
    p, t = cfg.partition, cfg.train
    if p.shards < 1 or p.slices < 1:
        raise SisaError(f"shards and slices must be >= 1, got shards={p.shards}, slices={p.slices}")
    if p.strategy not in ("uniform", "stratified", "grouped"):
        raise SisaError(f"unknown partition strategy {p.strategy!r} (uniform, stratified, grouped)")
    if t.epochs < 1 or t.batch_size < 1 or not t.learning_rate > 0 or t.checkpoint_every < 1:
        raise SisaError("epochs, batch_size and checkpoint_every must be >= 1 and learning_rate > 0")
    if t.schedule not in ("budget", "uniform"):
        raise SisaError(f"unknown epoch schedule {t.schedule!r} (budget, uniform)")
    if t.optimizer not in ("adam", "adamw", "sgd"):
        raise SisaError(f"unknown optimizer {t.optimizer!r} (adam, adamw, sgd)")
    if cfg.model.name not in ("mlp", "cnn"):
        raise SisaError(f"unknown model {cfg.model.name!r} (mlp, cnn)")
    if cfg.aggregation not in AGGREGATIONS:
        raise SisaError(f"unknown aggregation {cfg.aggregation!r} ({', '.join(AGGREGATIONS)})")


def from_dict(d: dict) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys."""
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name not in d:
            continue
        value = d[f.name]
        if isinstance(value, dict):
            cls = f.type if isinstance(f.type, type) else _resolve(f.type)
            value = _section(cls, f.name, value)
        sections[f.name] = value
    unknown = set(d) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise SisaError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    return Config(**sections)


def _resolve(name: str) -> type:
    return globals()[name]


def _section(cls: type, name: str, values: dict):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise SisaError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if _is_tuple(hints[key]) and isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return cls(**out)


def _is_tuple(hint) -> bool:
    return typing.get_origin(hint) is tuple or (
        isinstance(hint, types.UnionType) and any(typing.get_origin(a) is tuple for a in hint.__args__)
    )


def load(path: str | Path) -> Config:
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise SisaError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise SisaError(f"config file {path} is not valid TOML: {e}") from None
    try:
        return from_dict(d)
    except TypeError as e:
        raise SisaError(f"config file {path}: {e}") from None


def dumps(cfg: Config) -> str:
    import tomli_w

    def clean(d):  # TOML has no null: drop unset optionals
        return {k: clean(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    return tomli_w.dumps(clean(cfg.to_dict()))
