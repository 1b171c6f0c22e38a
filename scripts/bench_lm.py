"""Language models in sisa: training throughput against a plain JAX loop, compiles, adapters.

    python scripts/bench_lm.py [--deletions 100] [--quick] [--json] [--out F.json]

1. Throughput. The same transformer LM (sisa's `transformer_lm`, experiments/lm_cpu.toml's
   sizes) trained on the same token rows of the pydoc corpus for the same examples x epochs:
     sisa       `sisa.train` of an S-shard x R-slice run (checkpoints, ledger, everything), warm:
                its programs already compiled in this process by an untimed first run;
     plain      a jitted epoch (`lax.scan` over batches of one Adam step, the same masked
                next-token loss) over all rows, warm, one model: what a user would write.
   tokens/s = examples x epochs x context / seconds. Target: sisa >= 0.9 x plain.
2. Compiles. In this process, with no program cache on disk (SISA_CACHE_DIR=off), a train
   plus `--deletions` single-id forgets, per model kind (transformer_lm, transformer): XLA
   compilations of sisa's programs, counted by a jax.monitoring listener (target <= 6 each).
3. Adapters vs full model (S3T-style): checkpoint bytes per shard-stage and a single-id
   forget's seconds, full-model SISA against LoRA adapters on a frozen base trained on other
   documents, and the test perplexity of both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SISA_CACHE_DIR", "off")
os.environ.setdefault("SISA_PRECOMPILE", "off")
sys.path.insert(0, str(Path(__file__).parent))

import benchlib
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sisa
from sisa import config as config_lib
from sisa.data import datasets
from sisa.fsutil import disk_usage
from sisa.workdir import Workdir

TARGET_THROUGHPUT, TARGET_PROGRAMS = 0.9, 6
COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: COMPILES.append(kw.get("fun_name", "?"))
    if event == "/jax/core/compile/backend_compile_duration" else None)


def lm_config(quick: bool) -> config_lib.Config:
    cfg = config_lib.load(Path(__file__).parent.parent / "experiments" / "lm_cpu.toml")
    return cfg.replace(train={"epochs": 2}, data={"context": 64}) if quick else cfg


def plain_loop(cfg, ds, passes: int, scan: bool = True) -> float:
    """Seconds per warm pass over every row of one model: an Adam(W) step on the masked
    next-token loss, jitted, over batches by `lax.scan` in one program (`scan`) or by a Python
    loop (the median of `passes` passes)."""
    from sisa.models.transformer import TransformerLM

    t = cfg.data.context
    model = TransformerLM((t,), ds.vocab_size, vocab_size=ds.vocab_size, hidden=cfg.model.hidden,
                          rngs=nnx.Rngs(params=0), **dict(cfg.model.options))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = optax.adamw(cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    b = cfg.train.batch_size
    batches = len(ds.x) // b
    data = jnp.asarray(ds.x[: batches * b].reshape(batches, b, t + 1))
    if not scan:
        data = list(data)

    def loss_fn(p, batch):
        logits = nnx.merge(graphdef, p)(batch[:, :-1])
        targets = batch[:, 1:]
        w = targets != 0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.sum(ce * w) / jnp.maximum(w.sum(), 1)

    def step(carry, batch):
        p, opt = carry
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        u, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, u), opt), loss

    if scan:
        epoch = jax.jit(lambda p, opt, data: jax.lax.scan(step, (p, opt), data))
    else:  # the loop most users write: one jitted step per batch
        jstep = jax.jit(step)

        def epoch(p, opt, data):
            carry, losses = (p, opt), []
            for batch in data:
                carry, loss = jstep(carry, batch)
                losses.append(loss)
            return carry, losses

    opt = tx.init(params)
    jax.block_until_ready(epoch(params, opt, data))  # compile
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        (params, opt), losses = epoch(params, opt, data)
        jax.block_until_ready(losses)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * len(ds.x) / (batches * b)  # the rows a batch-aligned pass drops, pro rata


def throughput(cfg, ds, work: Path, repeats: int) -> dict:
    sisa.train(str(work / "warm"), cfg, dataset=ds, progress=False)  # compiles; untimed
    seconds = {"sisa": [], "plain_scan": [], "plain_steps": []}
    for r in range(repeats):  # interleaved: the machine's noise hits all three
        t0 = time.perf_counter()
        ex_ep = sisa.train(str(work / f"t{r}"), cfg, dataset=ds, progress=False)["examples_epochs"]
        seconds["sisa"].append(time.perf_counter() - t0)
        seconds["plain_scan"].append(plain_loop(cfg, ds, 3) * ex_ep / len(ds.x))
        seconds["plain_steps"].append(plain_loop(cfg, ds, 3, scan=False) * ex_ep / len(ds.x))
    tokens = ex_ep * cfg.data.context
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out = {"examples_epochs": ex_ep, "tokens": tokens, "seconds": med,
           "tokens_per_s": {k: tokens / v for k, v in med.items()}, "target": TARGET_THROUGHPUT}
    for k in ("plain_scan", "plain_steps"):
        out[f"ratio_vs_{k}"] = med[k] / med["sisa"]
    return out


def count_compiles(kind: str, quick: bool, deletions: int, work: Path) -> dict:
    """In this (fresh) process: XLA compilations of a train plus `deletions` single-id forgets
    and an evaluate, for the model kind `kind` (the classifier on pydoc labelled by id parity)."""
    cfg = lm_config(quick)
    if kind == "transformer":
        from sisa.data import text

        ids, texts = text.pydoc_corpus()
        path = work / "labelled.jsonl"
        path.write_text("".join(json.dumps({"text": t, "id": i, "label": i % 2}) + "\n" for i, t in zip(ids, texts)))
        cfg = cfg.replace(model={"name": "transformer"}, data={"dataset": str(path), "task": "classify"})
    ds = datasets.load(cfg.data.dataset, data=cfg.data)
    root = work / f"compiles-{kind}"
    sisa.train(str(root), cfg, dataset=ds, progress=False)
    after_train = len(COMPILES)
    for i in np.random.default_rng(0).choice(ds.ids, deletions, replace=False).tolist():
        sisa.forget(str(root), [i], progress=False)
    sisa.evaluate(str(root))
    return {"model": kind, "deletions": deletions, "compiles": len(COMPILES), "after_train": after_train,
            "names": sorted(set(COMPILES)), "target": TARGET_PROGRAMS, "met": len(COMPILES) <= TARGET_PROGRAMS}


def compiles(kind: str, quick: bool, deletions: int) -> dict:
    """`count_compiles` in a child process: nothing compiled before counts."""
    argv = [sys.executable, __file__, "--count-compiles", kind, "--deletions", str(deletions)] + ["--quick"] * quick
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def adapters(cfg, ds, work: Path, quick: bool) -> dict:
    """Full-model SISA vs LoRA adapters on a base trained on the other half of the documents."""
    half = len(ds.ids) // 2
    public, private = ds.without(ds.ids[half:]), ds.without(ds.ids[:half])
    base = work / "base"
    sisa.train(str(base), cfg.replace(partition={"shards": 1, "slices": 1}), dataset=public, progress=False)
    runs = {"full": cfg, "lora": cfg.replace(model={"base": str(base)}, train={"adapter": "lora", "lora_rank": 8})}
    out = {}
    for name, c in runs.items():
        root = work / f"adapter-{name}"
        sisa.train(str(root), c, dataset=private, progress=False)
        wd = Workdir.open(root)
        stages = sum(len(ck.stages()) for ck in wd.checkpoints)
        ckpt_bytes = disk_usage(wd.checkpoint_root) / max(stages, 1)
        ppl = sisa.evaluate(str(root))["perplexity"]
        times = []
        for i in range(1 if quick else 3):
            t0 = time.perf_counter()
            sisa.forget(str(root), [int(private.ids[7 + 11 * i])], progress=False)
            times.append(time.perf_counter() - t0)
        out[name] = {"checkpoint_bytes_per_stage": ckpt_bytes, "forget_seconds": statistics.median(times),
                     "perplexity": ppl}
    out["checkpoint_ratio"] = out["full"]["checkpoint_bytes_per_stage"] / out["lora"]["checkpoint_bytes_per_stage"]
    out["forget_ratio"] = out["full"]["forget_seconds"] / out["lora"]["forget_seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deletions", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="context 64, 2 epochs, 10 deletions, 1 repeat")
    ap.add_argument("--count-compiles", metavar="KIND", help=argparse.SUPPRESS)  # the child of `compiles`
    benchlib.output_flags(ap, "unused")
    args = ap.parse_args()
    if args.quick:
        args.deletions, args.repeats = min(args.deletions, 10), 1
    if args.count_compiles:
        with tempfile.TemporaryDirectory(prefix="sisa-bench-lm-") as work:
            print(json.dumps(count_compiles(args.count_compiles, args.quick, args.deletions, Path(work))))
        return
    cfg = lm_config(args.quick)
    ds = datasets.load(cfg.data.dataset, data=cfg.data)
    work = Path(tempfile.mkdtemp(prefix="sisa-bench-lm-"))
    try:
        out = {"config": cfg.to_dict(), "throughput": throughput(cfg, ds, work, args.repeats)}
        out["compiles"] = [compiles(kind, args.quick, args.deletions) for kind in ("transformer_lm", "transformer")]
        out["adapters"] = adapters(cfg, ds, work, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if benchlib.finish(out, args):
        return
    t = out["throughput"]
    print(f"throughput ({t['examples_epochs']} examples x epochs, {t['tokens']} tokens; S={cfg.partition.shards} x "
          f"R={cfg.partition.slices}, checkpoints included):")
    for k, what in (("sisa", "sisa train"), ("plain_scan", "plain, one jitted lax.scan per epoch"),
                    ("plain_steps", "plain, a Python loop of jitted steps")):
        print(f"  {t['tokens_per_s'][k]:10.0f} tokens/s  {t['seconds'][k]:6.2f} s  {what}")
    for k in ("plain_scan", "plain_steps"):
        r = t[f"ratio_vs_{k}"]
        print(f"  sisa / {k}: {r:.3f} (target >= {TARGET_THROUGHPUT}: {'met' if r >= TARGET_THROUGHPUT else 'NOT met'})")
    for c in out["compiles"]:
        print(f"compiles, {c['model']}: train + {c['deletions']} deletions + evaluate: {c['compiles']} XLA compilations "
              f"({c['after_train']} by train) {c['names']} (target <= {TARGET_PROGRAMS}: "
              f"{'met' if c['met'] else 'NOT met'})")
    a = out["adapters"]
    for name in ("full", "lora"):
        r = a[name]
        print(f"{name:5s}: {r['checkpoint_bytes_per_stage'] / 1024:8.1f} KiB per shard-stage checkpoint, forget "
              f"{r['forget_seconds']:.2f} s, test perplexity {r['perplexity']:.3f}")
    print(f"full / lora: checkpoints {a['checkpoint_ratio']:.1f}x, forget time {a['forget_ratio']:.2f}x")


if __name__ == "__main__":
    main()
