"""Metrics, membership-inference attacks, timing, and a tiny end-to-end comparison benchmark."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sisa
from sisa.aggregate import softmax_mean
from sisa.errors import SisaError
from sisa.eval import compare, compare_report, metrics, mia
from sisa.eval.timing import Stopwatch
from sisa.workdir import Workdir
from tests.conftest import blobs


def test_attack_on_identical_distributions_is_chance():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.exponential(1.0, 4000), rng.exponential(1.0, 4000)
    assert abs(mia.loss_attack(members, nonmembers) - 0.5) < 0.03
    assert abs(mia.confidence_attack(-members, -nonmembers) - 0.5) < 0.03


def test_attack_on_memorised_members_is_near_one():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.exponential(0.05, 500), rng.exponential(1.0, 500)  # members' losses clearly lower
    assert mia.loss_attack(members, nonmembers) > 0.9
    assert mia.loss_attack(nonmembers, members) < 0.1  # the direction matters


def test_lira_calibrates_per_example_difficulty():
    """Members gain +2 in φ over a per-example difficulty that varies far more: a global threshold
    barely sees it, the shadow models' out-distribution per example does."""
    rng = np.random.default_rng(0)
    n, shadows = 2000, 8
    difficulty = rng.normal(0, 5, n)
    member = rng.random(n) < 0.5
    in_mask = mia.balanced_masks(shadows, n, rng)  # each example in half of the shadows
    assert (in_mask.sum(0) == shadows // 2).all()
    shadow_phi = difficulty + 2.0 * in_mask + rng.normal(0, 0.3, (shadows, n))
    target_phi = difficulty + 2.0 * member + rng.normal(0, 0.3, n)
    global_auc = mia.auc(target_phi[member], target_phi[~member])
    for online in (False, True):
        scores = mia.lira_scores(target_phi, shadow_phi, in_mask, online=online)
        assert mia.auc(scores[member], scores[~member]) > max(0.95, global_auc + 0.2)
    same = mia.lira_scores(difficulty + rng.normal(0, 0.3, n), shadow_phi, np.zeros_like(in_mask))
    assert abs(mia.auc(same[member], same[~member]) - 0.5) < 0.05


def test_logit_confidence_is_stable_for_confident_predictions():
    lp = np.asarray(jax.nn.log_softmax(jnp.array([[40.0, 0.0, 0.0], [0.0, 0.0, 0.0]])))
    phi = mia.logit_confidence(lp, np.array([0, 2]))
    assert np.isfinite(phi).all() and phi[0] > 35 and abs(phi[1] - np.log(0.5)) < 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_cfg):
    ds = blobs()
    root = tmp_path_factory.mktemp("metrics") / "run"
    sisa.train(root, tiny_cfg, dataset=ds, progress=False)
    return ds, Workdir.open(root)


def test_a_model_agrees_with_itself(model):
    ds, wd = model
    params = wd.checkpoints[0].restore(wd.config.partition.slices - 1)[0]["params"]
    lp = metrics.log_probs(wd.trainer, params, ds.x_test)
    assert metrics.agreement(lp, lp) == 1.0 and metrics.mean_kl(lp, lp) == 0.0
    assert metrics.accuracy(lp, ds.y_test) > 0.9
    other = metrics.log_probs(wd.trainer, jax.tree.map(lambda a: a * 0.5, params), ds.x_test)
    assert metrics.mean_kl(other, lp) > 0
    m = metrics.outputs_metrics({"test": lp}, {"test": ds.y_test}, {"test": lp})
    assert m["agree_test"] == 1.0 and m["kl_test"] == 0.0


def test_ensemble_output_is_the_engines_softmax_aggregate(model):
    ds, wd = model
    from sisa import serve

    members, probs = serve.shard_probabilities(wd, ds.x_test)
    lp = metrics.ensemble_log_probs(wd.trainer, members.params, ds.x_test)
    np.testing.assert_allclose(np.exp(lp), probs, atol=1e-6)
    np.testing.assert_allclose(np.exp(metrics.softmax_mean(lp)), softmax_mean(probs), atol=1e-6)


def test_stopwatch_separates_compilation():
    f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.25)
    with Stopwatch() as cold:
        f(jnp.ones(7)).block_until_ready()
    with Stopwatch() as warm:
        f(jnp.ones(7)).block_until_ready()
    assert cold.compile_seconds > 0 and warm.compile_seconds == 0
    assert 0 <= cold.compute_seconds <= cold.seconds


TINY = {
    "name": "tiny", "seeds": [0, 1], "validation_fraction": 0.15, "shadows": 4,
    "forget": {"random": [0.1], "class": True},
    "sisa": {"shards": [2], "slices": 2},
    "data": {"dataset": "blobs"}, "model": {"hidden": [16]},
    "train": {"epochs": 3, "batch_size": 16, "learning_rate": 1e-2},
    "methods": {
        "fine_tune": {"budget": {"epochs": 1, "batch_size": 16}, "grid": {"learning_rate": [1e-3, 1e-2]}},
        "grad_ascent": {"budget": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3}},
    },
}


