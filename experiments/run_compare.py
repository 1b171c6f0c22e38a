"""Exact vs approximate unlearning: run the comparison benchmark of one config.

    python experiments/run_compare.py --config experiments/compare_mnist5k.toml \
        --out experiments/results/compare_mnist5k --overwrite [--quick] [--json]

Writes report.md, results.json and the PNG plots to --out (see sisa/eval/compare.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sisa.errors import SisaError
from sisa.eval import compare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="compare config (TOML), e.g. experiments/compare_mnist5k.toml")
    ap.add_argument("--out", help="output directory (default: experiments/results/<config name>)")
    ap.add_argument("--overwrite", action="store_true", help="replace what --out holds (default: refuse)")
    ap.add_argument("--quick", action="store_true", help="a short budget (see sisa.eval.compare.quick)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    out = args.out or str(Path("experiments/results") / Path(args.config).stem)
    try:
        result = compare.run(args.config, out, progress=sys.stderr.isatty(), overwrite=args.overwrite,
                             short=args.quick)
    except SisaError as e:
        print(f"run_compare: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['report']} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
