"""Every knob of a run as frozen dataclasses; load/save TOML.

A run's config is saved in its workdir; every later command checks it against the
workdir's so that a deletion retrains with exactly the program that trained the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from pathlib import Path

from sisa.data.datasets import MAX_CLASSES
from sisa.errors import SisaError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist5k"  # registry name or path
    num_classes: int | None = None  # default: max label + 1
    # Text data (a `text` column, .txt or .jsonl; sisa.data.text): what to learn, how to tokenize.
    task: str = "auto"  # classify | lm | auto: classify when the data has labels, else lm
    context: int = 128  # tokens per document the model sees (longer documents are truncated)
    tokenizer: str = "bytes"  # "bytes" (no vocabulary learned from the data) or a `tokenizers` JSON file
    labels: tuple[str, ...] = ()  # string label names, in class order (default: sorted, found in the data)


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    shards: int = 5
    slices: int = 4
    strategy: str = "uniform"  # uniform | stratified | grouped
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # mlp | cnn | resnet18 | transformer | transformer_lm, or "package.module:Class" (sisa.models: the contract)
    name: str = "mlp"
    hidden: tuple[int, ...] = (128,)  # MLP hidden widths / CNN channels / transformer width per block
    dropout: float = 0.0
    # Extra keyword arguments of the model's constructor ([model.options] in TOML), as sorted
    # (name, value) pairs so that the config stays hashable.
    options: tuple[tuple[str, typing.Any], ...] = ()
    base: str = ""  # a frozen base model to train adapters on (sisa.models.adapters); "" = none


class ScheduleWarning(UserWarning):
    """A config whose epoch schedule trains far more than its budget of epochs."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    # Epochs per stage. "budget": the paper's fixed budget, spread so that all stages
    # together cost `epochs` passes over the shard, each stage rounded up to whole epochs
    # (ceil(2E/(R+1)); at R > 2E that is 1, so R stages cost about R/2 passes, not E);
    # "fractional": the same budget to the step: each stage trains 2E/(R+1) epochs' worth of
    # its examples, rounded up to whole batches, its last epoch cut short (`stage_steps`);
    # "uniform": every stage trains `epochs` epochs.
    schedule: str = "budget"
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | sgd | adamw
    seed: int = 0
    # Keep the checkpoint of every k-th stage (and always the last). k > 1 saves disk; a
    # deletion then restarts from the latest kept stage before it, retraining more.
    checkpoint_every: int = 1
    # Learning rate within each stage: "constant", or "cosine": every stage starts at
    # `learning_rate` and decays to 0 over its own steps (epochs_for_stage x the batches of the
    # shard's slices 0..stage), a function of the config and the shard's own data only, so a
    # deletion's retraining recomputes it exactly.
    lr_schedule: str = "constant"
    weight_decay: float = 1e-4  # adamw's decoupled weight decay (other optimizers: none)
    label_smoothing: float = 0.0  # cross-entropy against (1 - a) one-hot + a / classes
    adapter: str = "none"  # none | lora: train low-rank adapters on model.base, the base frozen
    lora_rank: int = 8


