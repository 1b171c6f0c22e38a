"""Serve the ensemble: load each shard's final checkpoint, predict, evaluate.

Only shards whose final-stage checkpoint exists are served. A pending shard (its retraining
not finished, or its final checkpoint damaged) or an empty one (all its data deleted) is left
out of the aggregate and named. Serving only reads: repairs are a writer's job (`sisa train`).

Readers (predict, evaluate, status) take no lock and read optimistically, so they never block
a writer. A writer changes a workdir only by appending to the ledger, replacing a file whole
(data store, manifest, digest records) and adding or removing whole checkpoint stages (a
stage is renamed away, then removed). `read_consistently` takes the workdir's `version` (the
ledger's and the data store's file identities; with `stages`, every shard's stage listing)
before and after a read. If it changed, or the read failed because a stage vanished or was
replaced under it, the reader drops its checkpoint handles and reads again (at most TRIES
times, then one clear error). Serving a stage that saw a forgotten id is ruled out even
without that: the ledger is read before any checkpoint, and each stage's lineage is restored
with its state and checked against the state's digest, so no served stage saw an id whose
request was recorded before the read began. What a retry adds is one consistent answer: a
shard is left out as pending only because of the ledger this read saw.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from sisa.aggregate import aggregate
from sisa.data.datasets import nonfinite_rows
from sisa.errors import SisaError
from sisa.fsutil import file_identity

TRIES, PAUSE = 50, 0.02  # reads of a changing workdir before giving up; seconds between them (times 1..2)


class _Changed(Exception):
    """A read failed because a writer replaced or removed what it was reading."""


def version(wd, stages: bool = False) -> tuple:
    """What changes whenever a writer changes what readers read: the ledger (append-only) and
    the data store (replaced whole); with `stages`, the listings of the saves and of each shard's
    records (sisa.checkpoint: a stage is added or dropped with its record)."""
    out = [file_identity(wd.ledger_path), file_identity(wd.store_path)]
    if stages:
        for d in [wd.checkpoint_root / "saves", *sorted(wd.checkpoint_root.glob("shard_*.files"))]:
            try:
                out.append((d.name, sorted((e.name, e.inode()) for e in os.scandir(d))))
            except FileNotFoundError:
                pass
    return tuple(out)


def read_consistently(wd, read, *, stages: bool = False):
    """`read()`'s result from one version of the workdir (see the module doc). An error raised
    while the workdir did not change is real and is raised as is."""
    for _ in range(TRIES):
        before = version(wd, stages)
        try:
            out = read()
        except _Changed:
            pass
        except (OSError, SisaError):
            if version(wd, stages) == before:
                raise
        else:
            if version(wd, stages) == before:
                return out
        wd.reload_checkpoints()  # its handles cache stage listings and restored states
        time.sleep(PAUSE * (1 + random.random()))  # jittered: readers do not retry in step
    raise SisaError(f"workdir {wd.root} kept changing while reading it ({TRIES} tries); try again")


@dataclasses.dataclass
class Constituents:
    shards: list[int]  # served shards, in order
    params: dict  # stacked over served shards
    pending: list[int]  # shards whose final stage is not served (retraining, damaged): served from an earlier stage, or not at all
    empty: list[int]  # shards that have seen no data
    served: dict = dataclasses.field(default_factory=dict)  # shard -> {"stage", "ids_digest"} of what serves it


def constituents(wd, cache: dict | None = None) -> Constituents:
    """Every shard's newest stage that is safe to serve: intact, and its lineage free of every id
    the ledger has been asked to forget (committed or not). A shard whose final stage saw such an
    id (its retraining not finished) answers from the newest earlier stage that saw none of them,
    the stage before the earliest affected slice, as soon as the request is in the ledger: not
    nothing, and never a stage that saw them (S3T's deactivated slices). Read optimistically.
    `cache`: a dict kept between calls (sisa.service) of the stage each shard serves, reused while
    its files are the same (same inode, size and time)."""
    return read_consistently(wd, lambda: _constituents(wd, cache))


def _constituents(wd, cache: dict | None = None) -> Constituents:
    from sisa.training.ensemble import stack

    slices = wd.stages()
    forgotten = set(wd.ledger().forgotten())  # before any checkpoint (see the module doc)
    served, params, pending, empty, lineages = [], [], [], [], {}
    for ckpt in wd.checkpoints:
        found = _newest_clean(ckpt, forgotten, cache)
        if ckpt.latest() != slices - 1 or found is None or found[0] != slices - 1:
            pending.append(ckpt.shard)
        if found is None:
            continue
        stage, state, lineage = found
        if not lineage["ids"]:  # nothing trained: an initial state has nothing to say
            if stage == slices - 1:
                empty.append(ckpt.shard)
            continue
        served.append(ckpt.shard)
        params.append(state["params"])
        lineages[ckpt.shard] = {"stage": stage, "ids_digest": lineage["ids_digest"]}
    if not served:
        raise SisaError(f"no shard of {wd.root} has a checkpoint to serve (pending: {pending}, empty: {empty}); "
                        "try again once their retraining is done", kind="unavailable")
    return Constituents(served, stack(params), pending, empty, lineages)


def _newest_clean(ckpt, forgotten: set, cache: dict | None = None) -> tuple | None:
    """(stage, state, lineage) of the shard's newest intact stage that saw no id of `forgotten`.
    `cache` (shard -> the stage it served last, with its files' identity) holds only what serves
    now: a state that saw a forgotten id since is dropped, not kept in memory."""
    from sisa.checkpoint import CheckpointCorrupted, CheckpointUnreadable, saw_any

    for stage in reversed(ckpt.stages()):
        path = ckpt.stage_path(stage)  # this shard's part of the save that holds the stage
        seen = file_identity(path) if path is not None else None
        key = (stage, str(path), seen)  # a stage saved again goes to another save (path)
        hit = cache.get(ckpt.shard) if cache is not None and seen is not None else None
        if hit is not None and hit[0] == key:
            state, lineage = hit[1], hit[2]
        else:
            try:
                if len(saw_any(ckpt.seen(stage)[0], forgotten)):
                    continue  # saw a forgotten id: no need to read its state
                state, lineage = ckpt.restore(stage)  # its lineage again, checked against the state
            except CheckpointCorrupted:  # damaged, or removed under us: an older stage may serve
                continue
            except (CheckpointUnreadable, OSError):  # unreadable although intact: the environment, unless it moved
                if seen is None or file_identity(path) != seen:
                    raise _Changed from None
                raise
        if not forgotten.intersection(lineage["ids"]):
            if cache is not None and seen is not None:
                cache[ckpt.shard] = (key, state, lineage)
            return stage, state, lineage
    if cache is not None:
        cache.pop(ckpt.shard, None)
    return None


class InputRangeWarning(UserWarning):
    """`predict` inputs far outside the range of the training data: likely other units."""


def checked_inputs(wd, x) -> np.ndarray:
    """`x` as an array of the model's input shape: numbers, finite, [N, *input_shape] (rows
    of the right size are reshaped). Anything else is refused with a SisaError."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise SisaError(f"inputs must be numbers (bool, integer or float); got dtype {x.dtype}")
    shape = tuple(wd.manifest["dataset"]["input_shape"])
    if x.shape[1:] != shape:
        if x.ndim >= 1 and x.shape[1:] and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
            x = x.reshape(len(x), *shape)
        else:
            raise SisaError(f"inputs have shape {x.shape[1:]} per example; this model takes {shape}")
    if len(bad := nonfinite_rows(x)):
        raise SisaError(f"{len(bad)} input rows have NaN or infinite values (first: row {bad[0]}); "
                        f"give every feature a finite value")
    return x


def shard_probabilities(wd, x: np.ndarray, members: Constituents | None = None) -> tuple[Constituents, np.ndarray]:
    """Each served shard's serving outputs (sisa.tasks; classification: softmax [served, N,
    classes]) on data-store rows `x`. The served shards always run at
    one lane width (S, at least 2; spare lanes repeat a served shard): a vmap's float results
    depend on its width, and a shard's outputs must not depend on which others are pending."""
    import jax

    from sisa.training.ensemble import ensemble_for, serving_lanes

    x = _token_rows(wd, np.asarray(x)) if wd.trainer.vocab_size else checked_inputs(wd, x)  # before any checkpoint
    members = members or constituents(wd)
    served, lanes = len(members.shards), serving_lanes(wd.config.partition.shards)
    params = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[:1], lanes - served, axis=0)]), members.params)
    return members, jax.tree.map(lambda a: a[:served], ensemble_for(wd.trainer).probabilities(params, x))


