"""Bad input gets one clear line on stderr, a non-zero exit, and nothing changed.

Covers: non-finite features (train/test split and predict inputs), inputs in other units
than the training data (a warning), unreadable or malformed predict files, string labels,
classes without a training example, output into a closed pipe, and the background
checkpoint saver when training raises.
"""

import json
import os
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sisa
from sisa.cli import main
from sisa.data.datasets import Dataset
from sisa.errors import SisaError
from sisa.workdir import Workdir
from tests.conftest import blobs, file_digests

SHARDS = 3


# ---------------------------------------------------------------------------- helpers


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*") if p.name != ".lock"}


def without_progress(err: str) -> str:
    """stderr less the progress bars HF `datasets` draws while it reads a CSV."""
    lines = [line.split("\r")[-1] for line in err.split("\n")]
    return "\n".join(line for line in lines if not line.endswith("examples/s]"))


def refused(capsys, root, *argv, phrase: str) -> str:
    """Exit 1, `sisa <cmd>: error: ...<phrase>...` as the one line on stderr, the same error as
    one JSON object on stdout (--json), and nothing under `root` changed (or `root` still absent)."""
    root = Path(root)
    existed = root.exists()
    before = (file_digests(root), tree(root)) if existed else None
    rc, out, err = cli(capsys, *argv, "--json")
    err = without_progress(err)
    assert rc == 1, (rc, out, err)
    assert out.count("\n") == 1 and set(json.loads(out)) == {"error", "kind"}, out
    assert err.startswith(f"sisa {argv[0]}: error: "), err
    assert phrase in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    if existed:
        assert (file_digests(root), tree(root)) == before
    else:
        assert not root.exists(), sorted(tree(root))
    return err


def save_npz(path, ds, **override):
    arrays = dict(x=ds.x, y=ds.y, id=ds.ids, x_test=ds.x_test, y_test=ds.y_test)
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def train_refused(capsys, tmp_path, data, phrase, *extra) -> str:
    new = tmp_path / "new"
    return refused(capsys, new, "train", "--workdir", new, "--dataset", data, "--shards", SHARDS, *extra,
                   phrase=phrase)


@pytest.fixture(scope="module")
def ds():
    return blobs()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cfg, ds) -> Path:
    """One run on blobs, trained once, never changed."""
    root = tmp_path_factory.mktemp("bad-input") / "run"
    sisa.train(root, tiny_cfg, dataset=ds, progress=False)
    return root


# ---------------------------------------------------------------------------- 1. non-finite features


def test_nan_training_features_refused_by_dataset(ds):
    x = ds.x.copy()
    x[[4, 9, 30], 2] = [np.nan, np.inf, -np.inf]
    with pytest.raises(SisaError, match=r"'blobs': 3 training rows have NaN or infinite features \(first: id 17\)"):
        Dataset("blobs", x, ds.y, ds.ids, ds.x_test, ds.y_test, ds.num_classes)


def test_nan_training_features_refused_by_cli(tmp_path, ds, capsys):
    x = ds.x.copy()
    x[[4, 9, 30], 2] = np.nan
    bad = save_npz(tmp_path / "nan.npz", ds, x=x)
    train_refused(capsys, tmp_path, bad, "3 training rows have NaN or infinite features (first: id 17)")


def test_nan_test_features_refused(tmp_path, ds, capsys):
    x_test = ds.x_test.copy()
    x_test[[5, 6], 0] = np.inf
    bad = save_npz(tmp_path / "inf.npz", ds, x_test=x_test)
    train_refused(capsys, tmp_path, bad, "2 test rows have NaN or infinite features (first: test row 5)")


def test_nan_csv_cell_refused(tmp_path, ds, capsys):
    """A blank cell in a numeric CSV column becomes NaN: refused, naming the row's id."""
    lines = ["id,a,b,label"] + [f"{i},{i % 7}.5,{(i * 3) % 5}.0,{i % 3}" for i in range(50)]
    lines[1 + 12] = "12,,1.0,0"
    path = tmp_path / "blank.csv"
    path.write_text("\n".join(lines) + "\n")
    train_refused(capsys, tmp_path, path, "1 training rows have NaN or infinite features (first: id 12)")


# ---------------------------------------------------------------------------- 2. predict: non-finite inputs


def test_predict_nan_inputs_refused_api(trained, ds):
    x = ds.x_test[:6].copy()
    x[3, 1] = np.nan
    x[5, 0] = np.inf
    before = file_digests(trained)
    with pytest.raises(SisaError, match=r"2 input rows have NaN or infinite values \(first: row 3\)"):
        sisa.predict(trained, x)
    assert file_digests(trained) == before


def test_predict_nan_inputs_refused_cli(trained, tmp_path, ds, capsys):
    x = ds.x_test[:6].copy()
    x[0, 0] = -np.inf
    path = tmp_path / "X.npy"
    np.save(path, x)
    refused(capsys, trained, "predict", "--workdir", trained, "--input", path,
            phrase="1 input rows have NaN or infinite values (first: row 0)")


