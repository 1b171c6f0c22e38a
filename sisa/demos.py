"""`sisa demo`: SISA vs a monolithic model on mnist5k, then an exact deletion, proven bit for bit."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from sisa import api
from sisa.config import Config
from sisa.report import _table


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# The recipe that brings the S=5 aggregate within ~1 point of the monolithic model on mnist5k
# (issue 15; scripts/bench_accuracy.py): 40 epochs, label smoothing 0.1, a stratified
# partition. experiments/mnist5k.toml holds the same (tests/test_bars.py keeps them equal).
DEMO_CONFIG = Config().replace(partition={"strategy": "stratified"}, train={"epochs": 40, "label_smoothing": 0.1})


def run(workdir=None, *, progress: bool = True, forget_count: int = 10, seed: int = 0) -> dict:
    from sisa.data import datasets
    from sisa.verification import compare
    from sisa.workdir import Workdir

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sisa-demo-"))
    ds = datasets.load("mnist5k")
    cfg = DEMO_CONFIG
    t_sisa = _seconds(lambda: api.train(root / "sisa", cfg, dataset=ds, progress=progress))
    mono_cfg = cfg.replace(partition={"shards": 1, "slices": 1})
    t_mono = _seconds(lambda: api.train(root / "monolithic", mono_cfg, dataset=ds, progress=progress))
    ev, ev_mono = api.evaluate(root / "sisa"), api.evaluate(root / "monolithic")

    forget_ids = np.random.default_rng(seed).choice(ds.ids, forget_count, replace=False).tolist()
    fg = api.forget(root / "sisa", forget_ids, request="demo", progress=progress)
    t_scratch = _seconds(lambda: api.train(root / "scratch", cfg, dataset=ds.without(forget_ids), progress=progress))
    same = compare(Workdir.open(root / "sisa"), Workdir.open(root / "scratch"))
    x_test, _ = Workdir.open(root / "sisa").test_split()
    preds_equal = {
        agg: api.predict(root / "sisa", x_test, agg)["probabilities"]
        == api.predict(root / "scratch", x_test, agg)["probabilities"]
        for agg in ("vote", "softmax")
    }

    rows = [[f"shard {s}", acc] for s, acc in ev["per_shard"].items()]
    rows += [["SISA vote", ev["accuracy_vote"]], ["SISA softmax", ev["accuracy_softmax"]],
             ["monolithic", ev_mono["accuracy"]]]
    ratio = fg["seconds"] / t_scratch
    text = "\n".join([
        f"mnist5k: {len(ds.ids)} train / {len(ds.y_test)} test, {cfg.partition.shards} shards x "
        f"{cfg.partition.slices} slices, {cfg.model.name} {cfg.model.hidden}, {cfg.train.epochs} epochs",
        _table(["model", "test accuracy"], rows),
        f"training: SISA {t_sisa:.1f} s, monolithic {t_mono:.1f} s (both include compiling)",
        "",
        f"forget {forget_count} random ids {forget_ids}:",
        f"  retrained shards {fg['affected_shards']}, stages {fg['stages_retrained']}",
        f"  {fg['examples_epochs_retrained']} example-epochs vs {fg['examples_epochs_full_retrain']} for a full retrain",
        f"  {fg['seconds']:.2f} s vs {t_scratch:.2f} s to retrain everything from scratch ({ratio:.2f}x)",
        f"result equals training from scratch without them, bit for bit: "
        f"states {'YES' if same['identical'] else 'NO'} {same['per_shard']}, "
        f"predictions vote {'YES' if preds_equal['vote'] else 'NO'}, softmax {'YES' if preds_equal['softmax'] else 'NO'}",
        f"runs kept in {root}",
    ])
    return {
        "text": text, "workdir": str(root), "accuracy": ev["accuracy"], "accuracy_monolithic": ev_mono["accuracy"],
        "evaluate": ev, "forget": fg, "forget_ids": forget_ids, "seconds": {
            "train_sisa": t_sisa, "train_monolithic": t_mono, "forget": fg["seconds"], "retrain_from_scratch": t_scratch},
        "forget_over_retrain": ratio, "bit_identical": same["identical"] and all(preds_equal.values()),
    }


TEXT_CONFIG = Config().replace(
    data={"dataset": "pydoc", "context": 64},
    partition={"shards": 4, "slices": 2},
    model={"name": "transformer_lm", "hidden": (32, 32)},
    train={"epochs": 2, "learning_rate": 3e-3},
)


def run_text(workdir=None, *, progress: bool = True, forget_count: int = 5, seed: int = 0) -> dict:
    """`sisa demo --text`: a sharded causal LM on the embedded pydoc corpus (sisa.data.text), then
    an exact deletion of documents, proven bit for bit, with perplexity before and after."""
    from sisa.data import datasets
    from sisa.verification import compare
    from sisa.workdir import Workdir

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sisa-demo-text-"))
    cfg = TEXT_CONFIG
    ds = datasets.load(cfg.data.dataset, data=cfg.data)
    t_sisa = _seconds(lambda: api.train(root / "sisa", cfg, dataset=ds, progress=progress))
    before = api.evaluate(root / "sisa")
    forget_ids = np.random.default_rng(seed).choice(ds.ids, forget_count, replace=False).tolist()
    fg = api.forget(root / "sisa", forget_ids, request="demo", progress=progress)
    after = api.evaluate(root / "sisa")
    t_scratch = _seconds(lambda: api.train(root / "scratch", cfg, dataset=ds.without(forget_ids), progress=progress))
    same = compare(Workdir.open(root / "sisa"), Workdir.open(root / "scratch"))
    scratch = api.evaluate(root / "scratch")
    same_ppl = after["perplexity"] == scratch["perplexity"]
    m = cfg.model
    text = "\n".join([
        f"pydoc corpus: {len(ds.ids)} train / {len(ds.y_test)} test documents (Python's own documentation, "
        f"byte-level tokens, {cfg.data.context} per document), {cfg.partition.shards} shards x "
        f"{cfg.partition.slices} slices, {m.name} {m.hidden}, {cfg.train.epochs} epochs",
        f"training: {t_sisa:.1f} s (includes compiling); test perplexity of the ensemble {before['perplexity']:.3f} "
        f"({before['loss']:.4f} nats/token)",
        "",
        f"forget {forget_count} random documents {forget_ids}:",
        f"  retrained shards {fg['affected_shards']}, stages {fg['stages_retrained']}: {fg['seconds']:.2f} s vs "
        f"{t_scratch:.2f} s to retrain everything from scratch",
        f"  test perplexity after: {after['perplexity']:.3f}; retrained from scratch without them: "
        f"{scratch['perplexity']:.3f}",
        f"result equals training from scratch without them, bit for bit: states {'YES' if same['identical'] else 'NO'} "
        f"{same['per_shard']}, perplexity {'YES' if same_ppl else 'NO'}",
        f"runs kept in {root}",
    ])
    return {"text": text, "workdir": str(root), "perplexity_before": before["perplexity"],
            "perplexity_after": after["perplexity"], "perplexity_retrained": scratch["perplexity"], "forget": fg,
            "forget_ids": forget_ids, "seconds": {"train_sisa": t_sisa, "forget": fg["seconds"],
                                                  "retrain_from_scratch": t_scratch},
            "bit_identical": same["identical"] and same_ppl}
