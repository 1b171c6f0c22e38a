"""Random labels ("RL"; Golatkar et al. 2020, Graves et al. 2021 "Amnesiac").

Every forget example gets a random wrong label (drawn once from the key); the model is then
fine-tuned on the union of the relabelled forget set and the retain set.
Budget epochs: passes over forget ∪ retain.
"""

from __future__ import annotations

from sisa.unlearn.baselines.common import Budget, baseline, descend_cross_entropy, random_labels, run_steps, union


_update = descend_cross_entropy("union")


@baseline(Budget(epochs=1, learning_rate=1e-3))
def unlearn(trainer, params, forget, retain, budget, key):
    labels = random_labels(forget[1], trainer.num_classes, key)
    streams = {"union": union(forget, retain, budget.batch_size, labels)}
    steps = budget.steps_for(len(forget[0]) + len(retain[0]))
    return run_steps(_update, trainer, params, streams, steps, budget, {}, key)
