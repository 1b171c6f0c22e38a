"""The `sisa` command line, driven in-process through `sisa.cli.main` (plus one real process).

Every command's `--json` output is one JSON object whose contents are checked, and every
bad input is refused with a non-zero exit, a specific message on stderr, nothing on stdout
and the workdir's files byte for byte unchanged.
"""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sisa.cli import main
from tests.conftest import blobs, file_digests

SHARDS, SLICES, EPOCHS = 3, 3, 2


# ---------------------------------------------------------------------------- helpers


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_json(capsys, *argv) -> dict:
    """Run a command with --json; it must succeed and print exactly one JSON object."""
    rc, out, err = cli(capsys, *argv, "--json")
    assert rc == 0, err
    assert out.endswith("\n") and len(out.splitlines()) == 1, out
    obj = json.loads(out)  # raises on anything but exactly one JSON value
    assert isinstance(obj, dict)
    return obj


def tree(root: Path) -> set[str]:
    """Every path under root (files and folders), the lock file excluded."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*") if p.name != ".lock"}


def refused(capsys, root, *argv, phrase: str, json_flag: bool = True) -> str:
    """Run a command that must fail: exit 1, `sisa <cmd>: error: ...<phrase>...` on stderr,
    on stdout nothing (with --json: the error as one JSON object), and no file under `root`
    changed, added or removed."""
    root = Path(root)
    existed = root.exists()
    before = (file_digests(root), tree(root)) if existed else None
    rc, out, err = cli(capsys, *argv, *(["--json"] if json_flag else []))
    assert rc == 1, (rc, out, err)
    if json_flag:
        assert out.count("\n") == 1 and phrase in json.loads(out)["error"], (out, err)
    else:
        assert out == "", out
    assert err.startswith(f"sisa {argv[0]}: error: "), err
    assert phrase in err, err
    assert len(err.strip().splitlines()) == 1, err
    if existed:
        assert (file_digests(root), tree(root)) == before
    else:
        assert not root.exists(), sorted(tree(root))
    return err


def train_ids(root) -> np.ndarray:
    with np.load(Path(root) / "data" / "train.npz") as f:
        return f["ids"].copy()


def store_rows(root) -> dict:
    with np.load(Path(root) / "data" / "train.npz") as f:
        return {k: f[k].copy() for k in ("ids", "shard", "slice")}


def save_npz(path, ds, **override):
    arrays = dict(x=ds.x, y=ds.y, id=ds.ids, x_test=ds.x_test, y_test=ds.y_test)
    arrays.update(override)
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ds():
    return blobs()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, ds) -> Path:
    return save_npz(tmp_path_factory.mktemp("data") / "blobs.npz", ds)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    """(workdir, train's JSON) of one run trained once through the CLI, never mutated."""
    root = tmp_path_factory.mktemp("trained") / "run"
    out, err = io.StringIO(), io.StringIO()  # module scope has no capsys
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", "--workdir", str(root), "--dataset", str(data_file), "--shards", str(SHARDS),
                   "--slices", str(SLICES), "--epochs", str(EPOCHS), "--json"])
    assert rc == 0, err.getvalue()
    assert len(out.getvalue().splitlines()) == 1, out.getvalue()
    return root, json.loads(out.getvalue())


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained workdir, for tests that change it (or might)."""
    dst = tmp_path / "run"
    shutil.copytree(trained[0], dst)
    return dst


@pytest.fixture
def inputs(tmp_path, ds) -> Path:
    path = tmp_path / "X.npy"
    np.save(path, ds.x_test[:7])
    return path


# ---------------------------------------------------------------------------- happy paths


def test_train_json(trained, ds):
    root, r = trained
    assert r["workdir"] == str(root)
    assert r["recovered_entries"] == []
    assert r["shards_trained"] == list(range(SHARDS))
    assert r["stages_trained"] == {str(s): list(range(SLICES)) for s in range(SHARDS)}
    # budget schedule: every stage trains ceil(2E/(R+1)) epochs on slices 0..r of every shard
    per_stage = int(np.ceil(2 * EPOCHS / (SLICES + 1)))
    rows = store_rows(root)
    cum = np.bincount(rows["slice"], minlength=SLICES).cumsum()
    assert r["examples_epochs"] == per_stage * int(cum.sum())
    assert r["seconds"] > 0
    for f in ("sisa.json", "config.toml", "data/train.npz", "data/test.npz"):
        assert (root / f).is_file(), f
    assert not (root / ".sisa-creating").exists()
    assert sorted(rows["ids"].tolist()) == sorted(ds.ids.tolist())
    assert set(rows["shard"].tolist()) == set(range(SHARDS))
    assert set(rows["slice"].tolist()) == set(range(SLICES))


def test_status_json_fresh(trained, data_file, ds, capsys):
    root, _ = trained
    r = cli_json(capsys, "status", "--workdir", root)
    assert r["workdir"] == str(root)
    assert r["shards"] == SHARDS and r["slices"] == SLICES
    assert r["examples"] == len(ds.ids)
    assert len(r["examples_per_shard"]) == SHARDS and sum(r["examples_per_shard"]) == len(ds.ids)
    per = np.array(r["examples_per_shard_slice"])
    assert per.shape == (SHARDS, SLICES)
    assert per.sum(axis=1).tolist() == r["examples_per_shard"]
    assert r["deleted"] == 0 and r["requests"] == 0 and r["pending_requests"] == []
    disk = r["disk_bytes"]
    assert disk["total"] >= disk["checkpoints"] + disk["data"] and disk["checkpoints"] > 0 and disk["data"] > 0


def test_status_human(trained, capsys):
    root, _ = trained
    rc, out, err = cli(capsys, "status", "--workdir", root)
    assert rc == 0, err
    assert f"{SHARDS} shards x {SLICES} slices, 300 examples" in out
    assert "deleted: 0 id(s) in 0 request(s)" in out


def test_predict_json(trained, inputs, capsys):
    root, _ = trained
    r = cli_json(capsys, "predict", "--workdir", root, "--input", inputs)
    n = len(np.load(inputs))
    assert len(r["labels"]) == n and len(r["probabilities"]) == n
    p = np.array(r["probabilities"])
    assert p.shape == (n, 3)
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert r["labels"] == p.argmax(axis=1).tolist()
    assert all(isinstance(lbl, int) and 0 <= lbl < 3 for lbl in r["labels"])
    assert r["aggregation"] == "softmax"
    assert r["shards"] == list(range(SHARDS))
    assert r["left_out"] == {"pending": [], "empty": []}


def test_predict_vote_json(trained, inputs, capsys):
    root, _ = trained
    r = cli_json(capsys, "predict", "--workdir", root, "--input", inputs, "--aggregation", "vote")
    p = np.array(r["probabilities"])
    assert r["aggregation"] == "vote"
    assert p.shape == (7, 3) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # vote shares are multiples of 1/S
    assert np.allclose(p * SHARDS, np.rint(p * SHARDS), atol=1e-5)
    assert r["labels"] == p.argmax(axis=1).tolist()


def test_evaluate_json(trained, ds, capsys):
    root, _ = trained
    r = cli_json(capsys, "evaluate", "--workdir", root)
    assert isinstance(r["accuracy"], float) and 0.0 <= r["accuracy"] <= 1.0
    assert r["aggregation"] == "softmax" and r["accuracy"] == r["accuracy_softmax"]
    assert 0.0 <= r["accuracy_vote"] <= 1.0
    assert r["test_examples"] == len(ds.y_test)
    assert sorted(r["per_shard"]) == [str(s) for s in range(SHARDS)]
    for acc in r["per_shard"].values():
        assert isinstance(acc, float) and 0.0 <= acc <= 1.0
        # accuracies on N test examples are multiples of 1/N
        assert abs(acc * len(ds.y_test) - round(acc * len(ds.y_test))) < 1e-6
    rv = cli_json(capsys, "evaluate", "--workdir", root, "--aggregation", "vote")
    assert rv["aggregation"] == "vote" and rv["accuracy"] == rv["accuracy_vote"] == r["accuracy_vote"]
    assert rv["per_shard"] == r["per_shard"]


def test_ledger_json_empty(trained, capsys):
    root, _ = trained
    r = cli_json(capsys, "ledger", "--workdir", root)
    assert r == {"head": "0" * 64, "records": 0, "anchor": "0:" + "0" * 64, "entries": []}


def test_forget_status_ledger(run, tmp_path, capsys):
    rows = store_rows(run)
    n0 = len(rows["ids"])
    # one id from each shard, so all three shards retrain (the training program is reused)
    first = [int(rows["ids"][rows["shard"] == s][0]) for s in range(SHARDS)]
    r = cli_json(capsys, "forget", "--workdir", run, *first, "--request", "REQ-1", "--reason", "gdpr")
    assert r["forgotten"] == 3 and r["entry"] == 1
    assert isinstance(r["hash"], str) and len(r["hash"]) == 64 and r["hash"] != "0" * 64
    assert r["affected_shards"] == list(range(SHARDS))
    assert set(r["stages_retrained"]) == {str(s) for s in range(SHARDS)}
    assert 0 < r["examples_epochs_retrained"] <= r["examples_epochs_full_retrain"]
    assert not set(first) & set(train_ids(run).tolist())

    st = cli_json(capsys, "status", "--workdir", run)
    assert st["shards"] == SHARDS and st["slices"] == SLICES
    assert st["examples"] == n0 - 3 and sum(st["examples_per_shard"]) == n0 - 3
    assert st["deleted"] == 3 and st["requests"] == 1 and st["pending_requests"] == []

    lg = cli_json(capsys, "ledger", "--workdir", run)
    assert lg["head"] == r["hash"]
    (e,) = lg["entries"]
    assert e["seq"] == 1 and e["state"] == "committed"
    assert e["ids"] == sorted(first) and e["request"] == "REQ-1" and e["reason"] == "gdpr"
    assert set(e["times"]) == {"requested", "purged", "retrained", "committed"}

    # a second request through an ids file (commas and whitespace), all in shard 0's last slice
    sel = rows["ids"][(rows["shard"] == 0) & (rows["slice"] == SLICES - 1)]
    second = [int(i) for i in sel[1:3]]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{second[0]},\n  {second[1]}\n")
    r2 = cli_json(capsys, "forget", "--workdir", run, "--ids-file", ids_file)
    assert r2["forgotten"] == 2 and r2["entry"] == 2 and r2["hash"] != r["hash"]
    assert r2["affected_shards"] == [0]
    assert r2["stages_retrained"] == {"0": [SLICES - 1]}
    st2 = cli_json(capsys, "status", "--workdir", run)
    assert st2["examples"] == n0 - 5 and st2["deleted"] == 5 and st2["requests"] == 2
    lg2 = cli_json(capsys, "ledger", "--workdir", run)
    assert lg2["head"] == r2["hash"]
    assert [e["state"] for e in lg2["entries"]] == ["committed", "committed"]
    assert lg2["entries"][1]["ids"] == sorted(second)

    # the served ensemble still answers after the deletions
    ev = cli_json(capsys, "evaluate", "--workdir", run)
    assert 0.0 <= ev["accuracy"] <= 1.0 and sorted(ev["per_shard"]) == ["0", "1", "2"]


def test_forget_human(run, capsys):
    some = int(train_ids(run)[0])
    rc, out, err = cli(capsys, "forget", "--workdir", run, some)
    assert rc == 0, err
    assert "forgot 1 id(s): ledger entry #1 committed" in out


def test_train_again_nothing_to_do(run, capsys):
    before = (file_digests(run), tree(run))
    rc, out, err = cli(capsys, "train", "--workdir", run)
    assert rc == 0, err
    assert "nothing to do" in out
    assert (file_digests(run), tree(run)) == before
    r = cli_json(capsys, "train", "--workdir", run)
    assert r["shards_trained"] == [] and r["stages_trained"] == {} and r["examples_epochs"] == 0
    assert r["recovered_entries"] == []
    assert (file_digests(run), tree(run)) == before


def test_train_again_same_flags_nothing_to_do(run, data_file, capsys):
    before = file_digests(run)
    r = cli_json(capsys, "train", "--workdir", run, "--dataset", data_file, "--shards", SHARDS,
                 "--slices", SLICES, "--epochs", EPOCHS)
    assert r["shards_trained"] == []
    assert file_digests(run) == before


# ---------------------------------------------------------------------------- bad input: forget


@pytest.mark.parametrize("ids, phrase", [
    (["4"], "unknown id(s): 4"),
    (["5", "4", "6"], "unknown id(s): 4, 6"),
    (["5", "5"], "id 5 is given twice"),
    ([], "no ids given"),
    (["abc"], "not an integer id in arguments: 'abc'"),
    (["1.5"], "not an integer id in arguments: '1.5'"),
    (["5", "1.5"], "not an integer id in arguments: '1.5'"),
], ids=["unknown", "unknown-among-known", "twice", "empty", "abc", "float", "float-among-known"])
def test_forget_bad_ids(run, ids, phrase, capsys):
    assert 5 in train_ids(run)  # ids are 5, 8, 11, ...: 4 and 6 are not
    refused(capsys, run, "forget", "--workdir", run, *ids, phrase=phrase)


def test_forget_ids_file_bad_token(run, tmp_path, capsys):
    f = tmp_path / "ids.txt"
    f.write_text("5, 8\n11 x7 14\n")
    refused(capsys, run, "forget", "--workdir", run, "--ids-file", f, phrase=f"not an integer id in {f}: 'x7'")


def test_forget_ids_file_missing(run, tmp_path, capsys):
    f = tmp_path / "nope.txt"
    refused(capsys, run, "forget", "--workdir", run, "--ids-file", f, phrase=f"cannot read ids file {f}")
    refused(capsys, run, "forget", "--workdir", run, "5", "--ids-file", f, phrase="cannot read ids file")


def test_forget_twice_across_files_and_args(run, tmp_path, capsys):
    f = tmp_path / "ids.txt"
    f.write_text("8")
    refused(capsys, run, "forget", "--workdir", run, "8", "--ids-file", f, phrase="id 8 is given twice")


def test_forget_already_forgotten(run, capsys):
    ids = train_ids(run)
    gone, other = int(ids[0]), int(ids[1])
    cli_json(capsys, "forget", "--workdir", run, gone)
    err = refused(capsys, run, "forget", "--workdir", run, gone, phrase=f"already forgotten: {gone}")
    assert "ledger entry #1" in err
    # mixed with a live id: the whole request is refused, the live id stays
    refused(capsys, run, "forget", "--workdir", run, other, gone, phrase="already forgotten")
    assert other in train_ids(run)


def test_forget_all_remaining_refused(run, tmp_path, capsys):
    f = tmp_path / "all.txt"
    ids = train_ids(run)
    f.write_text("\n".join(map(str, ids)))
    refused(capsys, run, "forget", "--workdir", run, "--ids-file", f,
            phrase=f"forgetting all {len(ids)} remaining examples would leave no model; refused")


# ---------------------------------------------------------------------------- bad input: workdirs


@pytest.mark.parametrize("command, extra", [
    ("forget", ["5"]),
    ("evaluate", []),
    ("status", []),
    ("ledger", []),
    ("predict", ["--input", "INPUTS"]),
])
def test_missing_workdir(tmp_path, inputs, command, extra, capsys):
    missing = tmp_path / "missing"
    extra = [inputs if a == "INPUTS" else a for a in extra]
    refused(capsys, missing, command, "--workdir", missing, *extra, phrase=f"workdir {missing} does not exist")


@pytest.fixture
def foreign(tmp_path) -> Path:
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "notes.txt").write_text("not a sisa run\n")
    return d


def test_train_into_non_sisa_dir(foreign, data_file, capsys):
    refused(capsys, foreign, "train", "--workdir", foreign, "--dataset", data_file, "--shards", SHARDS,
            "--slices", SLICES, "--epochs", EPOCHS, phrase="is not empty and is not a sisa workdir")


def test_forget_in_non_sisa_dir(foreign, capsys):
    refused(capsys, foreign, "forget", "--workdir", foreign, "5",
            phrase=f"{foreign} is not a sisa workdir (no sisa.json)")
    assert not (foreign / ".lock").exists()


def test_status_in_non_sisa_dir(foreign, capsys):
    refused(capsys, foreign, "status", "--workdir", foreign, phrase="is not a sisa workdir")


# ---------------------------------------------------------------------------- bad input: train


def test_train_more_shards_than_examples(tmp_path, data_file, capsys):
    new = tmp_path / "new"
    refused(capsys, new, "train", "--workdir", new, "--dataset", data_file, "--shards", 100000,
            "--slices", SLICES, "--epochs", EPOCHS, phrase="100000 shards but only 300 training examples")


def test_train_more_shards_than_examples_empty_dir(tmp_path, data_file, capsys):
    new = tmp_path / "empty"
    new.mkdir()
    refused(capsys, new, "train", "--workdir", new, "--dataset", data_file, "--shards", 100000,
            phrase="100000 shards but only 300 training examples")


def test_refused_train_never_leads_to_deleting_user_files(tmp_path, data_file, capsys):
    new = tmp_path / "mine"
    new.mkdir()
    argv = ["train", "--workdir", new, "--dataset", data_file, "--shards", 100000]
    assert cli(capsys, *argv)[0] == 1
    (new / "precious.txt").write_text("the user's own file\n")
    assert cli(capsys, *argv)[0] == 1
    assert (new / "precious.txt").read_text() == "the user's own file\n"


def test_train_negative_label(tmp_path, ds, capsys):
    y = ds.y.copy()
    y[0] = -1
    bad = save_npz(tmp_path / "neg.npz", ds, y=y)
    new = tmp_path / "new"
    refused(capsys, new, "train", "--workdir", new, "--dataset", bad, "--shards", SHARDS,
            phrase="labels in y must be integers in [0, 3), got range [-1, 2]")


def test_train_labels_beyond_configured_classes(tmp_path, data_file, capsys):
    cfg = tmp_path / "two.toml"
    cfg.write_text("[data]\nnum_classes = 2\n")
    new = tmp_path / "new"
    refused(capsys, new, "train", "--workdir", new, "--config", cfg, "--dataset", data_file,
            "--shards", SHARDS, phrase="labels in y must be integers in [0, 2)")


def test_train_different_config(run, capsys):
    err = refused(capsys, run, "train", "--workdir", run, "--shards", 4, phrase="was trained with a different config")
    assert "partition.shards: 3 -> 4" in err
    err = refused(capsys, run, "train", "--workdir", run, "--epochs", 5, "--seed", 1,
                  phrase="different config")
    assert "train.epochs: 2 -> 5" in err and "partition.seed: 0 -> 1" in err and "train.seed: 0 -> 1" in err


def test_train_different_dataset(run, tmp_path, ds, capsys):
    other = save_npz(tmp_path / "other.npz", ds, x=ds.x + 1)
    err = refused(capsys, run, "train", "--workdir", run, "--dataset", other, phrase="different config")
    assert "data.dataset" in err


@pytest.mark.parametrize("toml, phrase", [
    ("[train]\nepochz = 3\n", "unknown key(s) in [train]: epochz"),
    ("[partition]\nshards = 3\nslicez = 2\n", "unknown key(s) in [partition]: slicez"),
    ("[training]\nepochs = 3\n", "unknown config section(s): training"),
], ids=["key", "key-beside-known", "section"])
def test_train_unknown_config_key(run, tmp_path, data_file, toml, phrase, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    refused(capsys, run, "train", "--workdir", run, "--config", cfg, phrase=phrase)
    new = tmp_path / "new"
    refused(capsys, new, "train", "--workdir", new, "--config", cfg, "--dataset", data_file, phrase=phrase)


def test_train_missing_config_file(tmp_path, data_file, capsys):
    new = tmp_path / "new"
    missing = tmp_path / "none.toml"
    refused(capsys, new, "train", "--workdir", new, "--config", missing, "--dataset", data_file,
            phrase=f"config file not found: {missing}")


# ---------------------------------------------------------------------------- bad input: predict


@pytest.mark.parametrize("make, phrase", [
    (lambda p, ds: np.save(p, ds.x_test[:5, :7]), "inputs have shape (7,) per example; this model takes (8,)"),
    (lambda p, ds: np.save(p, np.zeros((4, 9), np.float32)),
     "inputs have shape (9,) per example; this model takes (8,)"),
    (lambda p, ds: np.save(p, ds.x_test[0]), "must be one array of shape [N, ...]"),
    (lambda p, ds: p.write_bytes(b"not an npy file"), "cannot read input"),
    (lambda p, ds: None, "cannot read input"),
], ids=["7-features", "9-features", "one-row-1d", "garbage", "missing"])
def test_predict_malformed_input(run, tmp_path, ds, make, phrase, capsys):
    path = tmp_path / "X.npy"
    make(path, ds)
    refused(capsys, run, "predict", "--workdir", run, "--input", path, phrase=phrase)


# ---------------------------------------------------------------------------- a real process


def test_subprocess_exit_status_and_json(trained, tmp_path):
    root, _ = trained
    cmd = [sys.executable, "-m", "sisa.cli"]
    ok = subprocess.run([*cmd, "status", "--workdir", str(root), "--json"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 1
    obj = json.loads(ok.stdout)
    assert isinstance(obj, dict) and obj["shards"] == SHARDS and obj["examples"] == 300

    before = file_digests(root)
    bad = subprocess.run([*cmd, "forget", "--workdir", str(root), "4", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1
    assert json.loads(bad.stdout) == {"error": "unknown id(s): 4 (not in the training data of " + str(root) + ")",
                                      "kind": "bad_input"}
    assert "sisa forget: error: unknown id(s): 4" in bad.stderr
    assert file_digests(root) == before

    usage = subprocess.run([*cmd, "forget", "--json"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and json.loads(usage.stdout)["kind"] == "usage" and "--workdir" in usage.stderr
