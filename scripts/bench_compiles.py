"""XLA compilations, and what a fresh process pays for a forget, on mnist5k.

    python scripts/bench_compiles.py [--deletions 100] [--shards 5] [--slices 4] [--repeats 3]
                                     [--quick] [--first-only] [--json] [--out F.json] [--plot F.png]

1. Compilations. A fresh child process with SISA_CACHE_DIR=off (no persistent cache, so
   every program the process needs is really compiled) trains one run and then forgets
   `--deletions` random ids, one request each. A `jax.monitoring` listener counts duration
   events (names as in jax/_src/dispatch.py of JAX 0.10):
     /jax/core/compile/backend_compile_duration     one per XLA compilation  (target <= 6 in all)
     /jax/core/compile/jaxpr_to_mlir_module_duration one per lowering to StableHLO
     /jax/core/compile/jaxpr_trace_duration         one per trace of a jitted function
   with the function names, so that the training programs can be told from small eager ops.

2. Fresh-process forget latency, single-id requests on one trained workdir, interleaved in
   `--repeats` rounds, medians:
     fresh, cold cache   `sisa forget` in a new process with an empty compile cache;
     fresh, warm cache   the same with a cache that already holds the programs;
     in process, warm    `sisa.forget` in this process after a first, untimed, forget.
   Target: fresh process (warm cache) <= 2 x in process, warm; judged for the forget call in
   the fresh process (the cold start a cache can remove) and, separately, for the whole
   process, whose interpreter start and imports alone cost more than two warm forgets.
   Where the time of a fresh process goes is measured by an instrumented child that runs the
   same `sisa.forget` (the CLI's path) and times, in order: importing jax, flax.nnx + optax,
   orbax.checkpoint, sisa's modules, starting the CPU backend, then the forget itself, split
   by jax.monitoring into tracing, lowering, compiling/loading from the cache, by wrapped
   calls into checkpoint restore/lineage reads/saves, and the rest (training, data store,
   ledger). Interpreter start-up = from our spawning the child to its first line; exit = from
   its last line to our seeing it end (both by the wall clock).

3. The first command after `train`, each in a fresh process on a copy of the trained workdir,
   with the program cache that train left: a forget hitting 1, 2 and S shards (one id in each),
   and a predict of the test split. Lowerings and compilations in that process (target: 0
   each), with the train compiling ahead (`SISA_PRECOMPILE`, the default) and without (before
   issue 15), each with its own empty cache; and the train's wall time both ways (children with
   an empty cache, median of `--repeats`), whose ratio is what compiling ahead costs `train`.
   `--first-only` runs this section alone.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import benchlib

TARGET_COMPILES, TARGET_FRESH_OVER_WARM = 6, 2.0
EV = {"/jax/core/compile/backend_compile_duration": "compile",
      "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
      "/jax/core/compile/jaxpr_trace_duration": "trace"}


class Recorder:
    """Collects jax.monitoring duration events (and cache hits) under a phase label."""

    def __init__(self):
        import jax

        import sisa

        self.package = str(Path(sisa.__file__).parent) + os.sep
        self.phase, self.events, self.hits = "start", [], 0
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)

    def _duration(self, event, duration, **kw):
        if event in EV:
            name = kw.get("fun_name")
            if EV[event] == "compile":  # name the line in sisa that asked for the program
                name = f"{name} @ {self._site()}"
            self.events.append((self.phase, EV[event], name, duration))

    def _site(self) -> str:
        for f in reversed(traceback.extract_stack()):
            # the first sisa line outside the program cache, which compiles for its callers
            if f.filename.startswith(self.package) and not f.filename.endswith("aot.py"):
                return f"{f.filename[len(self.package):]}:{f.lineno}"
        return "?"

    def _event(self, event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            self.hits += 1

    def count(self, kind: str, phase=None) -> int:
        return sum(1 for p, k, *_ in self.events if k == kind and (phase is None or p == phase))

    def seconds(self, kind: str) -> float:
        return sum(d for _, k, _, d in self.events if k == kind)


def wrap_timers(acc: dict) -> None:
    """Accumulate seconds spent in checkpoint restores, lineage reads and saves/waits."""
    from sisa.checkpoint import ShardCheckpoints

    # Training saves a whole stage at once (save_stage, a staticmethod: wrapped as a plain function).
    for name, key in (("restore", "restore"), ("lineage", "lineage_read"), ("save_stage", "save"), ("wait", "save")):
        orig = getattr(ShardCheckpoints, name)

        def timed(*a, _orig=orig, _key=key, **k):
            t0 = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                acc[_key] = acc.get(_key, 0.0) + time.perf_counter() - t0

        setattr(ShardCheckpoints, name, staticmethod(timed) if name == "save_stage" else timed)


# ---- children -----------------------------------------------------------------------------

def child_count(args) -> dict:
    """Fresh process, no persistent cache: compilations of one train + N single-id forgets."""
    import numpy as np

    import sisa
    from sisa.data import datasets

    rec = Recorder()
    ds = datasets.load(args.dataset)
    cfg = sisa.Config().replace(data={"dataset": args.dataset}, partition={"shards": args.shards, "slices": args.slices})
    wd = Path(args.workdir)
    rec.phase = "train"
    sisa.train(wd, cfg, dataset=ds, progress=False)
    per_deletion, widths = [], []
    for n, i in enumerate(np.random.default_rng(0).choice(ds.ids, args.deletions, replace=False).tolist()):
        rec.phase = f"forget{n}"
        before = rec.count("compile")
        report = sisa.forget(wd, [int(i)], progress=False)
        per_deletion.append(rec.count("compile") - before)
        widths.append(len(report["affected_shards"]))
    by_site: dict[str, dict] = {}  # compilations by function and the sisa line that triggered them
    for phase, kind, name, _ in rec.events:
        if kind == "compile":
            d = by_site.setdefault(name or "?", {"compile": 0, "train": 0, "forget": 0})
            d["compile"] += 1
            d["train" if phase == "train" else "forget"] += 1
    others = {k: collections.Counter(n for _, kd, n, _ in rec.events if kd == k) for k in ("lower", "trace")}
    return {
        "compiles": rec.count("compile"), "lowerings": rec.count("lower"), "traces": rec.count("trace"),
        "compiles_train": rec.count("compile", "train"), "compiles_forgets": rec.count("compile") - rec.count("compile", "train"),
        "lowerings_train": rec.count("lower", "train"),
        "lowerings_forgets": rec.count("lower") - rec.count("lower", "train"),
        "deletions_that_compiled": [n for n, c in enumerate(per_deletion) if c],
        "compiles_per_deletion": per_deletion,
        "compile_seconds": rec.seconds("compile"), "lower_seconds": rec.seconds("lower"), "trace_seconds": rec.seconds("trace"),
        "compiles_by_function_and_site": by_site,
        "lowerings_by_function": dict(others["lower"]), "traces_by_function": dict(others["trace"]),
    }


def child_forget(args) -> dict:
    """One `sisa.forget` as the CLI runs it, with its start-up timed piece by piece."""
    started = time.time()
    marks = [("start", time.perf_counter())]
    import jax

    marks.append(("import jax", time.perf_counter()))
    import flax.nnx  # noqa: F401
    import optax  # noqa: F401

    marks.append(("import flax.nnx, optax", time.perf_counter()))
    import orbax.checkpoint  # noqa: F401

    marks.append(("import orbax.checkpoint", time.perf_counter()))
    import sisa.api
    import sisa.checkpoint
    import sisa.cli
    import sisa.training.loop
    import sisa.unlearn.exact

    marks.append(("import sisa", time.perf_counter()))
    jax.devices()
    marks.append(("start CPU backend", time.perf_counter()))
    rec, acc = Recorder(), {}
    wrap_timers(acc)
    t0 = time.perf_counter()
    report = sisa.api.forget(args.workdir, [args.id], progress=False)
    forget_s = time.perf_counter() - t0
    steps = {b[0]: b[1] - a[1] for a, b in itertools.pairwise(marks)}
    inside = {"trace": rec.seconds("trace"), "lower": rec.seconds("lower"), "compile or cache load": rec.seconds("compile"),
              "checkpoint restore": acc.get("restore", 0.0), "lineage reads": acc.get("lineage_read", 0.0),
              "checkpoint save": acc.get("save", 0.0)}
    inside["rest (training, store, ledger)"] = forget_s - sum(inside.values())
    return {"steps": steps, "forget_s": forget_s, "forget_breakdown": inside, "timed_inside": time.perf_counter() - marks[0][1],
            "compiles": rec.count("compile"), "cache_hits": rec.hits, "library_seconds": report["seconds"],
            "datasets_imported": "datasets" in sys.modules, "started": started, "ended": time.time()}


def child_train(args) -> dict:
    """One `sisa.train` as the CLI runs it: its wall time and what it lowered and compiled."""
    import sisa
    from sisa.data import datasets

    ds = datasets.load(args.dataset)
    cfg = sisa.Config().replace(data={"dataset": args.dataset}, partition={"shards": args.shards, "slices": args.slices})
    rec = Recorder()
    t0 = time.perf_counter()
    sisa.train(args.workdir, cfg, dataset=ds, progress=False)
    return {"train_s": time.perf_counter() - t0, "compiles": rec.count("compile"), "lowerings": rec.count("lower"),
            "code": _code()}


def _code() -> str:
    """sisa's source as the program cache keys it: an edit between two children keys them apart."""
    from sisa.training import aot

    return aot._code_digest()


