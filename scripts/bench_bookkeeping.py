"""What a one-id forget spends besides training, as the data grows.

    python scripts/bench_bookkeeping.py [--sizes 200000,2000000] [--features 600,16] [--shards 20]
                                        [--slices 4] [--forgets 5] [--quick] [--json] [--out F.json]

For each size N (a Purchase-like synthetic set, `sisa.data.synthetic.purchase_like`, with the
matching `--features`): train S x R once, forget one untimed id (programs compiled), then
`--forgets` single-id requests, each an id of the last slice of a random shard (the cheapest
retraining, so bookkeeping weighs most). Each forget's wall time is split, by wrapping the
library's own functions, into

    train      sisa.training.loop.complete (retraining the affected shard, checkpoints included)
    store      Store.load / Store.save (reading and rewriting the data store)
    ledger     Ledger._append / Ledger.records (appending, reading and checking the chain)
    other      the rest: snapshot and plan, checkpoint deletion, lineage checks, validation

Target (issue "Fast from the first call"): the non-training part <= 10% of the retraining time,
at every N. Medians over the forgets. Runs in temporary directories, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TARGET = 0.10


class Timers:
    """Wraps functions so that the seconds spent in each (outermost call only) add up per label."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._depth = 0

    def wrap(self, owner, name: str, label: str):
        inner = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            if timers._depth:
                return inner(*args, **kwargs)
            timers._depth += 1
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                timers.seconds[label] = timers.seconds.get(label, 0.0) + time.perf_counter() - t
                timers._depth -= 1

        setattr(owner, name, timed)


def run_size(n: int, features: int, args) -> dict:
    import numpy as np

    import sisa
    from sisa.config import Config
    from sisa.data import store as store_lib
    from sisa.data.synthetic import purchase_like
    from sisa import deletion_ledger
    from sisa.training import loop
    from sisa.workdir import Workdir

    ds = purchase_like(n=n, features=features)
    cfg = Config().replace(data={"dataset": "purchase-synth"}, partition={"shards": args.shards, "slices": args.slices},
                           train={"epochs": args.epochs})
    with tempfile.TemporaryDirectory(prefix="sisa-bench-bookkeeping-") as tmp:
        root = Path(tmp) / "run"
        t = time.perf_counter()
        sisa.train(root, cfg, dataset=ds, progress=False)
        train_s = time.perf_counter() - t
        rng = np.random.default_rng(0)
        store = Workdir.open(root).store()
        last = store.ids[store.slice == args.slices - 1]
        picks = rng.choice(last, args.forgets + 1, replace=False).tolist()
        sisa.forget(root, [picks[0]], progress=False)  # untimed: compiles the one-lane program
        timers = Timers()
        timers.wrap(loop, "complete", "train")
        timers.wrap(store_lib.Store, "load", "store")
        timers.wrap(store_lib.Store, "save", "store")
        timers.wrap(deletion_ledger.Ledger, "_append", "ledger")
        timers.wrap(deletion_ledger.Ledger, "records", "ledger")
        rows = []
        for i in picks[1:]:
            timers.seconds.clear()
            t = time.perf_counter()
            sisa.forget(root, [i], progress=False)
            wall = time.perf_counter() - t
            s = dict(timers.seconds)
            trained = s.get("train", 0.0)
            rows.append({"wall": wall, "train": trained, "store": s.get("store", 0.0), "ledger": s.get("ledger", 0.0),
                         "other": wall - trained - s.get("store", 0.0) - s.get("ledger", 0.0),
                         "bookkeeping_over_train": (wall - trained) / trained if trained else float("inf")})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"n": n, "features": features, "train_all_seconds": train_s, "forgets": rows, "median": med,
            "meets_target": med["bookkeeping_over_train"] <= TARGET}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="200000,2000000", help="data set sizes N (default: %(default)s)")
    ap.add_argument("--features", default="600,16", help="features per size (default: %(default)s)")
    ap.add_argument("--shards", type=int, default=20, help="S (default: %(default)s)")
    ap.add_argument("--slices", type=int, default=4, help="R (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=2, help="E (default: %(default)s)")
    ap.add_argument("--forgets", type=int, default=5, help="timed single-id forgets per size (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="N = 20000 and 200000 only, 3 forgets")
    benchlib.output_flags(ap, "unused")
    args = ap.parse_args()
    sizes, feats = [int(s) for s in args.sizes.split(",")], [int(f) for f in args.features.split(",")]
    if args.quick:
        sizes, feats, args.forgets = [20_000, 200_000], [600, 600], 3
    if len(feats) != len(sizes):
        ap.error("--features needs one value per size")
    results = [run_size(n, f, args) for n, f in zip(sizes, feats)]
    out = {"config": {"shards": args.shards, "slices": args.slices, "epochs": args.epochs}, "target": TARGET,
           "sizes": results}
    if benchlib.finish(out, args):
        return 0
    print(f"one-id forget, S={args.shards} R={args.slices} E={args.epochs}; medians over {args.forgets} forgets "
          f"(an id of the last slice: the least retraining)")
    print(f"{'N':>9} {'feat':>5} {'wall s':>8} {'train s':>8} {'store s':>8} {'ledger s':>9} {'other s':>8} "
          f"{'(wall-train)/train':>19}  target <= {TARGET:.2f}")
    for r in results:
        m = r["median"]
        print(f"{r['n']:>9} {r['features']:>5} {m['wall']:>8.3f} {m['train']:>8.3f} {m['store']:>8.3f} "
              f"{m['ledger']:>9.3f} {m['other']:>8.3f} {m['bookkeeping_over_train']:>19.2f}  "
              f"{'met' if r['meets_target'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