def units_mismatch(train_x: np.ndarray, x: np.ndarray) -> str | None:
    """One line saying why inputs `x` look like they are in other units than the training data
    `train_x`, or None. The two are "far" apart when either holds (all features pooled, so one
    unusual feature or example does not trip it):

    * beyond: the inputs reach more than one training span outside the training range
      (min < lo - span or max > hi + span, with [lo, hi] the training range and span = hi - lo),
      e.g. raw 0..255 pixels given to a model trained on values in [0, 1];
    * squeezed: the inputs' largest magnitude is below a tenth of the largest magnitude that 99%
      of the training examples reach (the 1st percentile, over training examples, of each one's
      largest |feature|), e.g. pixels scaled to [0, 1] given to a model trained on 0..255.
    """
    if not len(x) or not len(train_x):
        return None
    t = train_x.reshape(len(train_x), -1)
    lo, hi, a, b = float(t.min()), float(t.max()), float(x.min()), float(x.max())
    span = hi - lo
    peaks = t.max(axis=1) if t.dtype.kind in "bu" else np.abs(t).max(axis=1)
    typical = float(np.quantile(peaks.astype(np.float64), 0.01))
    beyond = span > 0 and (a < lo - span or b > hi + span)
    squeezed = typical > 0 and max(abs(a), abs(b)) < typical / 10
    if not (beyond or squeezed):
        return None
    far = "outside the training data's range" if beyond else "smaller in magnitude than the training data's"
    return (f"inputs range over [{a:.4g}, {b:.4g}], far {far} [{lo:.4g}, {hi:.4g}]: predict takes inputs in "
            f"the units of the training data (e.g. raw pixel values, not rescaled ones); these predictions are "
            f"likely meaningless")


