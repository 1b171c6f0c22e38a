"""Hostile input through the `sisa` command line: every refusal is one clear line.

A table of hostile cases (ids, configs, flags, workdir states, predict inputs, data sets,
the environment, terminal escapes), each driven through `sisa.cli.main` in-process, a few
through a real process. For each: a non-zero exit, exactly one line on stderr starting
`sisa <command>: error:`, no traceback, no raw control character, nothing on stdout, and
every file under the test's directory (the workdir, the inputs) byte-identical afterwards,
nothing added or removed. Then the successes around them: request text with terminal escapes
is kept as given and shown escaped; a full disk during a forget is one line, the request
stays recorded, and the next `sisa train` finishes it.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sisa.api
from sisa.cli import main
from tests.conftest import blobs, file_digests, trained_and_forgotten

FORGOTTEN = 5  # the id the `forgotten` base workdir has forgotten; the blobs' ids are 5, 8, 11, ...


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_cfg) -> dict:
    """One run trained once per module (`trained`), and a copy of it that forgot id 5 (`forgotten`)."""
    return trained_and_forgotten(tmp_path_factory.mktemp("hostile"), tiny_cfg, FORGOTTEN)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*") if p.name != ".lock"}


def state(root: Path):
    return file_digests(root), tree(root)


class Case:
    """What one case works in: `run` (a private copy of a base workdir), `tmp` (everything the
    case writes lives here; `new` is a workdir that must never appear), `data` (blobs.npz)."""

    def __init__(self, tmp: Path, run: Path, data: Path, monkeypatch):
        self.tmp, self.run, self.data, self.new, self.mp = tmp, run, data, tmp / "new", monkeypatch

    def file(self, name: str, content) -> Path:
        path = self.tmp / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def npy(self, name: str, array, **kw) -> Path:
        path = self.tmp / name
        np.save(path, array, **kw)
        return path

    def npz(self, name: str, **override) -> Path:
        ds = blobs()
        arrays = dict(x=ds.x, y=ds.y, id=ds.ids, x_test=ds.x_test, y_test=ds.y_test) | override
        path = self.tmp / name
        np.savez(path, **arrays)
        return path

    def config(self, text: str | bytes) -> Path:
        return self.file("bad.toml", text)

    def train_new(self, *extra) -> list:
        return ["train", "--workdir", self.new, "--dataset", self.data, "--shards", 3, *extra]

    def train_new_on(self, data) -> list:
        return ["train", "--workdir", self.new, "--dataset", data, "--shards", 3]

    def data_copy(self) -> Path:
        return Path(shutil.copy(self.data, self.tmp / "blobs.npz"))

    def truncate(self, relative: str, keep: float = 0.5) -> None:
        path = self.run / relative
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    def reorder_store(self) -> None:
        path = self.run / "data" / "train.npz"
        with np.load(path) as f:
            a = {k: f[k] for k in f.files}
        a["ids"] = a["ids"][::-1].copy()
        np.savez(path, **a)

    def edit_ledger(self) -> None:
        path = self.run / "ledger.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        rec = json.loads(lines[0])
        rec["reason"] = "edited"
        lines[0] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
        path.write_text("".join(lines))


# ---------------------------------------------------------------------------- the table
# (case id, base workdir, argv maker, phrase the one line must contain)

T, F = "trained", "forgotten"
LONG = "9" * 5000  # more digits than Python's int() takes by default

CASES = [
    # ids
    ("id-letters", T, lambda c: ["forget", "--workdir", c.run, "abc"], "not an integer id in arguments: 'abc'"),
    ("id-float", T, lambda c: ["forget", "--workdir", c.run, "1.5"], "not an integer id in arguments: '1.5'"),
    ("id-underscore", T, lambda c: ["forget", "--workdir", c.run, "1_3"], "not an integer id in arguments: '1_3'"),
    ("id-fullwidth-digits", T, lambda c: ["forget", "--workdir", c.run, "１２"], "not an integer id"),
    ("id-arabic-indic-digit", T, lambda c: ["forget", "--workdir", c.run, "٥"], "not an integer id"),
    ("id-plus-sign", T, lambda c: ["forget", "--workdir", c.run, "+5"], "not an integer id in arguments: '+5'"),
    ("id-leading-space", T, lambda c: ["forget", "--workdir", c.run, " 5"], "not an integer id in arguments: ' 5'"),
    ("id-hex", T, lambda c: ["forget", "--workdir", c.run, "0x5"], "not an integer id in arguments: '0x5'"),
    ("id-negative", T, lambda c: ["forget", "--workdir", c.run, "-5"], "id -5 in arguments is out of range"),
    ("id-2**31", T, lambda c: ["forget", "--workdir", c.run, 2**31], "id 2147483648 in arguments is out of range"),
    ("id-2**63", T, lambda c: ["forget", "--workdir", c.run, 2**63], "out of range: ids are 0 to 2147483647"),
    ("id-5000-digits", T, lambda c: ["forget", "--workdir", c.run, LONG], "is out of range"),
    ("id-twice", T, lambda c: ["forget", "--workdir", c.run, 5, 5], "id 5 is given twice"),
    ("id-unknown", T, lambda c: ["forget", "--workdir", c.run, 4], "unknown id(s): 4"),
    ("ids-good-and-unknown", T, lambda c: ["forget", "--workdir", c.run, 5, 8, 4], "unknown id(s): 4"),
    ("ids-good-and-malformed", T, lambda c: ["forget", "--workdir", c.run, 5, 8, "x"], "not an integer id"),
    ("ids-none", T, lambda c: ["forget", "--workdir", c.run], "no ids given"),
    ("id-already-forgotten", F, lambda c: ["forget", "--workdir", c.run, FORGOTTEN], "already forgotten: 5"),
    ("ids-live-and-forgotten", F, lambda c: ["forget", "--workdir", c.run, 8, FORGOTTEN], "already forgotten: 5"),
    ("ids-all-remaining", T, lambda c: ["forget", "--workdir", c.run, "--ids-file",
                                        c.file("all.txt", " ".join(map(str, blobs().ids)))],
     "would leave no model"),
    ("ids-file-missing", T, lambda c: ["forget", "--workdir", c.run, "--ids-file", c.tmp / "none.txt"],
     "cannot read ids file"),
    ("ids-file-directory", T, lambda c: ["forget", "--workdir", c.run, "--ids-file", c.tmp],
     "Is a directory"),
    ("ids-file-symlink-loop", T, lambda c: (os.symlink("loop", c.tmp / "loop"),
                                            ["forget", "--workdir", c.run, "--ids-file", c.tmp / "loop"])[1],
     "Too many levels of symbolic links"),
    ("ids-file-not-utf8", T, lambda c: ["forget", "--workdir", c.run, "--ids-file", c.file("ids.bin", b"5 \xff\xfe 8")],
     "is not UTF-8 text (byte 2)"),
    ("ids-file-nul-byte", T, lambda c: ["forget", "--workdir", c.run, "--ids-file", c.file("ids.bin", b"5\x00 8")],
     "not an integer id"),
    ("ids-file-bad-token", T, lambda c: ["forget", "--workdir", c.run, "--ids-file", c.file("ids.txt", "5, 8\nx7")],
     "'x7'"),
    ("ids-file-and-args-twice", T, lambda c: ["forget", "--workdir", c.run, 8, "--ids-file", c.file("ids.txt", "8")],
     "id 8 is given twice"),
    # config files
    ("cfg-shards-string", T, lambda c: ["train", "--workdir", c.new, "--config", c.config('[partition]\nshards = "5"\n')],
     "partition.shards must be an integer from 1 to"),
    ("cfg-shards-float", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[partition]\nshards = 2.0\n")],
     "partition.shards must be an integer"),
    ("cfg-epochs-bool", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nepochs = true\n")],
     "train.epochs must be an integer from 1 to 1000000, got True"),
    ("cfg-epochs-table", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nepochs = {a = 1}\n")],
     "train.epochs must be an integer"),
    ("cfg-batch-size-zero", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nbatch_size = 0\n")],
     "train.batch_size must be an integer from 1"),
    ("cfg-lr-string", T, lambda c: ["train", "--workdir", c.new, "--config", c.config('[train]\nlearning_rate = "fast"\n')],
     "train.learning_rate must be a finite number > 0, got 'fast'"),
    ("cfg-lr-inf", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nlearning_rate = inf\n")],
     "train.learning_rate must be a finite number > 0, got inf"),
    ("cfg-lr-nan", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nlearning_rate = nan\n")],
     "got nan"),
    ("cfg-lr-negative", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nlearning_rate = -1e-3\n")],
     "train.learning_rate must be a finite number > 0"),
    ("cfg-hidden-int", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[model]\nhidden = 7\n")],
     "model.hidden must be"),
    ("cfg-hidden-zero-width", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[model]\nhidden = [0]\n")],
     "model.hidden must be"),
    ("cfg-hidden-strings", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[model]\nhidden = ['a']\n")],
     "model.hidden must be"),
    ("cfg-dropout-one", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[model]\ndropout = 1.0\n")],
     "model.dropout must be a number in [0, 1), got 1.0"),
    ("cfg-dropout-negative", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[model]\ndropout = -0.1\n")],
     "model.dropout must be a number in [0, 1)"),
    ("cfg-seed-2**32", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nseed = 4294967296\n")],
     "train.seed must be an integer from 0 to 4294967295"),
    ("cfg-seed-negative", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[partition]\nseed = -1\n")],
     "partition.seed must be an integer from 0"),
    ("cfg-seed-date", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\nseed = 1979-05-27\n")],
     "train.seed must be an integer"),
    ("cfg-one-class", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[data]\nnum_classes = 1\n")],
     "data.num_classes must be an integer from 2"),
    ("cfg-unknown-model", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[model]\nname = 'vit'\n")],
     "unknown model 'vit' (model.name: one of mlp, cnn, resnet18, transformer, transformer_lm, or your own"),
    ("cfg-unknown-optimizer", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train]\noptimizer = 1\n")],
     "unknown optimizer 1"),
    ("cfg-unknown-key", T, lambda c: ["train", "--workdir", c.run, "--config", c.config("[train]\nepochz = 3\n")],
     "unknown key(s) in [train]: epochz"),
    ("cfg-unknown-section", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[bogus]\nx = 1\n")],
     "unknown config section(s): bogus"),
    ("cfg-section-not-table", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("data = 5\n")],
     "config [data] must be a table"),
    ("cfg-aggregation-table", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[aggregation]\na = 1\n")],
     "unknown aggregation"),
    ("cfg-not-utf8", T, lambda c: ["train", "--workdir", c.new, "--config", c.config(b'[data]\ndataset = "\xff"\n')],
     "is not UTF-8 text"),
    ("cfg-not-toml", T, lambda c: ["train", "--workdir", c.new, "--config", c.config("[train\n")], "is not valid TOML"),
    ("cfg-directory", T, lambda c: ["train", "--workdir", c.new, "--config", c.tmp], "Is a directory"),
    ("cfg-missing", T, lambda c: ["train", "--workdir", c.new, "--config", c.tmp / "none.toml"],
     "config file not found"),
    # flags
    ("flag-seed-2**32", T, lambda c: c.train_new("--seed", 2**32), "argument --seed: must be an integer from 0 to 4294967295"),
    ("flag-seed-negative", T, lambda c: c.train_new("--seed", -1), "argument --seed"),
    ("flag-seed-letters", T, lambda c: c.train_new("--seed", "abc"), "argument --seed"),
    ("flag-seed-on-trained", T, lambda c: ["train", "--workdir", c.run, "--seed", 2**32], "argument --seed"),
    ("flag-shards-zero", T, lambda c: c.train_new("--shards", 0), "argument --shards: must be an integer from 1"),
    ("flag-shards-negative", T, lambda c: c.train_new("--shards", -3), "argument --shards"),
    ("flag-shards-fullwidth", T, lambda c: c.train_new("--shards", "３"), "argument --shards"),
    ("flag-epochs-zero", T, lambda c: c.train_new("--epochs", 0), "argument --epochs"),
    ("flag-slices-huge", T, lambda c: c.train_new("--slices", 10**9), "argument --slices"),
    ("flag-shards-beyond-examples", T, lambda c: c.train_new("--shards", 100000), "100000 shards but only 300"),
    ("flag-unknown", T, lambda c: ["status", "--workdir", c.run, "--bogus"], "unrecognized arguments: --bogus"),
    ("flag-workdir-missing", T, lambda c: ["status"], "the following arguments are required: --workdir"),
    ("verify-shard-out-of-range", T, lambda c: ["verify", "--workdir", c.run, "--shards", 99],
     "no shard 99 in"),
    ("verify-shard-negative", T, lambda c: ["verify", "--workdir", c.run, "--shards", -1], "argument --shards"),
    ("verify-shard-twice", T, lambda c: ["verify", "--workdir", c.run, "--shards", 1, 1], "shard 1 is given twice"),
    ("verify-shard-letters", T, lambda c: ["verify", "--workdir", c.run, "--shards", "x"], "argument --shards"),
    # workdir states
    ("workdir-is-file-status", T, lambda c: ["status", "--workdir", c.data_copy()], "is not a directory"),
    ("workdir-is-file-train", T, lambda c: ["train", "--workdir", c.data_copy()], "is not a directory"),
    ("workdir-is-file-forget", T, lambda c: ["forget", "--workdir", c.data_copy(), 5], "is not a directory"),
    ("workdir-missing", T, lambda c: ["evaluate", "--workdir", c.tmp / "missing"], "does not exist"),
    ("workdir-not-sisa", T, lambda c: (c.file("notes.txt", "mine"), ["status", "--workdir", c.tmp])[1],
     "is not a sisa workdir"),
    ("manifest-garbage", T, lambda c: (c.file("run/sisa.json", "{not json"), ["evaluate", "--workdir", c.run])[1],
     "manifest"),
    ("manifest-not-utf8", T, lambda c: (c.file("run/sisa.json", b"\xff\xfe{}"), ["evaluate", "--workdir", c.run])[1],
     "is unreadable"),
    ("manifest-a-list", T, lambda c: (c.file("run/sisa.json", "[1, 2]"), ["status", "--workdir", c.run])[1],
     "not a JSON object"),
    ("manifest-empty", T, lambda c: (c.file("run/sisa.json", ""), ["forget", "--workdir", c.run, 5])[1],
     "is unreadable"),
    ("config-toml-damaged", T, lambda c: (c.file("run/config.toml", "[train\n"), ["evaluate", "--workdir", c.run])[1],
     "is not valid TOML"),
    ("config-toml-wrong-type", T, lambda c: (c.file("run/config.toml", "[train]\nepochs = 'x'\n"),
                                             ["forget", "--workdir", c.run, 5])[1], "train.epochs must be an integer"),
    ("config-toml-edited", T, lambda c: (c.file("run/config.toml", "[train]\nepochs = 4\n"),
                                         ["evaluate", "--workdir", c.run])[1], "does not match the manifest"),
    ("test-split-truncated", T, lambda c: (c.truncate("data/test.npz"), ["evaluate", "--workdir", c.run])[1],
     "test split"),
    ("test-split-garbage", T, lambda c: (c.file("run/data/test.npz", os.urandom(300)),
                                         ["evaluate", "--workdir", c.run])[1], "test split"),
    ("store-truncated-status", T, lambda c: (c.truncate("data/train.npz"), ["status", "--workdir", c.run])[1],
     "data store"),
    ("store-truncated-forget", T, lambda c: (c.truncate("data/train.npz"), ["forget", "--workdir", c.run, 5])[1],
     "data store"),
    ("store-missing-array", T, lambda c: (np.savez(c.run / "data" / "train.npz", ids=np.arange(3)),
                                          ["status", "--workdir", c.run])[1], "data store"),
    ("store-ids-unsorted", T, lambda c: (c.reorder_store(), ["status", "--workdir", c.run])[1], "is malformed"),
    ("ledger-line-edited", F, lambda c: (c.edit_ledger(), ["ledger", "--workdir", c.run])[1], "ledger"),
    # predict inputs
    ("predict-no-rows", T, lambda c: ["predict", "--workdir", c.run, "--input", c.npy("x.npy", np.zeros((0, 8)))],
     "holds no examples"),
    ("predict-strings", T, lambda c: ["predict", "--workdir", c.run, "--input", c.npy("x.npy", np.full((2, 8), "a"))],
     "inputs must be numbers"),
    ("predict-objects", T, lambda c: ["predict", "--workdir", c.run, "--input",
                                      c.npy("x.npy", np.array([{}, {}], dtype=object), allow_pickle=True)],
     "holds Python objects"),
    ("predict-wrong-shape", T, lambda c: ["predict", "--workdir", c.run, "--input", c.npy("x.npy", np.zeros((3, 5)))],
     "inputs have shape (5,) per example; this model takes (8,)"),
    ("predict-one-dimension", T, lambda c: ["predict", "--workdir", c.run, "--input", c.npy("x.npy", np.zeros(8))],
     "must be one array of shape [N, ...]"),
    ("predict-nan", T, lambda c: ["predict", "--workdir", c.run, "--input",
                                  c.npy("x.npy", np.full((2, 8), np.nan, np.float32))], "NaN or infinite"),
    ("predict-missing-file", T, lambda c: ["predict", "--workdir", c.run, "--input", c.tmp / "none.npy"],
     "cannot read input"),
    # data sets
    ("labels-2**31", T, lambda c: c.train_new_on(c.npz("d.npz", y=np.where(blobs().y == 2, 2**31, blobs().y.astype(np.int64)))),
     "labels must be integers 0..k-1"),
    ("labels-2**32-wrap", T, lambda c: c.train_new_on(c.npz("d.npz", y=blobs().y.astype(np.int64) + 2**32)),
     "holds labels in [4294967296, 4294967298]"),
    ("labels-negative", T, lambda c: c.train_new_on(c.npz("d.npz", y=blobs().y - 1)), "must be integers in [0,"),
    ("labels-strings", T, lambda c: c.train_new_on(c.npz("d.npz", y=np.array(["a", "b", "c"])[blobs().y])),
     "holds non-integer labels"),
    ("labels-float", T, lambda c: c.train_new_on(c.npz("d.npz", y=blobs().y + 0.5)), "holds non-integer labels"),
    ("data-ids-2**31", T, lambda c: c.train_new_on(c.npz("d.npz", id=blobs().ids + 2**31)), "ids must lie in [0,"),
    ("data-ids-duplicate", T, lambda c: c.train_new_on(c.npz("d.npz", id=blobs().ids // 6)), "ids are not unique"),
    ("csv-empty", T, lambda c: c.train_new_on(c.file("d.csv", "")), "cannot read data set"),
    ("csv-header-only", T, lambda c: c.train_new_on(c.file("d.csv", "a,b,label\n")), "has no image or numeric feature"),
    ("csv-no-label-column", T, lambda c: c.train_new_on(c.file("d.csv", "a,b\n" + "1,2\n" * 20)),
     "has no label column"),
    ("data-set-missing", T, lambda c: c.train_new_on(c.tmp / "none.npz"), "unknown data set"),
    # the environment
    ("devices-zero", T, lambda c: (c.mp.setenv("SISA_DEVICES", "0"), ["forget", "--workdir", c.run, 5])[1],
     "SISA_DEVICES='0'"),
    ("devices-letters", T, lambda c: (c.mp.setenv("SISA_DEVICES", "abc"), ["forget", "--workdir", c.run, 5])[1],
     "SISA_DEVICES='abc'"),
    # terminal escapes in what the error quotes
    ("escape-in-id", T, lambda c: ["forget", "--workdir", c.run, "5\x1b[2J"], "\\x1b[2J"),
    ("escape-in-workdir-path", T, lambda c: ["status", "--workdir", c.tmp / "x\x1b[31m\nevil\u202e"],
     "x\\x1b[31m\\nevil\\u202e does not exist"),
    ("escape-in-config-path", T, lambda c: ["train", "--workdir", c.new, "--config", c.tmp / "a\rb\x9b.toml"],
     "a\\rb\\x9b.toml"),
]


# ---------------------------------------------------------------------------- the checks


def prepare(bases, tmp_path, monkeypatch, base, make) -> tuple[list[str], Case]:
    run = tmp_path / "run"
    shutil.copytree(bases[base], run)
    case = Case(tmp_path, run, bases["data"], monkeypatch)
    argv = [str(a) for a in make(case)]
    return argv, case


def check_refusal(argv, rc, out, err, phrase) -> None:
    assert rc != 0, (rc, out, err)
    assert out == "", out
    assert err.startswith(f"sisa {argv[0]}: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert "Traceback" not in err, err
    assert not any(ch in err[:-1] for ch in "\x1b\r\t\x7f\x9b\u202e"), repr(err)  # no raw control character
    assert phrase in err, err


@pytest.mark.parametrize("base, make, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_changes_nothing(bases, tmp_path, monkeypatch, capsys, base, make, phrase):
    argv, case = prepare(bases, tmp_path, monkeypatch, base, make)
    before = state(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    check_refusal(argv, rc, out, err, phrase)
    assert state(tmp_path) == before  # the workdir, the inputs: byte-identical, nothing added or removed


def test_the_table_is_large_and_named():
    names = [c[0] for c in CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)


SUBPROCESS = ["id-2**63", "cfg-hidden-int", "workdir-is-file-train", "test-split-truncated", "flag-seed-letters",
              "verify-shard-out-of-range"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_hostile_input_in_a_real_process(bases, tmp_path, monkeypatch, name):
    """No traceback reaches a real process's stderr (nor absl's logging, nor unraisable hooks)."""
    _, base, make, phrase = next(c for c in CASES if c[0] == name)
    argv, case = prepare(bases, tmp_path, monkeypatch, base, make)
    before = state(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "sisa.cli", *argv], capture_output=True, text=True, timeout=180)
    check_refusal(argv, proc.returncode, proc.stdout, proc.stderr, phrase)
    assert state(tmp_path) == before


# ---------------------------------------------------------------------------- successes around them


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return (rc, *capsys.readouterr())


def test_request_text_with_escapes_is_kept_and_shown_escaped(bases, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(bases["trained"], run)
    request, reason = "REQ\x1b[2J\x1b[31m-7\nforged line\u202e", "tab\there\rDEL\x7f C1\x9b"
    rc, out, err = cli(capsys, "forget", "--workdir", run, 8, "--request", request, "--reason", reason, "--json")
    assert rc == 0, err
    rc, out, err = cli(capsys, "ledger", "--workdir", run, "--json")
    entry = json.loads(out)["entries"][0]
    assert (entry["request"], entry["reason"]) == (request, reason)  # kept exactly as given
    assert "\x1b" not in out  # json.dumps escapes them
    rc, out, err = cli(capsys, "ledger", "--workdir", run)
    assert rc == 0, err
    assert "REQ\\x1b[2J\\x1b[31m-7\\nforged line\\u202e" in out, out
    assert not any(ch in out for ch in "\x1b\r\x7f\x9b\u202e"), repr(out)
    assert len(out.splitlines()) == 4, out  # header, rule, the one entry, head: no line of the user's own


def test_full_disk_during_forget_is_one_line_and_the_next_train_finishes_it(bases, tmp_path, monkeypatch, capsys):
    from sisa.checkpoint import ShardCheckpoints

    run = tmp_path / "run"
    shutil.copytree(bases["trained"], run)

    def full(stage, items):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(items[0][0].directory / "p0-99"))

    monkeypatch.setattr(ShardCheckpoints, "save_stage", staticmethod(full))
    rc, out, err = cli(capsys, "forget", "--workdir", run, 8, "--request", "full-disk")
    assert rc == 1 and out == ""
    assert err.startswith("sisa forget: error: ") and err.count("\n") == 1, err
    assert "No space left on device" in err and "next writing sisa command" in err, err
    ledger = sisa.api.ledger(str(run))["entries"]
    assert [(e["ids"], e["state"]) for e in ledger] == [([8], "purged")]  # recorded, not finished

    monkeypatch.undo()
    rc, out, err = cli(capsys, "train", "--workdir", run, "--json")
    assert rc == 0, err
    assert json.loads(out)["recovered_entries"] == [1]
    assert [e["state"] for e in sisa.api.ledger(str(run))["entries"]] == ["committed"]
    with np.load(run / "data" / "train.npz") as f:
        assert 8 not in f["ids"]


def test_full_disk_during_train_is_one_line(bases, tmp_path, monkeypatch, capsys):
    """An OSError that escapes sisa (here: saving a checkpoint while resuming) is `<strerror>: <file>`."""
    from sisa.checkpoint import ShardCheckpoints

    run = tmp_path / "run"
    shutil.copytree(bases["trained"], run)
    ShardCheckpoints(run / "checkpoints", 1, None).delete_from(0)  # a shard to train again
    target = run / "checkpoints" / "saves" / "p0-99"

    def full(stage, items):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(ShardCheckpoints, "save_stage", staticmethod(full))
    rc, out, err = cli(capsys, "train", "--workdir", run)
    assert rc == 1 and out == ""
    assert err == f"sisa train: error: No space left on device: {target}; once that is fixed, `sisa train " \
                  f"--workdir {run}` finishes what this command began\n", err
    monkeypatch.undo()
    rc, out, err = cli(capsys, "train", "--workdir", run, "--json")
    assert rc == 0 and json.loads(out)["shards_trained"] == [1], err
