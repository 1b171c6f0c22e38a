"""Time `verify` (ledger + lineage checks + retraining every shard from scratch) against training.

    python scripts/bench_verify.py [--dataset mnist5k] [--forget 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import sisa
from sisa.data import datasets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--forget", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sisa-bench-verify-")) / "run"
    ds = datasets.load(args.dataset)
    cfg = sisa.Config().replace(data={"dataset": args.dataset})
    sisa.train(root.with_name("warmup"), cfg, dataset=ds, progress=False)  # compile once
    t0 = time.perf_counter()
    sisa.train(root, cfg, dataset=ds, progress=False)
    train = time.perf_counter() - t0
    sisa.forget(root, np.random.default_rng(0).choice(ds.ids, args.forget, replace=False).tolist(), progress=False)
    t0 = time.perf_counter()
    cert = sisa.verify(root, progress=False)
    verify = time.perf_counter() - t0
    out = {"train_seconds": train, "verify_seconds": verify, "ratio": verify / train, "verdict": cert["verdict"]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"train {train:.2f} s, verify {verify:.2f} s ({verify / train:.2f}x training), verdict {cert['verdict']}")


if __name__ == "__main__":
    main()