def _caller_level() -> int:
    """The `stacklevel` of the first frame outside the sisa package, seen from the caller."""
    level, frame, package = 1, sys._getframe(1), str(Path(__file__).parent)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def predict(wd, x, aggregation: str | None = None, members: Constituents | None = None) -> dict:
    """Aggregated labels and probabilities for inputs `x`, given in the units of the training
    data (as stored: e.g. 0..255 pixels when the model scales by 1/255 itself). Inputs whose range
    is far from the training data's (see `units_mismatch`; the training range is computed here,
    from the data store's current survivors, and never stored) raise an InputRangeWarning.

    On a text run `x` is a list of strings (or token rows); a language model gives, per input, its
    log-likelihood under the ensemble and the most likely next tokens (`predict_lm`). `members`:
    constituents read earlier (sisa.service keeps them while the workdir does not change)."""
    if wd.trainer.task_name == "lm":
        return predict_lm(wd, x, aggregation, members)
    rows = text_rows(wd, x) if wd.trainer.vocab_size else x
    members, probs = shard_probabilities(wd, rows, members)  # checks the inputs first
    if not wd.trainer.vocab_size and (why := units_mismatch(wd.store().x, np.asarray(x))) is not None:
        warnings.warn(why, InputRangeWarning, stacklevel=_caller_level())
    p, labels = aggregate(probs, aggregation or wd.config.aggregation)
    out = {"labels": labels.tolist(), "probabilities": p.tolist()}
    if names := wd.manifest["dataset"].get("label_names"):
        out["label_names"] = [names[k] for k in labels.tolist()]
    return {
        **out,
        "aggregation": aggregation or wd.config.aggregation,
        "shards": members.shards,
        "served": members.served,
        "left_out": {"pending": members.pending, "empty": members.empty},
    }


def evaluate(wd, aggregation: str | None = None) -> dict:
    if wd.trainer.task_name == "lm":
        return evaluate_lm(wd, aggregation)
    x, y = wd.test_split()
    members, probs = shard_probabilities(wd, x)
    method = aggregation or wd.config.aggregation
    out = {
        "aggregation": method,
        "test_examples": len(y),
        "per_shard": {s: float((probs[i].argmax(-1) == y).mean()) for i, s in enumerate(members.shards)},
        "served": members.served,
        "left_out": {"pending": members.pending, "empty": members.empty},
    }
    for name in ("vote", "softmax"):
        out[f"accuracy_{name}"] = float((aggregate(probs, name)[1] == y).mean())
    out["accuracy"] = out[f"accuracy_{method}"]
    return out


# Text runs (sisa.data.text, sisa.tasks)

TOP_NEXT = 5  # next tokens a language model's predict lists


def _tokenizer(wd):
    """The run's tokenizer, refused unless it is the one it was trained with."""
    from sisa.data import text

    tok = text.tokenizer(wd.config.data.tokenizer)
    text.check_tokenizer(wd.manifest["dataset"]["tokenizer"], tok)
    return tok


def _check_texts(texts) -> list:
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
        raise SisaError("inputs of a text model are a list of texts")
    if not len(texts):
        raise SisaError("no inputs: give at least one text")
    for i, t in enumerate(texts):
        t = t.get("text") if isinstance(t, dict) else t
        if not isinstance(t, str):
            raise SisaError(f"input {i} is not a text (got {type(t).__name__})")
    return list(texts)


def text_rows(wd, texts) -> np.ndarray:
    """Texts as the model's token rows (a text classifier: BOS + tokens + EOS, truncated and padded
    as in training). Token rows given as an integer array pass as they are, once checked."""
    from sisa.data import text

    if isinstance(texts, np.ndarray) and texts.dtype.kind in "iu":
        return _token_rows(wd, texts)
    rows, _ = text.encode_rows(_check_texts(texts), _tokenizer(wd), wd.trainer.input_shape[0])
    return rows