def _shuffled(ds):
    """The same examples with their rows in another order (ids no longer sorted)."""
    perm = np.random.default_rng(3).permutation(len(ds.ids))
    return dataclasses.replace(ds, x=ds.x[perm], y=ds.y[perm], ids=ds.ids[perm])


def test_compare_end_to_end_writes_report_results_and_plots(tmp_path):
    out = compare.run(compare.from_dict(TINY), tmp_path / "out", dataset=_shuffled(blobs()), progress=False)
    d = tmp_path / "out"
    for name in ("report.md", "results.json", *compare.compare_report.PLOTS):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    for png in compare.compare_report.PLOTS:
        assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((d / "results.json").read_text())
    assert out["results"] == str(d / "results.json")
    assert set(results["summary"]) == {"random 10%", "class"}
    exact, sisa_gold, noop = compare.sisa_names(2)
    assert set(results["summary"]["class"]) == {compare.GOLD, compare.ORIGINAL, "fine_tune", "grad_ascent",
                                                 exact, sisa_gold, noop}
    rows = results["rows"]
    assert {r["seed"] for r in rows} == {0, 1}
    for row in rows:
        if row["method"] in (compare.GOLD, sisa_gold):
            assert row["max_abs_diff"] == 0 and row["agree_test"] == 1.0
        if row["method"] == exact:  # measured, not assumed: forget(train(D), K) == train(D \ K)
            assert row["max_abs_diff"] == 0.0 and row["reference"] == sisa_gold
        for k in compare_report.ATTACKS:
            assert 0 <= row[k] <= 1
    # Non-members of the forgotten class's own: to a model that never saw the class, K looks like them.
    # (Against the whole test split, the gold's loss-attack AUC here would be near 0: class difficulty.)
    for row in rows:
        if row["scenario"] == "class" and row["method"] == compare.GOLD:
            assert row["mia_loss_auc"] > 0.25
    for sc in results["summary"].values():  # doing nothing never passes for retraining
        for m in (compare.ORIGINAL, noop):
            assert sc[m]["verdict"]["result"] != "indistinguishable"
        assert sc[exact]["vs_reference"]["acc_test"]["mean"] == 0.0
    assert out["verdicts"]["class"][exact] in ("indistinguishable", "inconclusive")
    trials = results["search"]["class"]["fine_tune"]["trials"]
    assert len(trials) == 2 and all({"utility", "progress", "eligible"} <= set(t) for t in trials)
    report = (d / "report.md").read_text()
    for part in ("## Verdicts", "| method |", "## Definitions", "## Exact config", exact, compare.GOLD,
                 "95% CI", "LiRA online"):
        assert part in report, part


def _rows(method, kind, values_per_seed, reference=compare.GOLD, noop=compare.ORIGINAL):
    return [{"seed": s, "scenario": "sc", "method": method, "kind": kind, "reference": reference, "noop": noop,
             **v} for s, v in enumerate(values_per_seed)]


def test_verdicts_need_utility_forgetting_and_attack_equivalence():
    rng = np.random.default_rng(0)
    n = 6

    def seed_values(acc, loss, auc):
        return [{"acc_test": a, "acc_test_kept": a, "acc_forget": a, "forget_loss": lo, "seconds": 1.0,
                 "max_abs_diff": 0.0, **{k: u for k in compare_report.ATTACKS}} for a, lo, u in zip(acc, loss, auc)]

    acc, gold_loss, auc = 0.9 + rng.normal(0, 0.005, n), 1.0 + rng.normal(0, 0.05, n), 0.5 + rng.normal(0, 0.02, n)
    noop_loss, noop_auc = gold_loss - 0.5, auc + 0.1
    rows = (_rows(compare.GOLD, "gold", seed_values(acc, gold_loss, auc))
            + _rows(compare.ORIGINAL, "original", seed_values(acc + 0.01, noop_loss, noop_auc))
            + _rows("perfect", "baseline", seed_values(acc, gold_loss, auc))
            + _rows("wrecks", "baseline", seed_values(acc - 0.3, gold_loss, auc))
            + _rows("too loud", "baseline", seed_values(acc, gold_loss + 3, auc - 0.3)))
    summary = compare_report.summarize(rows, 0.02)["sc"]
    assert summary["perfect"]["verdict"]["result"] == "indistinguishable"
    assert summary[compare.ORIGINAL]["verdict"]["result"] == "not_shown"
    assert any("forgetting" in w for w in summary[compare.ORIGINAL]["verdict"]["why"])
    assert any("utility" in w for w in summary["wrecks"]["verdict"]["why"])
    assert any("AUC" in w for w in summary["too loud"]["verdict"]["why"])
    assert "verdict" not in summary[compare.GOLD]
    # When retraining itself does not move the forget set, nothing can be shown to forget.
    flat = (_rows(compare.GOLD, "gold", seed_values(acc, gold_loss, auc))
            + _rows(compare.ORIGINAL, "original", seed_values(acc, gold_loss + rng.normal(0, 0.05, n), auc))
            + _rows("perfect", "baseline", seed_values(acc, gold_loss, auc)))
    assert compare_report.summarize(flat, 0.02)["sc"]["perfect"]["verdict"]["result"] == "inconclusive"


