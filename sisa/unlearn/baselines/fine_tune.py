"""Fine-tuning on the retain set only ("FT"; Golatkar et al. 2020, Warnecke et al. 2023).

Continued training on D \\ K lets the model drift away from what it memorised of K
(catastrophic forgetting). Budget epochs: passes over the retain set.
"""

from __future__ import annotations

from sisa.unlearn.baselines.common import Budget, baseline, descend_cross_entropy, run_steps, stream


_update = descend_cross_entropy("retain")


@baseline(Budget(epochs=2, learning_rate=1e-3))
def unlearn(trainer, params, forget, retain, budget, key):
    streams = {"retain": stream(*retain, budget.batch_size)}
    return run_steps(_update, trainer, params, streams, budget.steps_for(len(retain[0])), budget, {}, key)