def child_first(args) -> dict:
    """The first command after train in a fresh process: forget `--ids`, or (none) predict the test split."""
    import sisa.api

    rec = Recorder()
    t0 = time.perf_counter()
    if args.ids:
        report = sisa.api.forget(args.workdir, [int(i) for i in args.ids.split(",")], progress=False)
        shards = len(report["affected_shards"])
    else:
        from sisa.workdir import Workdir

        x, _ = Workdir.open(args.workdir).test_split()
        sisa.api.predict(args.workdir, x)
        shards = None
    return {"seconds": time.perf_counter() - t0, "affected_shards": shards, "compiles": rec.count("compile"),
            "lowerings": rec.count("lower"), "traces": rec.count("trace"),
            "compiled": sorted({n for _, k, n, _ in rec.events if k == "compile"}), "code": _code()}


def first_commands(args, root: Path, log) -> dict:
    """Section 3: the first forget (1, 2, S shards) and predict after train, each in a fresh process."""
    import shutil

    import numpy as np

    from sisa.workdir import Workdir

    me = str(Path(__file__).resolve())
    common = ["--dataset", args.dataset, "--shards", str(args.shards), "--slices", str(args.slices)]
    modes = {"before": "off", "after": "on"}  # SISA_PRECOMPILE
    trains = {mode: [] for mode in modes}
    again = {mode: [] for mode in modes}  # a second train on the cache the first one left
    for rep in range(args.repeats):  # interleaved; each with an empty cache, so train compiles its own programs too
        for mode, ahead in modes.items():
            for runs, name in ((trains, ""), (again, "-again")):
                got, _ = spawn([me, "--child", "train", "--workdir", str(root / f"first-{mode}-{rep}{name}"), *common],
                               {"SISA_CACHE_DIR": str(root / f"first-{mode}-cache-{rep}"), "SISA_PRECOMPILE": ahead})
                runs[mode].append(got)
        log(f"  train with and without compiling ahead, round {rep + 1}/{args.repeats} done")
    widths = sorted({1, min(2, args.shards), args.shards})
    out = {"affected": widths, "modes": {}}
    for mode, ahead in modes.items():
        wd, cache = root / f"first-{mode}-0", root / f"first-{mode}-cache-0"
        store = Workdir.open(wd).store()
        rng = np.random.default_rng(2)
        firsts = {}
        for k in [*widths, "predict"]:
            # A copy of the workdir and of the cache train left: no child sees what another stored.
            name = "predict" if k == "predict" else f"forget {k}"
            copy, copy_cache = root / f"first-{mode}-{name}", root / f"first-{mode}-{name}-cache"
            shutil.copytree(wd, copy)
            shutil.copytree(cache, copy_cache)
            ids = [] if k == "predict" else [int(rng.choice(store.ids[store.shard == s])) for s in range(k)]
            firsts[name], _ = spawn([me, "--child", "first", "--workdir", str(copy),
                                     *(["--ids", ",".join(map(str, ids))] if ids else [])],
                                    {"SISA_CACHE_DIR": str(copy_cache)})
        out["modes"][mode] = {"SISA_PRECOMPILE": ahead, "trains": trains[mode], "trains_warm_cache": again[mode],
                              "first": firsts, "train_s": statistics.median(t["train_s"] for t in trains[mode]),
                              "train_warm_cache_s": statistics.median(t["train_s"] for t in again[mode])}
        log(f"  first commands after train, compiling ahead {ahead}: done")
    before, after = out["modes"]["before"], out["modes"]["after"]
    out["train_overhead_ratio"] = after["train_s"] / before["train_s"]
    out["train_warm_cache_overhead_ratio"] = after["train_warm_cache_s"] / before["train_warm_cache_s"]
    out["compiled_ahead"] = after["trains"][0]["compiles"] - before["trains"][0]["compiles"]
    out["meets_target"] = all(r["compiles"] == 0 and r["lowerings"] == 0 for r in after["first"].values())
    codes = {r["code"] for m in out["modes"].values()
             for r in [*m["trains"], *m["trains_warm_cache"], *m["first"].values()]}
    out["source_changed_during_run"] = len(codes) > 1  # then the counts are not to be trusted: run again
    return out