# Knobs added later: left out of `Config.digest` while at these defaults, so a config that does
# not use them keeps the digest it always had (tests/test_recipe.py pins them).
_DIGEST_OMITS_AT_DEFAULT = {
    "data": {"task": "auto", "context": 128, "tokenizer": "bytes", "labels": []},
    "model": {"options": [], "base": ""},
    "train": {"lr_schedule": "constant", "weight_decay": 1e-4, "label_smoothing": 0.0, "adapter": "none",
              "lora_rank": 8},
}


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
        """Epochs stage `stage` runs (same for every shard); under "fractional" the last one
        stops after the stage's `stage_steps`."""
        del stage  # every schedule is flat over stages
        e, r = self.train.epochs, self.partition.slices
        if self.train.schedule == "uniform":
            return e
        return max(1, math.ceil(2 * e / (r + 1)))

    def stage_steps(self, n):
        """Optimizer steps of a stage over `n` examples (its shard's slices 0..stage; an int, or
        a traced int32: integer arithmetic only, so host and program agree). "fractional": the
        whole epochs' batches, then the fraction's examples rounded up to whole batches."""
        b = self.train.batch_size
        batches = (n + b - 1) // b
        if self.train.schedule != "fractional":
            return self.epochs_for_stage(0) * batches
        r = self.partition.slices
        whole, part = divmod(2 * self.train.epochs, r + 1)  # 2E/(R+1) = whole + part/(R+1)
        return whole * batches + (part * n + (r + 1) * b - 1) // ((r + 1) * b)

    def stage_examples(self, n: int, epoch: int | None = None) -> int:
        """Examples a stage over `n` examples visits in all (or in epoch `epoch`): whole epochs
        visit `n`, a cut one its full batches only."""
        b = self.train.batch_size
        batches = -(-n // b)
        steps = self.stage_steps(n)
        if epoch is not None:
            steps = min(max(steps - epoch * batches, 0), batches)
        whole, rest = divmod(steps, batches) if batches else (0, 0)
        return whole * n + rest * b

    def passes(self) -> float:
        """Passes over each shard that all stages make together (with equal slices): E under
        "fractional" (up to a batch a stage), ceil(2E/(R+1)) (R+1)/2 under "budget", E (R+1)/2
        under "uniform"."""
        e, r = self.train.epochs, self.partition.slices
        return e if self.train.schedule == "fractional" else self.epochs_for_stage(0) * (r + 1) / 2

    def schedule_warning(self) -> str | None:
        """Why the "budget" schedule overspends this config's budget by more than half, or None."""
        e, r = self.train.epochs, self.partition.slices
        if self.train.schedule != "budget" or self.passes() <= 1.5 * e:
            return None
        return (f"train.schedule \"budget\" at R={r}, E={e} makes {self.passes():g} passes over each shard, "
                f"{self.passes() / e:.1f}x the budget of {e} (every stage rounds up to a whole epoch); "
                "\"fractional\" (--schedule fractional) spends the budget to the step")

    def keeps_checkpoint(self, stage: int, stages: int | None = None) -> bool:
        """Whether `stage` of a run of `stages` stages (default: its slices) keeps its checkpoint."""
        k, last = self.train.checkpoint_every, (stages or self.partition.slices) - 1
        return stage == last or (stage + 1) % k == 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"]["options"] = {k: _plain(v) for k, v in self.model.options}
        d["data"]["labels"] = list(self.data.labels)
        return d

    def digest(self) -> str:
        """Hash of everything that changes what training computes."""
        d = self.to_dict()
        d.pop("aggregation")  # chosen at prediction time; does not change the models
        for section, defaults in _DIGEST_OMITS_AT_DEFAULT.items():
            for key, default in defaults.items():
                if d[section][key] == default or (default == [] and d[section][key] == {}):
                    del d[section][key]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **sections) -> Config:
        """`cfg.replace(partition={"shards": 8})` -> new config with those fields changed."""
        new = {}
        for name, changes in sections.items():
            cur = getattr(self, name)
            new[name] = dataclasses.replace(cur, **changes) if dataclasses.is_dataclass(cur) else changes
        return dataclasses.replace(self, **new)


AGGREGATIONS = ("vote", "softmax")
SEED_LIMIT = 2**32  # seeds lie in [0, 2**32): what numpy's and JAX's generators take

# field -> smallest and largest accepted integer
INT_RANGES = {
    "data.num_classes": (2, MAX_CLASSES),
    "partition.shards": (1, 2**20),
    "partition.slices": (1, 2**16),
    "partition.seed": (0, SEED_LIMIT - 1),
    "train.epochs": (1, 10**6),
    "train.batch_size": (1, 2**24),
    "train.seed": (0, SEED_LIMIT - 1),
    "train.checkpoint_every": (1, 2**16),
    "train.lora_rank": (1, 2**16),
    "data.context": (2, 2**20),
}
# field -> (what it is called in a message, accepted values)
_CHOICES = {
    "partition.strategy": ("partition strategy", ("uniform", "stratified", "grouped")),
    "data.task": ("task", ("auto", "classify", "lm")),
    "train.adapter": ("adapter", ("none", "lora")),
    "train.schedule": ("epoch schedule", ("budget", "fractional", "uniform")),
    "train.optimizer": ("optimizer", ("adam", "adamw", "sgd")),
    "train.lr_schedule": ("learning-rate schedule", ("constant", "cosine")),
    "aggregation": ("aggregation", AGGREGATIONS),
}
MAX_WIDTH = 2**16  # one entry of model.hidden
BUILTIN_MODELS = ("mlp", "cnn", "resnet18", "transformer", "transformer_lm")
_USER_MODEL = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _plain(v):
    """A TOML-able copy of an option value (tuples back to lists)."""
    return [_plain(a) for a in v] if isinstance(v, tuple) else v


