"""What the benchmark scripts share: output flags, writing results, saving figures."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def output_flags(ap: argparse.ArgumentParser, plot_help: str) -> None:
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--plot", help=plot_help)


def finish(out: dict, args, plot: Callable[[str], None] | None = None) -> bool:
    """Write `--out`, draw `--plot`, print `--json`. True when JSON went to stdout (print no table)."""
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.plot and plot is not None:
        plot(args.plot)
    if args.json:
        print(json.dumps(out))
    return args.json


def count_compiles(counter: list[int]) -> None:
    """From now on, add this process's XLA compilations (jax.monitoring) to `counter[0]`."""
    import jax

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)


def save_figure(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
