"""`sisa` command line: parse arguments, call `sisa.api`, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings

# Light on purpose: `--help`, `--version`, `status`, `ledger` and `audit` never import JAX (nor
# numpy for the first two); what a command needs is imported where it is used.
from sisa.errors import SisaError
from sisa.experiments import EXPERIMENTS
from sisa.report import safe


class _Usage(SystemExit):
    """A usage error (exit 2): `line` for stderr, `message` what it says after `error: `."""

    def __init__(self, prog: str, message: str):
        super().__init__(2)
        self.message, self.line = message, f"{prog}: error: {safe(message)}"


class _Help(argparse.HelpFormatter):
    """Help text may name a config default as `{config.partition.shards}`: filled in only when
    help is shown, so that building the parser imports no config (nor numpy)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "{config." in text:
            from sisa.config import Config

            def default(m):
                v = Config()
                for part in m[1].split("."):
                    v = getattr(v, part)
                return str(v)

            text = re.sub(r"\{config\.([\w.]+)\}", default, text)
        return text


class _Version(argparse.Action):
    """`sisa --version`: the installed package's version, from its metadata (no JAX)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata

        try:
            version = metadata.version("sisa")
        except metadata.PackageNotFoundError:  # run from a source tree that was never installed
            version = "(version unknown: not installed)"
        print(f"sisa {version}")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, `sisa <cmd>: error: ...` (exit 2); `--help` shows the usage."""

    def error(self, message):
        raise _Usage(self.prog, message)

    def parse_args(self, args=None, namespace=None):
        args, extra = self.parse_known_args(args, namespace)
        if extra:  # named by the command they were given to, not by `sisa`
            raise _Usage(f"{self.prog} {args.command}", f"unrecognized arguments: {' '.join(extra)}")
        return args


def _whole(text: str) -> int | None:
    """`text` as an integer if it is plain ASCII decimal digits (a leading '-' allowed), else None.
    Not `int()`: it also takes '1_3', ' 7', '１２' (full-width) and other Unicode digits."""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(text) if len(digits) <= 20 else (-1 if text.startswith("-") else 10**20)  # far out of any range


def _flag(key: str):
    """argparse type of an integer flag that sets config field `key`, with its range."""

    def parse(text: str) -> int:
        # Imported here, not when the parser is built: `--help` and `--version` stay light.
        from sisa.config import INT_RANGES

        lo, hi = INT_RANGES[key]
        n = _whole(text)
        if n is None or not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer from {lo} to {hi}, got {text!r}")
        return n

    return parse


def _port(text: str) -> int:
    n = _whole(text)
    if n is None or not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return n


