"""The deletion experiments (sisa.experiments.speedup, .stream) on a tiny setting: the machinery
runs end to end, and what it records has the properties the reports rest on."""

import json

import numpy as np
import pytest

from sisa.errors import SisaError
from sisa.experiments import deletion, speedup, stream
from tests.conftest import blobs

ENGINE = deletion.Engine(hidden=(8,), epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both experiments on 300 blobs, sharing one SISA config (S=2, R=2) and the monolithic one,
    so that they compile their programs once."""
    root = tmp_path_factory.mktemp("deletion-experiments")
    ds = blobs()
    np.savez(root / "blobs.npz", x=ds.x, y=ds.y, id=ds.ids, x_test=ds.x_test, y_test=ds.y_test)
    data = deletion.Data(str(root / "blobs.npz"))
    speed_plan = speedup.Plan((speedup.Part(data, requests=3, request_seeds=(0, 1), shards=(2,), slices_fixed=2,
                                            slices=(), shards_fixed=2, extra=(), engine=ENGINE),))
    stream_plan = stream.Plan(data=data, engine=ENGINE, seeds=(0,), scenarios=(stream.Scenario(4, 1),
                                                                                stream.Scenario(2, 3)),
                              sisa=((2, 2),), batched=(2, 2), batch=2, approximate=stream.APPROXIMATE[:1],
                              checkpoints=(0.0, 1.0))
    out = {"speedup": root / "speedup", "stream": root / "stream"}
    for name, plan in (("speedup", speed_plan), ("stream", stream_plan)):
        out[name].mkdir()
        module = speedup if name == "speedup" else stream
        module.run(out[name], quick=True, progress=False, plan=plan)
    return out


def load(out):
    return json.loads((out / deletion.RESULTS).read_text())


def nondecreasing(values):
    return bool(np.all(np.diff(np.asarray(values, np.float64)) >= 0))


def test_a_non_empty_output_directory_is_refused(tmp_path):
    from sisa import experiments

    (tmp_path / "kept.txt").write_text("results")
    for name in ("speedup", "stream"):
        with pytest.raises(SisaError, match="not empty"):
            experiments.run(name, tmp_path, quick=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_formula_without_shards_or_slices_is_no_speed_up():
    f = speedup.speedup_formulas(n=1000, k=7, shards=1, slices=1, epochs=10, epochs_per_stage=10)
    assert f["sisa"] == pytest.approx(1.0) and f["paper"] == pytest.approx(1.0)
    # one id of 1000 in a single shard and slice: the whole rest retrains, E epochs
    assert speedup.expected_request(np.array([[1000]]), 10) == pytest.approx(10 * 999)


def test_formula_is_the_papers_when_the_epochs_divide():
    # E = 9, R = 2: e' = 2E/(R+1) = 6 exactly, so sisa's schedule is the paper's; K << N
    f = speedup.speedup_formulas(n=10**7, k=1, shards=5, slices=2, epochs=9, epochs_per_stage=6)
    assert f["sisa"] == pytest.approx(f["paper"], rel=1e-4)
    # equal shards and slices: the partition's expectation is the closed form's (request 1)
    counts = np.full((5, 2), 10**6)
    full = 9 * (10**7 - 1)
    assert full / speedup.expected_request(counts, 6) == pytest.approx(f["sisa"], rel=1e-6)


def test_speedup_records_sequential_requests(runs):
    res = load(runs["speedup"])
    (part,) = res["parts"]
    k, n = part["requests"], part["train_examples"]
    assert part["baseline_examples_epochs"] == [ENGINE.epochs * (n - i) for i in range(1, k + 1)]
    for m in part["monolithic_retrains"]:  # the engine's count for the retrain agrees
        assert m["examples_epochs"] == ENGINE.epochs * (n - m["request"])
    for st in part["settings"]:
        assert len(st["runs"]) == 2
        for run in st["runs"]:
            t = run["trace"]
            assert len(t["seconds"]) == len(run["expected_examples_epochs"]) == k
            assert all(0 < w <= full for w, full in zip(t["examples_epochs"], t["full_examples_epochs"]))
            assert all(len(a) == 1 for a in t["affected_shards"])  # one id, one shard
            for key in ("cum_seconds", "cum_compute_seconds", "cum_examples_epochs"):
                assert nondecreasing(t[key])
            assert t["cum_examples_epochs"][-1] == sum(t["examples_epochs"])
    row = speedup.summarize(part)[0]
    assert all(w > 1 for w in row["work"])  # two shards: never more than one retrains
    assert (runs["speedup"] / "speedup.png").stat().st_size > 0


def test_stream_records_every_request_of_every_method(runs):
    res = load(runs["stream"])
    for run in res["runs"]:
        count = len(run["requests"])
        for name, m in run["methods"].items():
            t = m["trace"]
            assert len(t["seconds"]) == len(t["test_acc"]) == len(t["examples_epochs"]) == count, name
            for key in ("cum_seconds", "cum_compute_seconds", "cum_examples_epochs"):
                assert nondecreasing(t[key]), (name, key)
        approximate = [m for m in run["methods"].values() if m["kind"] == "approximate"]
        assert approximate and all(len(m["trace"]["seconds"]) == count for m in approximate)


def test_sisa_after_the_stream_is_sisa_retrained_without_the_forgotten(runs):
    res = load(runs["stream"])
    for run in res["runs"]:
        for name, m in run["methods"].items():
            if m["kind"] != "sisa":
                continue
            end = m["drift"][-1]
            assert end["request"] == len(run["requests"]) and end["pending"] == 0
            assert end["own_gold"]["max_abs_delta"] == 0 and end["own_gold"]["max_abs_delta_params"] == 0, name
            assert end["own_gold"]["agree_test"] == 1 and end["own_gold"]["agree_forget"] == 1
    saved = np.load(runs["stream"] / stream.PREDICTIONS)
    models = [k for k in saved.files if "|SISA" in k]
    assert models
    for key in models:
        scenario, seed, _, split = key.split("|")
        gold = saved["|".join([scenario, seed, f"gold of {stream.sisa_name(2, 2)}", split])]
        assert np.array_equal(saved[key], gold) and np.max(np.abs(saved[key] - gold)) == 0, key


def test_batching_retrains_no_more_than_one_by_one(runs):
    res = load(runs["stream"])
    one, batched = stream.sisa_name(2, 2), stream.sisa_name(2, 2, 2)
    for run in res["runs"]:
        a, b = run["methods"][one]["trace"], run["methods"][batched]["trace"]
        assert b["cum_examples_epochs"][-1] <= a["cum_examples_epochs"][-1]
        assert b["pending"][-1] == 0 and max(b["pending"]) > 0  # held between flushes, none left at the end


def test_reports_are_rebuilt_from_the_saved_results(runs):
    for name, module in (("speedup", speedup), ("stream", stream)):
        out = runs[name]
        report = (out / deletion.REPORT).read_text()
        (out / deletion.REPORT).unlink()
        module.regenerate(out)
        assert (out / deletion.REPORT).read_text() == report
        assert "| " in report  # a table
