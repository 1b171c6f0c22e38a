"""LiRA's shadow models: the target's own architecture trained on random halves of a data pool.

The pool is the benchmark's whole data set, training and test splits together, so that every
example the attacks score (forget sets and same-class non-members) has shadows that trained on
it and shadows that did not. A shadow is built exactly as its target is (`sisa.train` with the
target's engine config: one shard and one slice for the monolithic model, S shards for a SISA
ensemble), each from its own seed; its output on an example is the aggregated prediction, as
the target's is.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from sisa.data.datasets import Dataset


@dataclasses.dataclass(frozen=True)
class Shadows:
    """Logit confidences of `n` shadows on the pool and which shadow trained on which example."""

    phi: np.ndarray  # [n, P] logit-scaled confidence of the true label (sisa.eval.mia.logit_confidence)
    inside: np.ndarray  # [n, P] bool: shadow i trained on pool example p

    def columns(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.phi[:, index], self.inside[:, index]


def pool(ds: Dataset) -> Dataset:
    """The training and test splits as one set of examples: ids 0..N-1 are the training split's
    rows, N..N+T-1 the test split's (`train_index` / `test_index` map back)."""
    x = np.concatenate([ds.x, ds.x_test])
    y = np.concatenate([ds.y, ds.y_test]).astype(np.int32)
    empty = np.zeros((0, *ds.x.shape[1:]), ds.x.dtype)
    return Dataset(f"{ds.name}-pool", x, y, np.arange(len(x), dtype=np.int64), empty, np.zeros(0, np.int32),
                   ds.num_classes, scale=ds.scale)


def train(engine, ds: Dataset, n: int, *, seed: int, work: Path, outputs, bar=None) -> Shadows:
    """`n` shadows of `engine` (a sisa Config) on random halves of `pool(ds)`. `outputs(workdir,
    x)` gives a trained run's [P, C] log-probabilities (the aggregated ensemble's for S > 1)."""
    import sisa
    from sisa.eval import mia

    everything = pool(ds)
    inside = mia.balanced_masks(n, len(everything.ids), np.random.default_rng([seed, 77]))
    phi = np.empty(inside.shape, np.float64)
    for i in range(n):
        root = Path(work) / f"shadow{i}"
        cfg = engine.replace(train={"seed": 10_000 + i}, partition={"seed": 10_000 + i})
        sisa.train(root, cfg, dataset=everything.without(everything.ids[~inside[i]]), progress=False)
        phi[i] = mia.logit_confidence(outputs(root, everything.x), everything.y)
        shutil.rmtree(root, ignore_errors=True)
        if bar is not None:
            bar.update()
    return Shadows(phi, inside)