def _shard_number(text: str) -> int:
    n = _whole(text)
    if n is None or n < 0:
        raise argparse.ArgumentTypeError(f"shards are numbered 0, 1, 2, ...; got {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sisa", description="Exact machine unlearning by SISA training. Shards, slices and stages "
                "are numbered from 0: a run of S shards x R slices has shards 0..S-1, stages 0..R-1.",
                allow_abbrev=False, formatter_class=_Help)
    p.add_argument("--version", action=_Version, help="print sisa's version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, help, workdir=True):
        c = sub.add_parser(name, help=help, description=help, allow_abbrev=False,  # `--ids` is not `--ids-file`
                           formatter_class=_Help)
        if workdir:
            c.add_argument("--workdir", required=True, help="the run's directory (required)")
        c.add_argument("--json", action="store_true",
                       help="print one JSON object on stdout; on failure {\"error\", \"kind\"} (default: text)")
        return c

    # A train flag overrides the run's config: --config's, an existing run's, else the defaults.
    run = "default: from --config or the existing run, else {config.%s}"
    t = cmd("train", "train (or resume) a sharded, sliced ensemble")
    t.add_argument("--config", help="TOML config, see experiments/ (default: the existing run's config, else the "
                                    "built-in defaults)")
    t.add_argument("--dataset", help="registry name (mnist5k, digits, mnist, cifar10, svhn; text: pydoc) or a path "
                                     f"({run % 'data.dataset'})")
    t.add_argument("--shards", type=_flag("partition.shards"), help=f"number of shards ({run % 'partition.shards'})")
    t.add_argument("--slices", type=_flag("partition.slices"),
                   help=f"slices per shard, one stage each ({run % 'partition.slices'})")
    t.add_argument("--epochs", type=_flag("train.epochs"), help=f"training epochs ({run % 'train.epochs'})")
    t.add_argument("--schedule", choices=["budget", "fractional", "uniform"],
                   help="epochs per stage: the paper's budget in whole epochs, the budget to the step (for many "
                        f"slices), or every stage all epochs ({run % 'train.schedule'})")
    t.add_argument("--seed", type=_flag("train.seed"), help=f"seed of the partition and of training ({run % 'train.seed'})")
    t.add_argument("--model", help="mlp, cnn, resnet18, transformer, transformer_lm, or your own Flax NNX module as "
                                   f"package.module:Class ({run % 'model.name'})")
    t.add_argument("--strategy", choices=["uniform", "stratified", "grouped"],
                   help=f"how examples are spread over shards ({run % 'partition.strategy'})")
    t.add_argument("--aggregation", choices=["vote", "softmax"],
                   help=f"default aggregation of the run ({run % 'aggregation'})")

    f = cmd("forget", "forget examples by id, exactly")
    f.add_argument("ids", nargs="*", help="example ids (default: none; give them here, with --ids-file, or both)")
    f.add_argument("--ids-file", help="file of ids, whitespace- or comma-separated (default: none)")
    f.add_argument("--request", help="reference of the erasure request, kept in the ledger (default: none)")
    f.add_argument("--reason", help="reason, kept in the ledger (default: none)")
    f.add_argument("--group", help="forget every example of this group/user value of the data (default: none; not "
                                   "with ids)")
    for c in (t, f):
        c.add_argument("--allow-environment-change", action="store_true",
                       help="go on although library versions or backend differ from training, recorded in the "
                            "ledger (default: refuse)")

    ad = cmd("add", "add new examples (new ids) as the run's next slice; only the shards they join train")
    ad.add_argument("--dataset", required=True, help="registry name or path of the examples to add, every row of it "
                                                     "(required)")
    ad.add_argument("--allow-environment-change", action="store_true",
                    help="go on although library versions or backend differ from training (default: refuse)")

    pr = cmd("predict", "per-class probabilities and labels for inputs")
    pr.add_argument("--input", required=True,
                    help=".npy file of inputs [N, ...]; for a text run a .txt file (one text per line) or .jsonl "
                         "(a `text` field, and for a language model an optional `continuation` to score) (required)")
    pr.add_argument("--aggregation", choices=["vote", "softmax"], help="default: the run's, set at training")

    e = cmd("evaluate", "test accuracy per shard and aggregated")
    e.add_argument("--aggregation", choices=["vote", "softmax"], help="default: the run's, set at training")

    cmd("status", "shards, slices, examples, deletions, disk use")
    lg = cmd("ledger", "list the deletion ledger")
    lg.add_argument("--head", action="store_true",
                    help="print only the ledger's head, N:HASH: keep it outside this machine and give it back to "
                         "`sisa verify --expect-head` to prove the ledger was not cut since (default: the whole "
                         "ledger)")
    v = cmd("verify", "check ledger and lineage, retrain from scratch, compare bit for bit")
    v.add_argument("--shards", type=_shard_number, nargs="+", help="shards to retrain (default: all)")
    v.add_argument("--expect-head", metavar="N:HASH",
                   help="a head printed earlier by `sisa ledger --head`; fail unless the ledger still holds it "
                        "(default: not checked)")
    a = cmd("audit", "scan the workdir for anything of forgotten examples")
    a.add_argument("--source", help="the original data set file or directory (default: the path recorded at training)")

    c = cmd("compare", "exact (SISA) vs approximate unlearning benchmark", workdir=False)
    c.add_argument("--config", required=True,
                   help="compare config TOML, e.g. experiments/compare_mnist5k.toml (required)")
    c.add_argument("--out", help="output directory, new or empty (default: runs/compare/<config file stem>-<time>; "
                                 "committed results are never written over)")
    c.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (default: refuse)")
    c.add_argument("--quick", action="store_true",
                   help="a short budget: one seed, one forget fraction, the smallest SISA run, each grid's first "
                        "value (default: the config's full budget)")

    sv = cmd("serve", "serve predictions over HTTP and forget on request (one server per workdir)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; any other needs a "
                                                        "token)")
    sv.add_argument("--port", type=_port, default=8080, help="port (default: 8080)")
    sv.add_argument("--token-file", help="file holding the bearer token every request but /healthz must send "
                                         "(default: $SISA_TOKEN, else none: loopback only)")
    sv.add_argument("--batch-window", type=float, default=2.0,
                    help="seconds a retraining waits for more requests to do them together (default: 2.0)")
    sv.add_argument("--open-predict", action="store_true", help="let /v1/predict answer without the token "
                                                                "(default: it needs it)")
    sv.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default: 16)")

    e = cmd("experiment", "run one of the paper's experiments and write its results, plots and report", workdir=False)
    e.add_argument("name", metavar="NAME", help="the experiment (required), one of: " + ", ".join(EXPERIMENTS))
    e.add_argument("--out", help="output directory, new or empty (default: runs/experiments/NAME-<time>; committed "
                                 "results are never written over)")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (default: refuse)")
    e.add_argument("--quick", action="store_true", help="a budget of minutes: the shape of the result, fewer seeds "
                                                        "and settings (default: the full experiment)")

    d = cmd("demo", "train on mnist5k, forget 10 ids, prove the result exact", workdir=False)
    d.add_argument("--workdir", help="keep the demo's runs here (default: a temporary directory)")
    d.add_argument("--text", action="store_true",
                   help="a sharded language model on the embedded pydoc text corpus instead (default: mnist5k)")
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
        "train": {"epochs": args.epochs, "seed": args.seed, "schedule": args.schedule},
    }
    changes = {k: {f: v for f, v in d.items() if v is not None} for k, d in flags.items()}
    cfg = cfg.replace(**{k: v for k, v in changes.items() if v})
    return cfg.replace(aggregation=args.aggregation) if args.aggregation else cfg