def test_search_objective_is_won_by_neither_a_no_op_nor_a_wrecked_model():
    from sisa.unlearn.baselines.search import pick, progress

    original = {"utility": 0.9, "gap": -0.4, "leak": float("nan")}
    assert progress(original, original) == 0.0  # doing nothing
    assert progress({**original, "gap": 0.0}, original) == 1.0  # the forget set looks unseen
    assert progress({**original, "gap": 0.8}, original) == -1.0  # overshoot is not better
    cls = {"utility": 0.9, "gap": -0.4, "leak": 0.95}
    assert progress({**cls, "leak": 0.0}, cls) == 1.0
    trials = [{"utility": 0.9, "progress": 0.0, "eligible": True},  # no-op
              {"utility": 0.5, "progress": 1.0, "eligible": False},  # wrecked
              {"utility": 0.89, "progress": 0.6, "eligible": True}]
    assert pick(trials) == 2
    none_eligible = [{"utility": 0.5, "progress": 1.0, "eligible": False},
                     {"utility": 0.7, "progress": 0.2, "eligible": False}]
    assert pick(none_eligible) == 1  # least destructive


def test_t_intervals_and_paired_differences():
    from sisa.eval import stats

    ci = stats.mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and abs(ci["half"] - 4.302653 / np.sqrt(3)) < 1e-5 and ci["lo"] < 2 < ci["hi"]
    same = stats.paired([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same["mean"] == 0 and same["half"] == 0 and same["p"] == 1.0
    shifted = stats.paired([1.1, 2.0, 3.2, 4.1], [1.0, 1.8, 3.0, 4.0])
    assert shifted["lo"] > 0 and shifted["p"] < 0.05
    assert np.isnan(stats.mean_ci([0.5])["half"]) and stats.fmt(stats.mean_ci([0.5])) == "0.500"
    with pytest.raises(ValueError):
        stats.paired([1.0], [1.0, 2.0])


def test_compare_never_writes_over_results_and_has_a_quick_budget(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("committed")
    with pytest.raises(SisaError, match="not empty.*--overwrite"):
        compare.run(compare.from_dict(TINY), out, dataset=blobs(), progress=False)
    assert (out / "report.md").read_text() == "committed"
    q = compare.quick(compare.from_dict({**TINY, "seeds": [0, 1, 2], "forget": {"random": [0.1, 0.01], "class": True},
                                         "sisa": {"shards": [2, 4], "slices": 2}}))
    assert q.seeds == (0, 1) and q.shadows == 4 and q.forget_fractions == (0.01,) and not q.forget_class and q.sisa_shards == (2,)
    assert all(len(v) <= 2 for m in q.methods for v in m.grid.values())


def test_compare_config_schema(tmp_path):
    for path in ("experiments/compare_mnist5k.toml", "experiments/compare_gpu.toml"):
        cfg = compare.load(path)
        assert compare.from_dict(compare.to_dict(cfg)) == cfg
    bad = [
        {**TINY, "bogus": 1},
        {**TINY, "forget": {"random": [0.1], "everything": True}},
        {**TINY, "methods": {"no_such_method": {}}},
        {**TINY, "methods": {"retrain": {}}},
        {**TINY, "methods": {"npo": {"hparams": {"betta": 0.1}}}},
        {**TINY, "methods": {"npo": {"budget": {"lr": 0.1}}}},
        {**TINY, "methods": {"npo": {"grid": {"beta": 0.1}}}},
        {**TINY, "partition": {"shards": 4}},
        {**TINY, "train": {"epochs": 3, "bogus": 1}},
        {**TINY, "forget": {"random": [1.5]}},
        {**TINY, "shadows": 3},
        {**TINY, "sisa": {"shards": [2], "shadow_shards": 3}},
    ]
    for d in bad:
        with pytest.raises(SisaError):
            compare.from_dict(d)
    (tmp_path / "c.toml").write_text("name = 'x'\n[sisa]\nshards = [1]\n")
    with pytest.raises(SisaError):
        compare.load(tmp_path / "c.toml")


def test_lira_columns_follow_ids_in_any_row_order():
    """The attacks read the shadows' column of each forgotten example by its row: right whatever
    the order of the data set's ids."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.permutation(rng.choice(10_000, 300, replace=False))
        wanted = rng.choice(ids, 40, replace=False)
        assert (ids[compare._rows_of(ids, wanted)] == wanted).all()