def _frozen(v):
    """A hashable copy of an option value (lists to tuples; tables refused)."""
    if isinstance(v, dict):
        raise SisaError("model.options values must be numbers, strings, booleans or lists of them, not tables")
    return tuple(_frozen(a) for a in v) if isinstance(v, (list, tuple)) else v


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(cfg: Config) -> None:
    """Refuse any field of the wrong type or out of range, naming it and what is accepted."""
    for name, cls in (("data", DataConfig), ("partition", PartitionConfig), ("model", ModelConfig),
                      ("train", TrainConfig)):
        if not isinstance(getattr(cfg, name), cls):
            raise SisaError(f"config [{name}] must be a table of settings, got {_shown(getattr(cfg, name))}")
    fields = {"aggregation": cfg.aggregation}
    for section in ("data", "partition", "model", "train"):
        part = getattr(cfg, section)
        fields |= {f"{section}.{f.name}": getattr(part, f.name) for f in dataclasses.fields(part)}
    for key, (lo, hi) in INT_RANGES.items():
        v = fields[key]
        if key == "data.num_classes" and v is None:
            continue
        if not _is_int(v) or not lo <= v <= hi:
            raise SisaError(f"{key} must be an integer from {lo} to {hi}, got {_shown(v)}")
    for key, (what, choices) in _CHOICES.items():
        if not isinstance(fields[key], str) or fields[key] not in choices:
            raise SisaError(f"unknown {what} {_shown(fields[key])} ({key}: one of {', '.join(choices)})")
    name = cfg.model.name
    if not isinstance(name, str) or not (name in BUILTIN_MODELS or _USER_MODEL.fullmatch(name)):
        raise SisaError(f"unknown model {_shown(name)} (model.name: one of {', '.join(BUILTIN_MODELS)}, or your own "
                        f"Flax NNX module as \"package.module:Class\")")
    if not isinstance(cfg.data.tokenizer, str) or not cfg.data.tokenizer:
        raise SisaError(f"data.tokenizer must be \"bytes\" or the path of a tokenizers JSON file, got "
                        f"{_shown(cfg.data.tokenizer)}")
    if not isinstance(cfg.model.base, str):
        raise SisaError(f"model.base must be a path (a sisa workdir or an orbax checkpoint), got {_shown(cfg.model.base)}")
    labels = cfg.data.labels
    if not isinstance(labels, tuple) or not all(isinstance(v, str) and v for v in labels) or len(set(labels)) != len(labels):
        raise SisaError(f"data.labels must be a list of distinct, non-empty label names, got {_shown(labels)}")
    options = cfg.model.options
    if not isinstance(options, tuple) or not all(isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str)
                                                  for o in options):
        raise SisaError(f"model.options must be a table of keyword arguments, got {_shown(options)}")
    if (cfg.train.adapter == "lora") != bool(cfg.model.base):
        raise SisaError("train.adapter = \"lora\" and model.base go together: adapters are trained on a frozen base "
                        f"model (got train.adapter = {cfg.train.adapter!r}, model.base = {cfg.model.base!r})")
    if not isinstance(cfg.data.dataset, str) or not cfg.data.dataset:
        raise SisaError(f"data.dataset must be a data set name or path, got {_shown(cfg.data.dataset)}")
    hidden = cfg.model.hidden
    if not isinstance(hidden, tuple) or len(hidden) > 64 or not all(_is_int(h) and 1 <= h <= MAX_WIDTH for h in hidden):
        raise SisaError(f"model.hidden must be at most 64 layer widths (a TOML list, a Python tuple), each an "
                        f"integer from 1 to {MAX_WIDTH}, got {_shown(hidden)}")
    d = cfg.model.dropout
    if not _is_number(d) or not 0 <= d < 1:
        raise SisaError(f"model.dropout must be a number in [0, 1), got {_shown(d)}")
    lr = cfg.train.learning_rate
    if not _is_number(lr) or not (math.isfinite(lr) and lr > 0):
        raise SisaError(f"train.learning_rate must be a finite number > 0, got {_shown(lr)}")
    wd = cfg.train.weight_decay
    if not _is_number(wd) or not (math.isfinite(wd) and wd >= 0):
        raise SisaError(f"train.weight_decay must be a finite number >= 0, got {_shown(wd)}")
    ls = cfg.train.label_smoothing
    if not _is_number(ls) or not 0 <= ls < 1:
        raise SisaError(f"train.label_smoothing must be a number in [0, 1), got {_shown(ls)}")


def from_dict(d: dict) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys."""
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name not in d:
            continue
        value = d[f.name]
        if isinstance(value, dict) and f.name != "aggregation":  # a table of settings; `check` refuses any other value
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
        if cls is ModelConfig and key == "options":
            if not isinstance(value, dict):
                raise SisaError(f"model.options must be a table of keyword arguments, got {_shown(value)}")
            value = tuple(sorted((k, _frozen(v)) for k, v in value.items()))
        elif _is_tuple(hints[key]) and isinstance(value, list):
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
    except OSError as e:
        raise SisaError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SisaError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise SisaError(f"config file {path} is not valid TOML: {e}") from None
    try:
        return from_dict(d)
    except (SisaError, TypeError) as e:
        raise SisaError(f"config file {path}: {e}") from None


def dumps(cfg: Config) -> str:
    import tomli_w

    def clean(d):  # TOML has no null: drop unset optionals (and empty option tables)
        return {k: clean(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None and v != {}}

    return tomli_w.dumps(clean(cfg.to_dict()))