def parse_ids(tokens: list[str], source: str) -> list[int]:
    """Ids as plain ASCII decimal numbers from 0 to MAX_ID; anything else is refused, quoted."""
    from sisa.data.datasets import MAX_ID

    out = []
    for tok in tokens:
        n = _whole(tok)
        if n is None:
            shown = repr(tok) if len(tok) <= 40 else repr(tok[:40]) + "..."
            raise SisaError(f"not an integer id in {source}: {shown} (ids are plain decimal numbers from 0 to {MAX_ID})")
        if not 0 <= n <= MAX_ID:
            raise SisaError(f"id {tok if len(tok) <= 40 else tok[:40] + '...'} in {source} is out of range: ids are "
                            f"0 to {MAX_ID}")
        out.append(n)
    return out


def _ids(args) -> list[int]:
    ids = parse_ids(args.ids, "arguments")
    if args.ids_file:
        try:
            with open(args.ids_file, "rb") as f:
                text = f.read().decode()
        except OSError as e:
            raise SisaError(f"cannot read ids file {args.ids_file}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise SisaError(f"ids file {args.ids_file} is not UTF-8 text (byte {e.start}); write one decimal id "
                            "per line, or separate them with spaces or commas") from None
        ids += parse_ids(text.replace(",", " ").split(), args.ids_file)
    return ids


def _shards(args) -> list[int] | None:
    """`verify --shards`: each a shard of the workdir, each once."""
    if args.shards is None:
        return None
    from sisa.workdir import Workdir

    n = Workdir.open(args.workdir).config.partition.shards
    for i, s in enumerate(args.shards):
        if s >= n:
            raise SisaError(f"no shard {s} in {args.workdir}: its shards are 0 to {n - 1}")
        if s in args.shards[:i]:
            raise SisaError(f"shard {s} is given twice")
    return args.shards


