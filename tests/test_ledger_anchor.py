"""A ledger cannot be cut unnoticed: its head is anchored in the manifest (after every append),
in every checkpoint's lineage, and by the user (`ledger --head` / `verify --expect-head`).

Cuts tried: last line removed, file emptied, file deleted, final newline dropped, and a cut
with the manifest's anchor forged to match. Each stops every command with one line, and
changes nothing.
"""

import json
import shutil

import pytest

import sisa
from sisa.cli import main
from sisa.deletion_ledger import GENESIS
from sisa.workdir import Workdir
from tests.conftest import file_digests, npz_dataset

COMMANDS = (["status"], ["ledger"], ["ledger", "--head"], ["audit"], ["verify", "--shards", "0"], ["train"],
            ["forget", "ID"], ["evaluate"])


@pytest.fixture(scope="module")
def forgotten(tmp_path_factory, tiny_cfg):
    """A run with two committed forgets (ids in shards 0 and 2) and the ledger head after each."""
    tmp = tmp_path_factory.mktemp("anchor")
    root = tmp / "run"
    sisa.train(root, tiny_cfg, dataset=npz_dataset(tmp), progress=False)
    store = Workdir.open(root).store()
    heads = [sisa.ledger(root)["anchor"]]
    for shard in (0, 2):
        sisa.forget(root, store.ids[store.shard == shard][:1].tolist(), progress=False)
        heads.append(sisa.ledger(root)["anchor"])
    spare = int(store.ids[store.shard == 1][0])  # an id a test may still ask to forget
    return root, heads, spare


@pytest.fixture
def run(forgotten, tmp_path):
    root, heads, spare = forgotten
    shutil.copytree(root, tmp_path / "run")
    return tmp_path / "run", heads, spare


def _lines(root):
    return (root / "ledger.jsonl").read_bytes().splitlines(keepends=True)


def _refused_everywhere(root, spare, capsys, match: str):
    before = file_digests(root)
    for argv in COMMANDS:
        argv = [str(spare) if a == "ID" else a for a in argv]
        capsys.readouterr()
        rc = main([argv[0], "--workdir", str(root), *argv[1:]])
        err = capsys.readouterr().err
        assert rc == 1, (argv, err)
        assert len(err.strip().splitlines()) == 1 and match in err, (argv, err)
        assert file_digests(root) == before, argv


CUTS = {
    "last line removed": lambda lines: b"".join(lines[:-1]),
    "emptied": lambda lines: b"",
    "final newline dropped": lambda lines: b"".join(lines)[:-1],
    "first request's lines only": lambda lines: b"".join(lines[:4]),
}


@pytest.mark.parametrize("cut", CUTS)
def test_a_cut_ledger_stops_every_command(run, capsys, cut):
    root, _, spare = run
    (root / "ledger.jsonl").write_bytes(CUTS[cut](_lines(root)))
    _refused_everywhere(root, spare, capsys, "was cut or replaced")


def test_a_deleted_ledger_stops_every_command(run, capsys):
    root, _, spare = run
    (root / "ledger.jsonl").unlink()
    _refused_everywhere(root, spare, capsys, "was cut or replaced")


def test_a_cut_with_a_forged_manifest_anchor_is_caught_by_the_lineages(run, capsys):
    """Remove the second request and forge the manifest's head to match: the lineages of the
    stages retrained for it still anchor the removed records."""
    root, _, spare = run
    lines = _lines(root)
    (root / "ledger.jsonl").write_bytes(b"".join(lines[:4]))
    manifest = json.loads((root / "sisa.json").read_text())
    manifest["ledger_head"] = {"records": 4, "hash": json.loads(lines[3])["hash"]}
    (root / "sisa.json").write_text(json.dumps(manifest))
    _refused_everywhere(root, spare, capsys, "lineage of shard 2")


def test_the_kept_head_holds_as_the_ledger_grows_and_fails_once_cut(run, capsys):
    root, heads, spare = run
    for head in heads:  # every head printed so far is still in the ledger
        assert sisa.verify(root, [1], expect_head=head, progress=False)["verdict"] == "verified"
    capsys.readouterr()
    assert main(["ledger", "--workdir", str(root), "--head"]) == 0
    assert capsys.readouterr().out.strip() == heads[-1]
    sisa.forget(root, [spare], progress=False)
    assert sisa.verify(root, [1], expect_head=heads[-1], progress=False)["verdict"] == "verified"
    # Everything consistently rewritten to an earlier history: only the kept head tells.
    lines = _lines(root)
    (root / "ledger.jsonl").write_bytes(b"".join(lines[:4]))
    manifest = json.loads((root / "sisa.json").read_text())
    manifest["ledger_head"] = {"records": 4, "hash": json.loads(lines[3])["hash"]}
    (root / "sisa.json").write_text(json.dumps(manifest))
    for lineage in (root / "checkpoints").rglob("lineage_*.json"):  # as if every stage were older
        lin = json.loads(lineage.read_text())
        lin["ledger_head"] = {"records": 0, "hash": GENESIS}
        lineage.write_text(json.dumps(lin))
    capsys.readouterr()
    rc = main(["verify", "--workdir", str(root), "--shards", "1", "--expect-head", heads[-1]])
    err = capsys.readouterr().err
    assert rc == 1 and "the head you kept" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["", "12", "3:abc", "x:" + "0" * 64, "-1:" + "0" * 64, "１:" + "0" * 64])
def test_a_malformed_kept_head_is_one_clear_line(run, capsys, text):
    root, *_ = run
    capsys.readouterr()
    assert main(["verify", "--workdir", str(root), f"--expect-head={text}"]) == 1
    err = capsys.readouterr().err
    assert "not a ledger head" in err and len(err.strip().splitlines()) == 1


def test_an_anchor_left_behind_by_a_crash_still_holds_and_catches_up(run):
    """A crash between the ledger append and the manifest write leaves the manifest's head one
    record behind; that head is still in the ledger, and the next append anchors the new head."""
    root, heads, spare = run
    manifest = json.loads((root / "sisa.json").read_text())
    records = heads[-1].split(":")[0]
    lines = _lines(root)
    manifest["ledger_head"] = {"records": int(records) - 1, "hash": json.loads(lines[-2])["hash"]}
    (root / "sisa.json").write_text(json.dumps(manifest))
    assert sisa.status(root)["requests"] == 2
    sisa.forget(root, [spare], progress=False)
    assert json.loads((root / "sisa.json").read_text())["ledger_head"]["hash"] == sisa.ledger(root)["head"]