def test_predict_non_numeric_inputs_refused_api(trained):
    with pytest.raises(SisaError, match="inputs must be numbers"):
        sisa.predict(trained, np.full((2, 8), "a"))


# ---------------------------------------------------------------------------- 3. predict: units


def _predict_warnings(root, x) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sisa.predict(root, x)
    assert len(out["labels"]) == len(x)
    return [str(w.message) for w in caught if "units of the training data" in str(w.message)]


def test_predict_inputs_in_training_units_no_warning(trained, ds):
    assert _predict_warnings(trained, ds.x_test[:10]) == []
    assert _predict_warnings(trained, ds.x_test[:1]) == []


@pytest.mark.parametrize("factor", [1 / 255, 255.0], ids=["scaled-down", "scaled-up"])
def test_predict_inputs_in_other_units_warn(trained, ds, factor):
    found = _predict_warnings(trained, ds.x_test[:10] * factor)
    assert len(found) == 1 and "\n" not in found[0], found
    store = Workdir.open(trained).store()
    assert f"{np.asarray(store.x).max():.4g}" in found[0], found  # the training range, from the data store


def test_predict_units_warning_is_one_line_in_cli(trained, tmp_path, ds, capsys):
    path = tmp_path / "X.npy"
    np.save(path, ds.x_test[:10] / 255)
    before = file_digests(trained)
    rc, out, err = cli(capsys, "predict", "--workdir", trained, "--input", path, "--json")
    assert rc == 0, err
    assert len(json.loads(out)["labels"]) == 10
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sisa predict: warning: "), err
    assert "units of the training data" in lines[0]
    assert file_digests(trained) == before  # nothing about the range is stored


