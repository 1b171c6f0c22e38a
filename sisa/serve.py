"""Serve the ensemble: load each shard's final checkpoint, predict, evaluate.

Only shards whose final-stage checkpoint exists are served. A pending shard (its retraining
not finished) or an empty one (all its data deleted) is left out of the aggregate and named.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sisa.aggregate import aggregate
from sisa.errors import SisaError
from sisa.training.ensemble import ensemble_for, stack


@dataclasses.dataclass
class Constituents:
    shards: list[int]  # served shards, in order
    params: dict  # stacked over served shards
    pending: list[int]  # shards with no final checkpoint
    empty: list[int]  # shards that have seen no data


def constituents(wd) -> Constituents:
    """Every shard that is safe to serve: final checkpoint present, intact, and its lineage free
    of every id the ledger has been asked to forget (committed or not)."""
    from sisa.checkpoint import CheckpointCorrupted
    from sisa.deletion_ledger import Ledger

    slices = wd.config.partition.slices
    forgotten = set(Ledger(wd.ledger_path).forgotten())
    served, params, pending, empty = [], [], [], []
    for ckpt in wd.checkpoints:
        if ckpt.latest() != slices - 1:
            pending.append(ckpt.shard)
            continue
        try:
            state, lineage = ckpt.restore(slices - 1)
        except CheckpointCorrupted:
            pending.append(ckpt.shard)
            continue
        if forgotten.intersection(lineage["ids"]):
            pending.append(ckpt.shard)  # its retraining has not finished yet
            continue
        if not lineage["ids"]:
            empty.append(ckpt.shard)
            continue
        served.append(ckpt.shard)
        params.append(state["params"])
    if not served:
        raise SisaError(f"no shard of {wd.root} has a final checkpoint to serve (pending: {pending}, empty: {empty})")
    return Constituents(served, stack(params), pending, empty)


def shard_probabilities(wd, x: np.ndarray, members: Constituents | None = None) -> tuple[Constituents, np.ndarray]:
    members = members or constituents(wd)
    x = np.asarray(x)
    shape = tuple(wd.manifest["dataset"]["input_shape"])
    if x.shape[1:] != shape:
        if x.ndim >= 1 and x.shape[1:] and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
            x = x.reshape(len(x), *shape)
        else:
            raise SisaError(f"inputs have shape {x.shape[1:]} per example; this model takes {shape}")
    return members, ensemble_for(wd.trainer).probabilities(members.params, x)


def predict(wd, x: np.ndarray, aggregation: str | None = None) -> dict:
    members, probs = shard_probabilities(wd, x)
    p, labels = aggregate(probs, aggregation or wd.config.aggregation)
    return {
        "labels": labels.tolist(),
        "probabilities": p.tolist(),
        "aggregation": aggregation or wd.config.aggregation,
        "shards": members.shards,
        "left_out": {"pending": members.pending, "empty": members.empty},
    }


def evaluate(wd, aggregation: str | None = None) -> dict:
    x, y = wd.test_split()
    members, probs = shard_probabilities(wd, x)
    method = aggregation or wd.config.aggregation
    out = {
        "aggregation": method,
        "test_examples": len(y),
        "per_shard": {s: float((probs[i].argmax(-1) == y).mean()) for i, s in enumerate(members.shards)},
        "left_out": {"pending": members.pending, "empty": members.empty},
    }
    for name in ("vote", "softmax"):
        out[f"accuracy_{name}"] = float((aggregate(probs, name)[1] == y).mean())
    out["accuracy"] = out[f"accuracy_{method}"]
    return out
