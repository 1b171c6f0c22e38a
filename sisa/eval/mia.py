"""Membership-inference attacks that measure what a model still reveals about the forget set.

Each attack scores examples (higher = "more likely a training member") and is summarised by
the ROC AUC of telling the forget set (positives: they WERE in the original training set) from
reference non-members of the same classes (negatives: never trained on). 0.5 = indistinguishable;
the gold standard (a model retrained without the forget set) sets the target an unlearning
method should reach.

* `loss_attack`: score = -loss (Yeom et al. 2018; a global loss threshold swept by the ROC).
* `lira_scores`: LiRA (Carlini et al. 2022). Shadow models of the target's own architecture are
  trained on random halves of a data pool (`balanced_masks`: every example is in exactly half
  of them), so every example has shadows that saw it and shadows that did not. The statistic is
  the logit-scaled confidence φ = log p(y|x) - log(1 - p(y|x)). Offline: z = (φ_target - μ_out)
  / σ_out from the out-shadows only; online: the log likelihood ratio of N(μ_in, σ_in) against
  N(μ_out, σ_out). μ is per example; σ is pooled over examples ("fixed variance", which LiRA
  recommends with fewer than ~64 shadows). `sisa.eval.shadows` trains the shadows.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def auc(members, nonmembers) -> float:
    """ROC AUC of scores separating members (positives) from non-members; NaN if either is empty."""
    from sklearn.metrics import roc_auc_score

    members, nonmembers = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    if not len(members) or not len(nonmembers):
        return float("nan")
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    return float(roc_auc_score(labels, np.concatenate([members, nonmembers])))


def loss_attack(member_losses, nonmember_losses) -> float:
    """AUC of the loss-threshold attack: members are predicted to have the lower loss."""
    return auc(-np.asarray(member_losses), -np.asarray(nonmember_losses))


def confidence_attack(member_confidence, nonmember_confidence) -> float:
    """AUC of the confidence-threshold attack (e.g. max softmax or p(y|x))."""
    return auc(member_confidence, nonmember_confidence)


def logit_confidence(lp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """φ = log p(y|x) - log(1 - p(y|x)) from log-probabilities [..., N, C]; stable when p -> 1."""
    lp = np.asarray(lp, np.float64)
    y = np.asarray(y)
    onehot = np.eye(lp.shape[-1], dtype=bool)[y]
    own = np.where(onehot, lp, -np.inf).max(axis=-1)
    rest = logsumexp(np.where(onehot, -np.inf, lp), axis=-1)
    return own - rest


def balanced_masks(shadows: int, examples: int, rng: np.random.Generator) -> np.ndarray:
    """[shadows, examples] bool: shadow s trains on example n. Each example is in exactly half
    of the shadows (LiRA's design: as many in- as out-models per example); `shadows` must be even."""
    if shadows < 2 or shadows % 2:
        raise ValueError(f"LiRA needs an even number of shadow models >= 2, got {shadows}")
    order = np.argsort(rng.random((shadows, examples)), axis=0)  # a random permutation per example
    return order < shadows // 2


def lira_scores(target_phi, shadow_phi, in_mask, *, online: bool = False) -> np.ndarray:
    """Per-example membership scores of a target model from shadow models.

    target_phi [N], shadow_phi [S, N] (see `logit_confidence`), in_mask [S, N]: shadow s
    trained on example n. Every example needs at least one out-shadow.
    """
    phi, shadow, inside = np.asarray(target_phi), np.asarray(shadow_phi), np.asarray(in_mask, bool)
    out = ~inside
    n_out = out.sum(0)
    if (n_out == 0).any():
        raise ValueError("every example needs at least one shadow model that did not train on it")
    mu_out = np.where(out, shadow, 0).sum(0) / n_out
    sd_out = _pooled_std(shadow, mu_out, out)
    if not online:
        return (phi - mu_out) / sd_out
    n_in = inside.sum(0)
    has_in = n_in > 0
    mu_in = np.where(inside, shadow, 0).sum(0) / np.maximum(n_in, 1)
    shift = (mu_in - mu_out)[has_in].mean() if has_in.any() else 0.0
    mu_in = np.where(has_in, mu_in, mu_out + shift)
    sd_in = _pooled_std(shadow, mu_in, inside) if inside.sum() > has_in.sum() else sd_out
    return _log_normal(phi, mu_in, sd_in) - _log_normal(phi, mu_out, sd_out)


def _pooled_std(values, means, mask) -> float:
    dev = np.where(mask, values - means, 0.0)
    dof = max(int(mask.sum()) - int((mask.sum(0) > 0).sum()), 1)
    return float(max(np.sqrt((dev**2).sum() / dof), 1e-6))


def _log_normal(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)