def spawn(args_list: list[str], env: dict) -> tuple[dict | None, float]:
    """Run a child; (its last stdout line as JSON or None, wall seconds). A child that reports
    `started`/`ended` (time.time()) gets `startup_s` and `exit_s` measured against ours."""
    t0, spawned = time.perf_counter(), time.time()
    p = subprocess.run([sys.executable, *args_list], env={**os.environ, **env}, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"child {args_list} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    wall, done = time.perf_counter() - t0, time.time()
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None, wall
    if isinstance(out, dict) and "started" in out:
        out["startup_s"], out["exit_s"] = out["started"] - spawned, done - out["ended"]
    return out, wall


# ---- parent -------------------------------------------------------------------------------

def latency(args, root: Path, log) -> dict:
    import numpy as np

    import sisa
    from sisa.data import datasets

    ds = datasets.load(args.dataset)
    cfg = sisa.Config().replace(data={"dataset": args.dataset}, partition={"shards": args.shards, "slices": args.slices})
    wd = root / "run"
    sisa.train(wd, cfg, dataset=ds, progress=False)
    ids = iter(np.random.default_rng(1).choice(ds.ids, 6 * args.repeats + 4, replace=False).tolist())
    warm_cache = root / "xla-warm"
    me = str(Path(__file__).resolve())
    cli = lambda cache: spawn(["-m", "sisa.cli", "forget", "--workdir", str(wd), str(next(ids)), "--json"],
                              {"SISA_CACHE_DIR": str(cache)})[1]
    probe = lambda cache: spawn([me, "--child", "forget", "--workdir", str(wd), "--id", str(next(ids))],
                                {"SISA_CACHE_DIR": str(cache)})
    cli(warm_cache)  # fills the warm cache with the deletion's programs
    sisa.forget(wd, [next(ids)], progress=False)  # compiles them in this process
    runs = {"cold_cli": [], "warm_cli": [], "in_process": [], "cold_probe": [], "warm_probe": []}
    for rep in range(args.repeats):
        runs["cold_cli"].append(cli(tempfile.mkdtemp(dir=root, prefix="xla-cold-")))
        runs["warm_cli"].append(cli(warm_cache))
        runs["in_process"].append(sisa.forget(wd, [next(ids)], progress=False)["seconds"])
        for kind, cache in (("cold_probe", tempfile.mkdtemp(dir=root, prefix="xla-cold-")), ("warm_probe", warm_cache)):
            out, wall = probe(cache)
            out["wall"] = wall
            runs[kind].append(out)
        log(f"  latency round {rep + 1}/{args.repeats} done")
    # baselines: an empty interpreter, and one that only imports jax
    bare = statistics.median(spawn(["-c", "pass"], {})[1] for _ in range(3))
    jax_only = statistics.median(spawn(["-c", "import jax"], {})[1] for _ in range(3))
    med = statistics.median
    cold, warm, inproc = med(runs["cold_cli"]), med(runs["warm_cli"]), med(runs["in_process"])

    def breakdown(kind):
        rs = runs[kind]
        steps = {k: med(r["steps"][k] for r in rs) for k in rs[0]["steps"]}
        inner = {k: med(r["forget_breakdown"][k] for r in rs) for k in rs[0]["forget_breakdown"]}
        return {"wall": med(r["wall"] for r in rs),
                "interpreter start-up": med(r["startup_s"] for r in rs),
                **steps, "forget": med(r["forget_s"] for r in rs), "forget_breakdown": inner,
                "exit": med(r["exit_s"] for r in rs),
                "compiles": [r["compiles"] for r in rs], "cache_hits": [r["cache_hits"] for r in rs],
                "datasets_imported": any(r["datasets_imported"] for r in rs)}

    call = med(r["forget_s"] for r in runs["warm_probe"])  # the forget itself, imports done
    return {
        "fresh_cold_cache_s": cold, "fresh_warm_cache_s": warm, "in_process_warm_s": inproc,
        "fresh_warm_cache_forget_call_s": call, "fresh_call_over_in_process": call / inproc,
        "meets_target_forget_call": call <= TARGET_FRESH_OVER_WARM * inproc,
        "all": {k: v for k, v in runs.items() if k.endswith("cli") or k == "in_process"},
        "fresh_warm_over_in_process": warm / inproc, "fresh_cold_over_in_process": cold / inproc,
        "meets_target": warm <= TARGET_FRESH_OVER_WARM * inproc,
        "python_bare_s": bare, "python_import_jax_s": jax_only,
        "breakdown_cold_cache": breakdown("cold_probe"), "breakdown_warm_cache": breakdown("warm_probe"),
    }


def print_tables(out: dict) -> None:
    c = out["compiles"]
    print(f"== 1. XLA compilations: {out['dataset']} S={out['shards']} R={out['slices']}, one train + "
          f"{out['deletions']} single-id forgets, SISA_CACHE_DIR=off")
    print(f"compilations {c['compiles']} (train {c['compiles_train']}, forgets {c['compiles_forgets']}; "
          f"target <= {TARGET_COMPILES}: {'met' if c['compiles'] <= TARGET_COMPILES else 'NOT met'}), "
          f"lowerings {c['lowerings']}, traces {c['traces']}")
    print(f"forgets that compiled: {c['deletions_that_compiled']}; compile time {c['compile_seconds']:.2f} s, "
          f"lowering {c['lower_seconds']:.2f} s, tracing {c['trace_seconds']:.2f} s")
    print(f"{'program @ sisa line that asked for it':<58}{'compiles':>9}{'in train':>9}{'in forgets':>11}")
    for name, d in sorted(c["compiles_by_function_and_site"].items(), key=lambda kv: -kv[1]["compile"]):
        print(f"{name[:58]:<58}{d['compile']:>9}{d['train']:>9}{d['forget']:>11}")
    print("traces by function: " + ", ".join(f"{k} {v}" for k, v in sorted(c["traces_by_function"].items())))
    print()
    lt = out["latency"]
    print(f"== 2. forget 1 id, median of {out['repeats']} (target: fresh process, warm cache <= "
          f"{TARGET_FRESH_OVER_WARM} x in process)")
    print(f"{'':34}{'seconds':>9}{'/ in process':>13}")
    for name, s in (("fresh process, empty cache (CLI)", lt["fresh_cold_cache_s"]),
                    ("fresh process, warm cache (CLI)", lt["fresh_warm_cache_s"]),
                    ("  its forget call (imports done)", lt["fresh_warm_cache_forget_call_s"]),
                    ("in process, warm", lt["in_process_warm_s"])):
        print(f"{name:34}{s:>9.2f}{s / lt['in_process_warm_s']:>13.1f}")
    print(f"target: the forget in a fresh process {'met' if lt['meets_target_forget_call'] else 'NOT met'}; "
          f"the whole process {'met' if lt['meets_target'] else 'NOT met'} (python -c pass {lt['python_bare_s']:.2f} s, "
          f"python -c 'import jax' {lt['python_import_jax_s']:.2f} s)")
    print()
    print("where a fresh process's time goes (instrumented child, medians):")
    cold, warm = lt["breakdown_cold_cache"], lt["breakdown_warm_cache"]
    print(f"{'':34}{'empty cache':>12}{'warm cache':>12}")
    keys = ["interpreter start-up", "import jax", "import flax.nnx, optax", "import orbax.checkpoint",
            "import sisa", "start CPU backend", "forget"]
    for k in keys:
        print(f"{k:34}{cold[k]:>11.2f}s{warm[k]:>11.2f}s")
    for k in cold["forget_breakdown"]:
        print(f"{'  ' + k:34}{cold['forget_breakdown'][k]:>11.2f}s{warm['forget_breakdown'][k]:>11.2f}s")
    print(f"{'exit (atexit hooks, threads)':34}{cold['exit']:>11.2f}s{warm['exit']:>11.2f}s")
    print(f"{'total (wall)':34}{cold['wall']:>11.2f}s{warm['wall']:>11.2f}s")
    print(f"{'compilations / cache hits':34}{str(cold['compiles'][0]) + ' / ' + str(cold['cache_hits'][0]):>12}"
          f"{str(warm['compiles'][0]) + ' / ' + str(warm['cache_hits'][0]):>12}")


def print_first(out: dict, repeats: int) -> None:
    f = out["first_forget"]
    before, after = f["modes"]["before"], f["modes"]["after"]
    print(f"== 3. the first command after train, each in a fresh process with the cache train left: "
          f"lowerings / compilations (target 0 / 0: {'met' if f['meets_target'] else 'NOT met'})")
    print(f"{'':22}{'without compiling ahead':>26}{'compiling ahead (now)':>26}")
    for name in before["first"]:
        label = f"forget, {name.split()[1]} shard(s)" if name.startswith("forget") else name
        cells = [f"{r['lowerings']} / {r['compiles']}  {r['seconds']:5.2f} s" for r in (before["first"][name],
                                                                                          after["first"][name])]
        print(f"{label:22}{cells[0]:>26}{cells[1]:>26}")
    print(f"{'train, empty cache':22}{before['train_s']:>24.2f} s{after['train_s']:>24.2f} s"
          f"   x{f['train_overhead_ratio']:.2f} ({f['compiled_ahead']} programs compiled ahead)")
    print(f"{'train again, its cache':22}{before['train_warm_cache_s']:>24.2f} s{after['train_warm_cache_s']:>24.2f} s"
          f"   x{f['train_warm_cache_overhead_ratio']:.2f}   (train: wall, median of {repeats})")
    for name, r in after["first"].items():
        if r["compiled"]:
            print(f"  still compiled by {name}: {', '.join(r['compiled'])}")
    if f["source_changed_during_run"]:
        print("  WARNING: sisa's source changed during the run (the cache keys changed with it): run again")


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lt = out["latency"]
    cols = {"empty cache": lt["breakdown_cold_cache"], "warm cache": lt["breakdown_warm_cache"]}
    parts = ["interpreter start-up", "import jax", "import flax.nnx, optax", "import orbax.checkpoint",
             "import sisa", "start CPU backend"]
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(cols) + ["in process"]
    bottom = [0.0] * 3
    for p in parts:
        vals = [cols[n][p] for n in cols] + [0.0]
        ax.bar(names, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for p in next(iter(cols.values()))["forget_breakdown"]:
        vals = [max(0.0, cols[n]["forget_breakdown"][p]) for n in cols] + [0.0]
        ax.bar(names, vals, bottom=bottom, label="forget: " + p, hatch="//")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.bar(names, [cols[n]["exit"] for n in cols] + [0.0], bottom=bottom, label="exit")
    ax.bar(["in process"], [lt["in_process_warm_s"]], color="black", label="in process, warm forget")
    ax.axhline(TARGET_FRESH_OVER_WARM * lt["in_process_warm_s"], color="red", ls=":", label="target")
    ax.set_ylabel("seconds")
    ax.set_title(f"forget 1 id, {out['dataset']} S={out['shards']} R={out['slices']}")
    ax.legend(fontsize=6, loc="upper right")
    benchlib.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--deletions", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="~2 min smoke version")
    ap.add_argument("--first-only", action="store_true", help="only section 3 (the first command after train)")
    benchlib.output_flags(ap, "write a PNG of the fresh-process breakdown here")
    ap.add_argument("--child", choices=("count", "forget", "train", "first"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--id", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        children = {"count": child_count, "forget": child_forget, "train": child_train, "first": child_first}
        print(json.dumps(children[args.child](args)))
        return
    if args.quick:
        args.deletions, args.repeats = 10, 2
    log = lambda m: print(m, file=sys.stderr, flush=True)
    os.environ.setdefault("SISA_CACHE_DIR", "off")  # this process: in-process numbers are real compiles
    root = Path(tempfile.mkdtemp(prefix="sisa-bench-compiles-"))
    out = {"dataset": args.dataset, "shards": args.shards, "slices": args.slices, "deletions": args.deletions,
           "repeats": args.repeats, "quick": args.quick, "target_compiles": TARGET_COMPILES}
    try:
        if not args.first_only:
            me = str(Path(__file__).resolve())
            common = ["--dataset", args.dataset, "--shards", str(args.shards), "--slices", str(args.slices)]
            compiles, wall = spawn([me, "--child", "count", "--workdir", str(root / "count"), "--deletions",
                                    str(args.deletions), *common], {"SISA_CACHE_DIR": "off"})
            compiles["wall_s"] = wall
            log(f"  counted compilations ({wall:.0f} s)")
            out.update(compiles=compiles, compiles_meet_target=compiles["compiles"] <= TARGET_COMPILES,
                       latency=latency(args, root, log))
        out["first_forget"] = first_commands(args, root, log)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if not benchlib.finish(out, args, None if args.first_only else lambda path: plot(out, path)):
        if not args.first_only:
            print_tables(out)
            print()
        print_first(out, args.repeats)


if __name__ == "__main__":
    main()
