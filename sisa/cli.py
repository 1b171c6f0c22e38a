"""`sisa` command line: parse arguments, call `sisa.api`, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

from sisa.errors import SisaError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sisa", description="Exact machine unlearning by SISA training.", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, help, workdir=True):
        c = sub.add_parser(name, help=help, description=help, allow_abbrev=False)  # `--ids` is not `--ids-file`
        if workdir:
            c.add_argument("--workdir", required=True, help="the run's directory")
        c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return c

    t = cmd("train", "train (or resume) a sharded, sliced ensemble")
    t.add_argument("--config", help="TOML config (see experiments/)")
    t.add_argument("--dataset", help="registry name (mnist5k, digits, mnist, cifar10, svhn) or a path")
    t.add_argument("--shards", type=int)
    t.add_argument("--slices", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int, help="seed of the partition and of training")
    t.add_argument("--model", choices=["mlp", "cnn"])
    t.add_argument("--strategy", choices=["uniform", "stratified", "grouped"])
    t.add_argument("--aggregation", choices=["vote", "softmax"], help="default aggregation of the run")

    f = cmd("forget", "forget examples by id, exactly")
    f.add_argument("ids", nargs="*", help="example ids")
    f.add_argument("--ids-file", help="file of ids, whitespace- or comma-separated")
    f.add_argument("--request", help="reference of the erasure request (kept in the ledger)")
    f.add_argument("--reason", help="reason (kept in the ledger)")
    for c in (t, f):
        c.add_argument("--allow-environment-change", action="store_true",
                       help="go on although library versions or backend differ from training (recorded in the ledger)")

    pr = cmd("predict", "per-class probabilities and labels for inputs")
    pr.add_argument("--input", required=True, help=".npy file of inputs [N, ...]")
    pr.add_argument("--aggregation", choices=["vote", "softmax"])

    e = cmd("evaluate", "test accuracy per shard and aggregated")
    e.add_argument("--aggregation", choices=["vote", "softmax"])

    cmd("status", "shards, slices, examples, deletions, disk use")
    cmd("ledger", "list the deletion ledger")
    v = cmd("verify", "check ledger and lineage, retrain from scratch, compare bit for bit")
    v.add_argument("--shards", type=int, nargs="+", help="shards to retrain (default all)")
    cmd("audit", "scan the workdir for anything of forgotten examples")

    c = cmd("compare", "exact (SISA) vs approximate unlearning benchmark", workdir=False)
    c.add_argument("--config", required=True, help="compare config TOML, e.g. experiments/compare_mnist5k.toml")
    c.add_argument("--out", help="output directory (default: experiments/results/<config file stem>)")

    d = cmd("demo", "train on mnist5k, forget 10 ids, prove the result exact", workdir=False)
    d.add_argument("--workdir", help="keep the demo's runs here (default: a temporary directory)")
    return p


def _config(args):
    from pathlib import Path

    from sisa import config as config_lib
    from sisa.workdir import MANIFEST, Workdir

    if args.config:
        cfg = config_lib.load(args.config)
    elif (Path(args.workdir) / MANIFEST).exists():
        cfg = Workdir.open(args.workdir).config
    else:
        cfg = config_lib.Config()
    flags = {
        "data": {"dataset": args.dataset},
        "partition": {"shards": args.shards, "slices": args.slices, "seed": args.seed, "strategy": args.strategy},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "seed": args.seed},
    }
    changes = {k: {f: v for f, v in d.items() if v is not None} for k, d in flags.items()}
    cfg = cfg.replace(**{k: v for k, v in changes.items() if v})
    return cfg.replace(aggregation=args.aggregation) if args.aggregation else cfg


def parse_ids(tokens: list[str], source: str) -> list[int]:
    out = []
    for tok in tokens:
        try:
            out.append(int(tok))
        except ValueError:
            raise SisaError(f"not an integer id in {source}: {tok!r}") from None
    return out


def _ids(args) -> list[int]:
    ids = parse_ids(args.ids, "arguments")
    if args.ids_file:
        try:
            text = open(args.ids_file).read()
        except OSError as e:
            raise SisaError(f"cannot read ids file {args.ids_file}: {e.strerror}") from None
        ids += parse_ids(text.replace(",", " ").split(), args.ids_file)
    return ids


def _load_input(path: str) -> np.ndarray:
    """The numeric array [N, ...] in a .npy file, or in an .npz holding one array (or one named
    `x`). Anything unreadable or malformed is a SisaError naming the file and what to do."""
    fail = f"cannot read input {path}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise SisaError(f"{fail}: {e.strerror or e}") from None
    if not magic.startswith((b"\x93NUMPY", b"PK")):  # .npy, or the zip an .npz is
        raise SisaError(f"{fail}: not a NumPy .npy or .npz file; write the inputs with numpy.save")
    try:
        x = np.load(path, allow_pickle=False)
        if not isinstance(x, np.ndarray):  # an .npz: an NpzFile of named arrays
            with x as npz:
                names = list(npz.files)
                if not names:
                    raise SisaError(f"{fail}: the .npz holds no array; save the inputs as its only array or as `x`")
                if len(names) > 1 and "x" not in names:
                    raise SisaError(f"{fail}: the .npz holds arrays {sorted(names)}; keep one array, or name "
                                    f"the inputs `x`")
                name = "x" if "x" in names else names[0]
                x = npz[name]
                if not isinstance(x, np.ndarray):  # numpy hands over a member that is no .npy as bytes
                    raise SisaError(f"{fail}: the .npz member {name!r} is not a NumPy array; write the file "
                                    f"again with numpy.savez")
    except SisaError:
        raise
    except Exception as e:
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise SisaError(f"{fail}: it holds Python objects (pickled), which are not loaded; save a numeric "
                            f"array") from None
        raise SisaError(f"{fail}: the file is truncated or corrupted ({type(e).__name__}: {e}); write it "
                        f"again with numpy.save") from None
    if x.dtype.kind not in "biuf":
        raise SisaError(f"input {path}: inputs must be numbers (bool, integer or float); got dtype {x.dtype}")
    if x.ndim < 2:
        raise SisaError(f"input {path} must be one array of shape [N, ...]; got shape {x.shape} "
                        f"(for one example, save x[None])")
    return x


def run(args) -> dict:
    from sisa import api

    progress = sys.stderr.isatty()
    match args.command:
        case "train":
            return api.train(args.workdir, _config(args), progress=progress,
                             allow_environment_change=args.allow_environment_change)
        case "forget":
            return api.forget(args.workdir, _ids(args), request=args.request, reason=args.reason, progress=progress,
                              allow_environment_change=args.allow_environment_change)
        case "predict":
            return api.predict(args.workdir, _load_input(args.input), args.aggregation)
        case "evaluate":
            return api.evaluate(args.workdir, args.aggregation)
        case "status":
            return api.status(args.workdir)
        case "ledger":
            return api.ledger(args.workdir)
        case "verify":
            return api.verify(args.workdir, args.shards, progress=progress)
        case "audit":
            return api.audit(args.workdir)
        case "compare":
            from pathlib import Path

            out = args.out or str(Path("experiments/results") / Path(args.config).stem)
            return api.compare(args.config, out, progress=progress)
        case "demo":
            return api.demo(args.workdir, progress=progress)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command != "predict":
            result = run(args)
        else:  # its warnings about the inputs are shown as one line each
            with warnings.catch_warnings(record=True) as caught:
                try:
                    result = run(args)
                finally:
                    _show_warnings(args.command, caught)
    except SisaError as e:
        print(f"sisa {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sisa {args.command}: interrupted; the next command recovers", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=_jsonable))
    elif result.get("role") == "follower":  # a cluster process other than the leader (sisa.cluster)
        print(f"process {result['process']}: trained shards {result['shards_trained'] or 'none'} for the leader")
    else:
        from sisa.report import render

        print(render(args.command, result))
    failed = (args.command == "verify" and result.get("verdict", "verified") != "verified") or (
        args.command == "audit" and not result["clean"])
    return 1 if failed else 0


def _show_warnings(command: str, caught: list) -> None:
    """sisa's own warnings (about the user's input) as one line `sisa <cmd>: warning: ...`;
    any other warning as Python would have shown it."""
    serve = sys.modules.get("sisa.serve")  # not imported: none of its warnings can have been raised
    for w in caught:
        if serve is not None and issubclass(w.category, serve.InputRangeWarning):
            print(f"sisa {command}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def entry() -> None:
    """The `sisa` command. Once the result is out, skip the interpreter's teardown (~0.3 s of
    JAX and orbax clean-up): by then every file the command wrote is closed and synced. In a
    cluster, exit normally so that jax.distributed shuts down in order."""
    from sisa import cluster

    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`sisa status --json | head -c 10`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        code = 141  # 128 + SIGPIPE, as a shell reports a command killed by a closed pipe
    if cluster.joined():
        sys.exit(code)
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
