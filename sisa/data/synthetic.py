"""Synthetic data sets for benchmarks at scale (no download, fully determined by a seed).

`purchase_like` imitates the shape of Purchase-100 (Shokri et al., the shopping-basket set
used in the SISA paper): binary feature vectors, 100 classes. Each class has a prototype, a
random binary vector (each bit 1 with probability `density`); an example of class c is c's
prototype with every bit flipped independently with probability `flip`. Labels are drawn
uniformly. The train split has ids 0..n-1; the test split (`test` examples, default n // 10)
is drawn from the same distribution with the same prototypes.

Everything is generated in fixed chunks of rows from one seeded generator, so the same
arguments give the same bytes (and the same `Dataset.fingerprint()`) on every machine,
without ever holding more than one chunk of floats in memory (200,000 x 600 uint8 = 120 MB).
"""

from __future__ import annotations

import numpy as np

from sisa.data.datasets import Dataset

_CHUNK = 8192  # rows drawn per call; part of the definition (changing it changes the data)


def _draw(rng: np.random.Generator, prototypes: np.ndarray, n: int, flip: float) -> tuple[np.ndarray, np.ndarray]:
    classes, features = prototypes.shape
    y = rng.integers(0, classes, n).astype(np.int32)
    x = np.empty((n, features), np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        flips = rng.random((stop - start, features), dtype=np.float32) < flip
        x[start:stop] = prototypes[y[start:stop]] ^ flips
    return x, y


def purchase_like(
    n: int = 200_000,
    features: int = 600,
    classes: int = 100,
    seed: int = 0,
    *,
    flip: float = 0.15,
    density: float = 0.5,
    test: int | None = None,
) -> Dataset:
    """A Purchase-100-like set: `n` train rows of `features` uint8 bits, `classes` classes.

    Features are 0/1 (uint8, scale 1.0). See the module docstring for the generative model.
    """
    if n < 1 or features < 1 or classes < 1:
        raise ValueError(f"n, features and classes must be >= 1, got {n}, {features}, {classes}")
    if not 0.0 <= flip <= 1.0 or not 0.0 <= density <= 1.0:
        raise ValueError(f"flip and density must lie in [0, 1], got {flip}, {density}")
    test = max(1, n // 10) if test is None else test
    rng = np.random.default_rng(seed)
    prototypes = (rng.random((classes, features)) < density).astype(np.uint8)
    x, y = _draw(rng, prototypes, n, flip)
    x_test, y_test = _draw(rng, prototypes, test, flip)
    return Dataset(
        name="purchase-synth",
        x=x,
        y=y,
        ids=np.arange(n, dtype=np.int64),
        x_test=x_test,
        y_test=y_test,
        num_classes=classes,
        scale=1.0,
    )