def _load_texts(path: str) -> list:
    """A text run's inputs: a .txt file's lines, or a .jsonl file's objects (each with a `text`,
    kept whole so that a language model sees an optional `continuation`), read as text data is."""
    from pathlib import Path

    from sisa.data import text

    try:
        out = text.read_lines(Path(path)) if path.endswith(".txt") else text.read_jsonl(Path(path))
    except OSError as e:
        raise SisaError(f"cannot read input {path}: {e.strerror or e}") from None
    if not out:
        raise SisaError(f"input {path} holds no texts; give one per line")
    return out


def _load_input(path: str):
    """The numeric array [N, ...] in a .npy file, or in an .npz holding one array (or one named
    `x`); texts in a .txt or .jsonl file. Anything unreadable or malformed is a SisaError naming
    the file and what to do."""
    import numpy as np

    if path.endswith((".txt", ".jsonl")):
        return _load_texts(path)
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
    if not len(x):
        raise SisaError(f"input {path} holds no examples (shape {x.shape}); save at least one row")
    return x


def run(args) -> dict:
    from sisa import api

    progress = sys.stderr.isatty()
    workdir = getattr(args, "workdir", None)
    if workdir is not None and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise SisaError(f"workdir {workdir} is not a directory")
    match args.command:
        case "train":
            return api.train(args.workdir, _config(args), progress=progress,
                             allow_environment_change=args.allow_environment_change)
        case "forget":
            if args.group is not None and (args.ids or args.ids_file):
                raise SisaError("give ids or --group, not both", kind="usage")
            ids = None if args.group is not None else _ids(args)
            return api.forget(args.workdir, ids, group=args.group, request=args.request, reason=args.reason,
                              progress=progress, allow_environment_change=args.allow_environment_change)
        case "add":
            return api.add(args.workdir, args.dataset, progress=progress,
                           allow_environment_change=args.allow_environment_change)
        case "serve":
            from sisa import service

            if not (0 <= args.batch_window <= 3600) or not (0 < args.max_body_mb <= 4096):
                raise SisaError("--batch-window must lie in [0, 3600] seconds and --max-body-mb in (0, 4096]",
                                kind="usage")
            token = service.read_token(args.token_file, os.environ)
            service.serve(args.workdir, host=args.host, port=args.port, token=token, batch_window=args.batch_window,
                          open_predict=args.open_predict, max_body=int(args.max_body_mb * 2**20))
            return {"served": str(args.workdir)}
        case "predict":
            return api.predict(args.workdir, _load_input(args.input), args.aggregation)
        case "evaluate":
            return api.evaluate(args.workdir, args.aggregation)
        case "status":
            return api.status(args.workdir)
        case "ledger":
            r = api.ledger(args.workdir)
            return {k: r[k] for k in ("anchor", "records", "head")} if args.head else r
        case "verify":
            return api.verify(args.workdir, _shards(args), expect_head=args.expect_head, progress=progress)
        case "audit":
            return api.audit(args.workdir, args.source)
        case "compare":
            from pathlib import Path

            import time

            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = args.out or str(Path("runs") / "compare" / f"{Path(args.config).stem}{'-quick' * args.quick}-{stamp}")
            return api.compare(args.config, out, progress=progress, overwrite=args.overwrite, quick=args.quick)
        case "experiment":
            from sisa import experiments

            return experiments.run(args.name, args.out, quick=args.quick, overwrite=args.overwrite, progress=progress)
        case "demo":
            return api.demo(args.workdir, progress=progress, text=args.text)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. A failure is one line on stderr, `sisa <cmd>: error: ...`,
    and with `--json` also one object on stdout, {"error": the message, "kind": a stable word}: "usage",
    "bad_input", "not_found", "busy", "corrupted", "environment", "os_error", "internal" or "interrupted"."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _parser().parse_args(argv)
    except _Usage as e:  # one line, named by the command it was given to
        print(e.line, file=sys.stderr)
        if "--json" in (argv[:argv.index("--")] if "--" in argv else argv):
            print(json.dumps({"error": e.message, "kind": "usage"}))
        return 2
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 1
    try:
        with warnings.catch_warnings(record=True) as caught:  # sisa's own are shown as one line each
            try:
                result = run(args)
            finally:
                _show_warnings(args.command, caught)
    except SisaError as e:
        return _refuse(args, str(e), _kind(e, args))
    except KeyboardInterrupt:
        return _refuse(args, "interrupted; the next command recovers", "interrupted", code=130, prefix="")
    except Exception as e:  # still one line: an error of the system (a full disk), else a bug
        if os.environ.get("SISA_DEBUG"):
            raise
        why = _os_error(e, getattr(args, "workdir", None))
        if why is None:
            return _refuse(args, f"unexpected {type(e).__name__}: {str(e)[:500]} (a bug in sisa? run again with "
                                 "SISA_DEBUG=1 for the traceback)", "internal")
        if args.command in ("train", "forget"):
            why += f"; once that is fixed, `sisa train --workdir {args.workdir}` finishes what this command began"
        return _refuse(args, why, "os_error")
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