def test_predict_units_range_follows_the_data_store(trained, tmp_path, ds):
    """The training range is taken from the survivors: forgetting the example that holds the
    maximum changes the range the warning quotes, and nothing about it is in the workdir."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    top = int(ds.ids[np.argmax(ds.x.max(axis=1))])
    sisa.forget(run, [top], progress=False)
    store = Workdir.open(run).store()
    assert np.asarray(store.x).max() < ds.x.max()
    found = _predict_warnings(run, ds.x_test[:10] * 255)
    assert len(found) == 1 and f"{np.asarray(store.x).max():.4g}" in found[0] and f"{ds.x.max():.4g}" not in found[0], found
    for p in run.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".toml"):
            assert f"{ds.x.max():.4g}" not in p.read_text(errors="replace")


# ---------------------------------------------------------------------------- 4. predict: unreadable files


def _npz(p, **arrays):
    np.savez(p, **arrays)


def _truncated(p, a):
    np.save(p, a)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _pickled(p):
    np.save(p, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("name, make, phrase", [
    ("X.npy", lambda p, ds: _truncated(p, ds.x_test[:20]), "truncated or corrupted"),
    ("X.npy", lambda p, ds: _truncated(p, ds.x_test[:20]) or p.write_bytes(p.read_bytes()[:40]),
     "truncated or corrupted"),
    ("X.npy", lambda p, ds: p.write_bytes(os.urandom(512)), "not a NumPy .npy or .npz file"),
    ("X.npy", lambda p, ds: p.write_bytes(b""), "not a NumPy .npy or .npz file"),
    ("X.npy", lambda p, ds: _pickled(p), "holds Python objects"),
    ("X.npy", lambda p, ds: np.save(p, np.full((3, 8), "x")), "inputs must be numbers"),
    ("X.npy", lambda p, ds: np.save(p, ds.x_test[:4].astype(np.complex64)), "inputs must be numbers"),
    ("X.npy", lambda p, ds: np.save(p, np.float32(3.0)), "must be one array of shape [N, ...]"),
    ("X.npz", lambda p, ds: _npz(p, a=ds.x_test[:3], b=ds.x_test[:3]), "holds arrays ['a', 'b']"),
    ("X.npz", lambda p, ds: _npz(p), "holds no array"),
    ("X.npz", lambda p, ds: _npz(p, a=ds.x_test[:3]) or p.write_bytes(p.read_bytes()[:100]),
     "truncated or corrupted"),
    ("X.npz", lambda p, ds: _npz(p, x=np.array([{"a": 1}], dtype=object)), "holds Python objects"),
], ids=["truncated-npy", "truncated-header", "random-bytes", "empty-file", "pickled", "strings", "complex",
        "scalar", "npz-two-arrays", "npz-empty", "npz-truncated", "npz-pickled"])
def test_predict_unreadable_input(trained, tmp_path, ds, name, make, phrase, capsys):
    path = tmp_path / name
    make(path, ds)
    refused(capsys, trained, "predict", "--workdir", trained, "--input", path, phrase=phrase)


@pytest.mark.parametrize("arrays", [{"only": None}, {"x": None, "ids": "ids"}], ids=["one-array", "named-x"])
def test_predict_npz_input_accepted(trained, tmp_path, ds, arrays, capsys):
    path = tmp_path / "X.npz"
    np.savez(path, **{k: ds.x_test[:5] if v is None else np.arange(5) for k, v in arrays.items()})
    rc, out, err = cli(capsys, "predict", "--workdir", trained, "--input", path, "--json")
    assert rc == 0, err
    assert json.loads(out)["labels"] == sisa.predict(trained, ds.x_test[:5])["labels"]


def test_predict_damaged_npz_member(trained, tmp_path, ds, capsys):
    """A zip whose member is not an .npy at all."""
    path = tmp_path / "X.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", b"garbage" * 10)
    refused(capsys, trained, "predict", "--workdir", trained, "--input", path, phrase="'x' is not a NumPy array")


# ---------------------------------------------------------------------------- 5. string labels


def test_string_labels_refused_naming_column_and_values(tmp_path, capsys):
    lines = ["a,b,label"] + [f"{i % 7}.5,{(i * 3) % 5}.0,{['cat', 'dog', 'emu'][i % 3]}" for i in range(40)]
    path = tmp_path / "pets.csv"
    path.write_text("\n".join(lines) + "\n")
    err = train_refused(capsys, tmp_path, path, "column 'label' holds non-integer labels")
    assert "'cat', 'dog', 'emu'" in err and "0..k-1" in err


def test_string_labels_refused_in_npz(tmp_path, ds, capsys):
    names = np.array(["cat", "dog", "emu"])
    bad = save_npz(tmp_path / "str.npz", ds, y=names[ds.y])
    train_refused(capsys, tmp_path, bad, "array 'y' holds non-integer labels")


# ---------------------------------------------------------------------------- 6. empty classes


def test_labels_leaving_class_zero_empty_refused(tmp_path, ds, capsys):
    bad = save_npz(tmp_path / "one-based.npz", ds, y=ds.y + 1, y_test=ds.y_test + 1)
    train_refused(capsys, tmp_path, bad, "class(es) [0] of 4 have no training example")


def test_configured_classes_left_empty_refused(tmp_path, ds, capsys):
    data = save_npz(tmp_path / "blobs.npz", ds)
    cfg = tmp_path / "five.toml"
    cfg.write_text("[data]\nnum_classes = 5\n")
    train_refused(capsys, tmp_path, data, "class(es) [3, 4] of 5 have no training example", "--config", cfg)


def test_class_only_in_test_split_refused(tmp_path, ds, capsys):
    y_test = ds.y_test.copy()
    y_test[0] = 3
    bad = save_npz(tmp_path / "test-only.npz", ds, y_test=y_test)
    train_refused(capsys, tmp_path, bad, "class(es) [3] of 4 have no training example")


# ---------------------------------------------------------------------------- 7. closed pipe


def test_json_into_closed_pipe_exits_quietly(trained):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the command writes anything
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sisa.cli", "status", "--workdir", str(trained), "--json"],
            stdout=w, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(w)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141, (proc.returncode, proc.stderr)


def test_json_into_pipe_closed_early_by_head(trained):
    cmd = f"{sys.executable} -m sisa.cli status --workdir {trained} --json | head -c 10"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and len(proc.stdout) == 10
    assert "Traceback" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- 8. saver on failure


def test_saver_finishes_before_a_training_error_leaves(tmp_path, tiny_cfg, ds, monkeypatch):
    from sisa.checkpoint import ShardCheckpoints
    from sisa.training import loop

    real_for, real_save = loop.ensemble_for, ShardCheckpoints.save_stage
    started, finished = [], []

    class Failing:
        """The real ensemble, except that stage 1's first epoch raises."""

        def __init__(self, ens):
            self._ens = ens

        def __getattr__(self, name):
            return getattr(self._ens, name)

        def epoch(self, states, data, shard_ids, seed, stage, epoch, active):
            if stage == 1:
                raise RuntimeError("boom in stage 1")
            return self._ens.epoch(states, data, shard_ids, seed, stage, epoch, active)

    def slow_save(stage, items):
        started.extend((ckpt.shard, stage) for ckpt, _, _ in items)
        time.sleep(0.4)
        real_save(stage, items)
        finished.extend((ckpt.shard, stage) for ckpt, _, _ in items)

    monkeypatch.setattr(loop, "ensemble_for", lambda *a, **k: Failing(real_for(*a, **k)))
    monkeypatch.setattr(ShardCheckpoints, "save_stage", staticmethod(slow_save))
    root = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom in stage 1"):
        sisa.train(root, tiny_cfg, dataset=ds, progress=False)
    assert len(started) == SHARDS and finished == started  # every stage-0 save was done, none in flight
    assert not [t.name for t in threading.enumerate() if t.name.startswith("sisa-saver") and t.is_alive()]
    before = file_digests(root)
    time.sleep(1.0)
    assert file_digests(root) == before  # nothing writes after the error reached the caller
