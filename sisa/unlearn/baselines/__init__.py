"""Approximate unlearning baselines, all with one signature:

    unlearn(trainer, params, forget, retain, budget=None, key=None, **hparams) -> Result

`trainer` is the `ShardTrainer` the model was trained with (`Workdir.open(root).trainer`),
`params` its trained weights, `forget`/`retain` are (x, y) arrays of raw features, `budget` a
`Budget` (per-method default: `BASELINES[name].default_budget`), `key` a JAX key.
Hyper-parameters and their defaults: `BASELINES[name].defaults`. `search` picks
hyper-parameters on a validation split (never the test set).
"""

from sisa.unlearn.baselines import (
    bad_teacher, fine_tune, fisher, grad_ascent, grad_diff, l1_sparse, npo, random_labels, retrain, salun, scrub,
)
from sisa.unlearn.baselines.common import Budget, Result
from sisa.unlearn.baselines.search import search, validation_numbers

BASELINES = {
    "retrain": retrain.unlearn,
    "fine_tune": fine_tune.unlearn,
    "grad_ascent": grad_ascent.unlearn,
    "grad_diff": grad_diff.unlearn,
    "npo": npo.unlearn,
    "random_labels": random_labels.unlearn,
    "scrub": scrub.unlearn,
    "bad_teacher": bad_teacher.unlearn,
    "l1_sparse": l1_sparse.unlearn,
    "salun": salun.unlearn,
    "fisher": fisher.unlearn,
}

__all__ = ["BASELINES", "Budget", "Result", "search", "validation_numbers"]