def _refuse(args, message: str, kind: str, *, code: int = 1, prefix: str = "error: ") -> int:
    print(f"sisa {args.command}: {prefix}{safe(message)}", file=sys.stderr)
    if args.json:  # json.dumps escapes every control and non-ASCII character: the message as it is
        print(json.dumps({"error": message, "kind": kind}))
    return code


# The kind of a refusal by its class, looked up among the modules imported (one that was not
# raised none of its errors); any other SisaError is "not_found" or "bad_input".
_KINDS = (("sisa.workdir", "WorkdirBusy", "busy"), ("sisa.checkpoint", "CheckpointCorrupted", "corrupted"),
          ("sisa.checkpoint", "CheckpointUnreadable", "environment"))


def _kind(e: SisaError, args) -> str:
    """A short, stable word for what went wrong: an error's own `kind` if it has one, else by class;
    "not_found" when the command needs a trained run and `--workdir` holds none."""
    kind = getattr(e, "kind", None)
    if isinstance(kind, str) and kind:
        return kind
    for module, name, kind in _KINDS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return kind
    workdir = getattr(args, "workdir", None)
    if args.command not in ("train", "compare", "experiment", "demo") and workdir is not None and \
            not os.path.isfile(os.path.join(workdir, "sisa.json")):
        return "not_found"
    return "bad_input"


def _os_error(e: BaseException, where: str | None) -> str | None:
    """`<strerror>: <file>` of the operating-system error behind `e`, the first in its chain (a
    full disk, say, rather than a clean-up that failed because of it): an OSError, or one that
    orbax's storage layer (tensorstore) names by code in its message. None if none."""
    seen, found = set(), None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            found = e.errno, e.filename
        elif m := re.search(r"os_error_code='?(\d+)", str(e)):
            found = int(m[1]), next(iter(re.findall(r'file "([^"]+)"', str(e))), None)
        e = e.__cause__ or e.__context__
    return None if found is None else f"{os.strerror(found[0])}: {found[1] or where or 'unknown file'}"


def _show_warnings(command: str, caught: list) -> None:
    """sisa's own warnings (about the user's input) as one line `sisa <cmd>: warning: ...`;
    any other warning as Python would have shown it."""
    own = tuple(getattr(sys.modules.get(m), name) for m, name in (
        ("sisa.serve", "InputRangeWarning"), ("sisa.training.aot", "ProgramCacheWarning"),
        ("sisa.config", "ScheduleWarning")) if m in sys.modules)
    for w in caught:  # a module not imported raised none of its warnings
        if issubclass(w.category, own):
            print(f"sisa {command}: warning: {safe(w.message)}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def _jsonable(o):
    import numpy as np

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

    if not os.environ.get("SISA_DEBUG"):
        # After a failed write (a full disk) orbax logs it in each of its threads, and callbacks
        # of its storage layer raise into a closed event loop ("exception ignored"), tracebacks
        # and all; main() reports the error that reaches it, once. sisa itself logs nothing.
        logging.disable(logging.ERROR)
        sys.unraisablehook = lambda unraisable: None
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
