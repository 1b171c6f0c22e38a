"""Hyper-parameter search for the baselines, on a validation split and never on the test set.

An approximate method has no certificate, so its hyper-parameters trade forgetting against
utility. `search` runs a grid and scores each unlearned model on `validation`: examples that
no model ever trained on and that are not the test split (`compare` holds them out of the
training data). The objective needs no retrained model, and neither doing nothing nor wrecking
the model can win it:

    utility   = accuracy on the validation examples of the classes the retain set still has
    eligible  = utility >= the original model's utility - `utility_margin`
    progress  = how far the forget set moved from where the original model left it towards
                "looks like unseen data" (1 = all the way, 0 = not at all, < 0 = overshot):
                random forget sets:  1 - |gap| / |gap of the original|, where gap = mean loss on
                    the forget set - mean loss on validation examples of its classes (a member's
                    loss is lower; after forgetting it is just more unseen data: gap 0; a larger
                    loss than unseen data is over-forgetting, which a membership attack sees too)
                whole classes gone:  1 - leak / leak of the original, where leak = accuracy on the
                    validation examples of the classes the retain set no longer has (a model
                    retrained without a class has no example to learn it from: it rarely
                    predicts it, though on far-off inputs it can)
    pick      = the eligible point of highest progress (ties: the higher utility, then the earlier
                point); if no point is eligible, the one of highest utility, flagged `eligible: False`.

A no-op scores progress 0, so any eligible point that moves the forget set towards unseen data
beats it; a point that destroys utility is not eligible. `trials` keeps every point's numbers:
the report draws each method's whole forgetting-utility curve, not only the pick.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from sisa.errors import SisaError
from sisa.unlearn.baselines.common import BUDGET_FIELDS, Budget

UTILITY_MARGIN = 0.02


def validation_numbers(trainer, params, forget, validation, *, retain_classes) -> dict:
    """{"utility", "gap", "leak"} of `params` on the validation split (see the module doc)."""
    from sisa.eval import metrics

    (xf, yf), (xv, yv) = forget, validation
    yf, yv = np.asarray(yf), np.asarray(yv)
    lp_f, lp_v = metrics.log_probs(trainer, params, xf), metrics.log_probs(trainer, params, xv)
    same_classes = np.isin(yv, np.unique(yf))
    gap = float(metrics.losses(lp_f, yf).mean() - metrics.losses(lp_v[same_classes], yv[same_classes]).mean())
    kept = np.isin(yv, retain_classes)
    utility = metrics.accuracy(lp_v[kept], yv[kept])
    leak = metrics.accuracy(lp_v[~kept], yv[~kept]) if (~kept).any() else float("nan")
    return {"utility": utility, "gap": gap, "leak": leak}


def progress(numbers: dict, original: dict) -> float:
    """Forgetting progress of a candidate against the original model's numbers (module doc)."""
    if not np.isnan(original["leak"]):  # a class is gone
        return 1.0 - numbers["leak"] / original["leak"] if original["leak"] > 0 else float("nan")
    return 1.0 - abs(numbers["gap"]) / abs(original["gap"]) if original["gap"] != 0 else float("nan")


def pick(trials: list[dict]) -> int:
    """Index of the chosen trial (module doc): eligible first, then progress, utility, order."""
    def key(i):
        t = trials[i]
        return (t["eligible"], np.nan_to_num(t["progress"], nan=-np.inf) if t["eligible"] else t["utility"],
                t["utility"], -i)

    return max(range(len(trials)), key=key)


def grid_points(grid: dict) -> list[dict]:
    """{"a": [1, 2], "b": [3]} -> [{"a": 1, "b": 3}, {"a": 2, "b": 3}]."""
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[k] for k in names))]


def split(point: dict, budget: Budget) -> tuple[Budget, dict]:
    """A grid point's budget fields applied to `budget`; the rest are hyper-parameters."""
    changes = {k: v for k, v in point.items() if k in BUDGET_FIELDS}
    return dataclasses.replace(budget, **changes), {k: v for k, v in point.items() if k not in BUDGET_FIELDS}


def search(method, trainer, params, forget, retain, validation, grid: dict, *, budget: Budget | None = None,
           hparams: dict | None = None, key=None, utility_margin: float = UTILITY_MARGIN) -> dict:
    """Run `method` (a name in BASELINES or an unlearn function) at every point of `grid`
    (hyper-parameter or Budget field -> values), on top of `budget` and `hparams`.

    Returns {"best": the chosen grid point, "eligible": whether it kept utility within the margin,
    "original": the original model's validation numbers, "trials": [{"point", "utility", "gap",
    "leak", "progress", "eligible", "seconds"}...]} (see the module doc). `validation` must be
    examples no model trained on, and not the test set.
    """
    from sisa.unlearn.baselines import BASELINES

    fn = BASELINES[method] if isinstance(method, str) else method
    known = set(fn.defaults) | set(BUDGET_FIELDS)
    unknown = set(grid) - known
    if unknown:
        raise SisaError(f"search grid names unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    budget = budget or fn.default_budget
    retain_classes = np.unique(np.asarray(retain[1]))
    original = validation_numbers(trainer, params, forget, validation, retain_classes=retain_classes)
    trials = []
    for point in grid_points(grid) or [{}]:
        b, hp = split(point, budget)
        result = fn(trainer, params, forget, retain, b, key, **{**(hparams or {}), **hp})
        numbers = validation_numbers(trainer, result.params, forget, validation, retain_classes=retain_classes)
        trials.append({"point": point, **numbers, "progress": progress(numbers, original),
                       "eligible": bool(numbers["utility"] >= original["utility"] - utility_margin),
                       "seconds": result.seconds})
    best = pick(trials)
    return {"best": trials[best]["point"], "eligible": trials[best]["eligible"], "original": original,
            "trials": trials}
