"""Hyper-parameter search for the baselines, on a validation split and never on the test set.

An approximate method has no certificate, so its hyper-parameters trade forgetting against
utility. `search` runs a grid and scores each unlearned model on `validation`: examples that
no model ever trained on and that are not the test split (`compare` holds them out of the
training data). The score needs no retrained model:

    utility = accuracy on the validation examples of the classes the retain set still has
    mia_auc = AUC of the loss-threshold attack: forget set vs the validation examples of the
              forget set's classes (same distribution, never trained on)
    leak    = accuracy on the validation examples of classes the retain set no longer has
    score   = utility - weight * |mia_auc - 0.5| - leak

since after perfect unlearning the forget set is just more unseen data from its classes, and
a model retrained without any example of a class cannot predict it (`leak` is 0 unless a
whole class is forgotten).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from sisa.errors import SisaError
from sisa.unlearn.baselines.common import BUDGET_FIELDS, Budget


def validation_score(trainer, params, forget, validation, *, retain_classes=None, weight: float = 1.0) -> dict:
    """{"utility", "mia_auc", "leak", "score"} of unlearned `params` (see the module doc)."""
    from sisa.eval import metrics, mia

    (xf, yf), (xv, yv) = forget, validation
    yf, yv = np.asarray(yf), np.asarray(yv)
    lp_f, lp_v = metrics.log_probs(trainer, params, xf), metrics.log_probs(trainer, params, xv)
    reference = np.isin(yv, np.unique(yf))
    auc = mia.loss_attack(metrics.losses(lp_f, yf), metrics.losses(lp_v[reference], yv[reference]))
    kept = np.ones(len(yv), bool) if retain_classes is None else np.isin(yv, retain_classes)
    utility = metrics.accuracy(lp_v[kept], yv[kept])
    leak = metrics.accuracy(lp_v[~kept], yv[~kept]) if (~kept).any() else 0.0
    return {"utility": utility, "mia_auc": auc, "leak": leak, "score": utility - weight * abs(auc - 0.5) - leak}


def grid_points(grid: dict) -> list[dict]:
    """{"a": [1, 2], "b": [3]} -> [{"a": 1, "b": 3}, {"a": 2, "b": 3}]."""
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[k] for k in names))]


def split(point: dict, budget: Budget) -> tuple[Budget, dict]:
    """A grid point's budget fields applied to `budget`; the rest are hyper-parameters."""
    changes = {k: v for k, v in point.items() if k in BUDGET_FIELDS}
    return dataclasses.replace(budget, **changes), {k: v for k, v in point.items() if k not in BUDGET_FIELDS}


def search(method, trainer, params, forget, retain, validation, grid: dict, *, budget: Budget | None = None,
           hparams: dict | None = None, key=None, weight: float = 1.0) -> dict:
    """Run `method` (a name in BASELINES or an unlearn function) at every point of `grid`
    (hyper-parameter or Budget field -> values), on top of `budget` and `hparams`.

    Returns {"best": the best grid point, "trials": [{"point", "utility", "mia_auc", "leak", "score",
    "seconds"}...]}; ties go to the earlier point (grid keys sorted, values in given order).
    `validation` must be examples no model trained on, and not the test set.
    """
    from sisa.unlearn.baselines import BASELINES

    fn = BASELINES[method] if isinstance(method, str) else method
    known = set(fn.defaults) | set(BUDGET_FIELDS)
    unknown = set(grid) - known
    if unknown:
        raise SisaError(f"search grid names unknown hyper-parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    budget = budget or fn.default_budget
    retain_classes = np.unique(np.asarray(retain[1]))
    trials = []
    for point in grid_points(grid) or [{}]:
        b, hp = split(point, budget)
        result = fn(trainer, params, forget, retain, b, key, **{**(hparams or {}), **hp})
        score = validation_score(trainer, result.params, forget, validation, retain_classes=retain_classes,
                                 weight=weight)
        trials.append({"point": point, **score, "seconds": result.seconds})
    best = max(range(len(trials)), key=lambda i: (np.nan_to_num(trials[i]["score"], nan=-np.inf), -i))
    return {"best": trials[best]["point"], "trials": trials}