def _token_rows(wd, x: np.ndarray) -> np.ndarray:
    shape, vocab = tuple(wd.trainer.input_shape), wd.trainer.vocab_size
    if x.shape[1:] != shape or (len(x) and (x.min() < 0 or x.max() >= vocab)):
        raise SisaError(f"token rows must have shape [N, {shape[0]}] and ids in [0, {vocab}); got shape {x.shape}")
    return x.astype(np.int32)


def _lm_rows(wd, inputs) -> tuple[np.ndarray, np.ndarray]:
    """(rows [N, T + 1], scored [N, T]) for a language model's inputs: each a text, or
    {"text": prompt, "continuation": c}. A row is BOS + tokens (no EOS: the text goes on), at most
    T tokens in all so that the next token's distribution is the model's own; `scored[n, t]` marks
    the targets whose log-probability counts: the text's tokens, or only the continuation's."""
    from sisa.data import text

    tok, length = _tokenizer(wd), wd.trainer.input_shape[0]
    inputs = _check_texts(inputs)
    rows, scored = np.zeros((len(inputs), length), np.int32), np.zeros((len(inputs), length - 1), bool)
    for n, item in enumerate(inputs):
        prompt, cont = (item.get("text"), item.get("continuation")) if isinstance(item, dict) else (item, None)
        if cont is not None and not isinstance(cont, str):
            raise SisaError(f"input {n}: continuation is not a text (got {type(cont).__name__})")
        head = [text.BOS, *tok.encode(prompt)]
        ids = (head + tok.encode(cont or ""))[: length - 1]
        rows[n, : len(ids)] = ids
        first = len(head) if cont else 1  # the first scored position of the row
        scored[n, max(first, 1) - 1 : len(ids) - 1] = True
    return rows, scored


def _mixture(logp: np.ndarray) -> np.ndarray:
    """Log of the mean of the constituents' probabilities: [S, ...] log-probabilities -> [...]."""
    logp = logp.astype(np.float64)
    top = logp.max(axis=0)
    return top + np.log(np.exp(logp - top).mean(axis=0))


def _lm_aggregation(aggregation: str | None) -> str:
    if (aggregation or "softmax") != "softmax":
        raise SisaError("a language model's constituents aggregate by the mean of their next-token distributions "
                        "(aggregation \"softmax\"); \"vote\" is for classification")
    return "softmax"


def predict_lm(wd, inputs, aggregation: str | None = None, members: Constituents | None = None) -> dict:
    """Per input: `score`, the log-likelihood (nats) of its text, or of its continuation given the
    text, under the ensemble's mixture; `tokens`, how many tokens were scored; and `next`, the
    TOP_NEXT most likely next tokens with their probabilities."""
    method = _lm_aggregation(aggregation)
    tok = _tokenizer(wd)
    rows, scored = _lm_rows(wd, inputs)
    members, out = shard_probabilities(wd, rows, members)
    token = np.where(scored, _mixture(out["token"]), 0.0)
    nxt = np.exp(_mixture(out["next"]))
    top = np.argsort(-nxt, axis=1, kind="stable")[:, :TOP_NEXT]
    return {
        "scores": token.sum(axis=1).tolist(),
        "tokens": scored.sum(axis=1).tolist(),
        "next": [[{"token": tok.decode([int(t)]) if t >= 3 else ["<pad>", "<s>", "</s>"][t], "id": int(t),
                   "probability": float(nxt[n, t])} for t in top[n]] for n in range(len(rows))],
        "aggregation": method,
        "shards": members.shards,
        "served": members.served,
        "left_out": {"pending": members.pending, "empty": members.empty},
    }


def evaluate_lm(wd, aggregation: str | None = None) -> dict:
    """Perplexity of the ensemble (the mixture of the constituents' distributions) and of each
    constituent on the test split's documents, with the mean loss in nats per token."""
    from sisa.tasks import PAD

    method = _lm_aggregation(aggregation)
    x, _ = wd.test_split()
    members, out = shard_probabilities(wd, x)
    real = x[:, 1:] != PAD
    tokens = int(real.sum())

    def nats(logp):
        return float(-(logp * real).sum() / max(tokens, 1))

    loss = nats(_mixture(out["token"]))
    return {
        "aggregation": method,
        "test_examples": len(x),
        "test_tokens": tokens,
        "loss": loss,
        "perplexity": float(np.exp(loss)),
        "per_shard": {s: float(np.exp(nats(out["token"][i]))) for i, s in enumerate(members.shards)},
        "served": members.served,
        "left_out": {"pending": members.pending, "empty": members.empty},
    }
