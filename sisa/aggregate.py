"""Combine the constituent models' outputs into one prediction."""

from __future__ import annotations

import numpy as np

from sisa.errors import SisaError


def vote(probs: np.ndarray) -> np.ndarray:
    """Label vote: [S, N, C] softmax outputs -> [N, C] vote shares.

    Ties go to the lowest class index (argmax takes the first maximum), the same on every run.
    """
    s, _, c = probs.shape
    votes = np.eye(c, dtype=np.float32)[probs.argmax(axis=-1)]  # [S, N, C]
    return votes.sum(axis=0) / s


def softmax_mean(probs: np.ndarray) -> np.ndarray:
    """Mean of the constituents' softmax outputs: [S, N, C] -> [N, C]."""
    return probs.mean(axis=0)


AGGREGATORS = {"vote": vote, "softmax": softmax_mean}


def aggregate(probs: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (probabilities [N, C], labels [N])."""
    if method not in AGGREGATORS:
        raise SisaError(f"unknown aggregation {method!r} ({', '.join(AGGREGATORS)})")
    if probs.shape[0] == 0:
        raise SisaError("no constituent model is available to aggregate")
    p = AGGREGATORS[method](probs)
    return p, p.argmax(axis=-1)
