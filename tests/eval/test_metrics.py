"""Metrics, membership-inference attacks, timing, and a tiny end-to-end comparison benchmark."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sisa
from sisa.aggregate import softmax_mean
from sisa.errors import SisaError
from sisa.eval import compare, metrics, mia
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
    in_mask = np.zeros((shadows, n), bool)
    in_mask[rng.integers(0, shadows, n), np.arange(n)] = True  # each example in one disjoint shard
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
    "name": "tiny", "seeds": [0], "validation_fraction": 0.15,
    "forget": {"random": [0.1], "class": True},
    "sisa": {"shards": [2], "slices": 2},
    "data": {"dataset": "blobs"}, "model": {"hidden": [16]},
    "train": {"epochs": 3, "batch_size": 16, "learning_rate": 1e-2},
    "methods": {
        "fine_tune": {"budget": {"epochs": 1, "batch_size": 16}, "grid": {"learning_rate": [1e-3, 1e-2]}},
        "grad_ascent": {"budget": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3}},
    },
}


def test_compare_end_to_end_writes_report_results_and_plots(tmp_path):
    out = compare.run(compare.from_dict(TINY), tmp_path / "out", dataset=blobs(), progress=False)
    d = tmp_path / "out"
    for name in ("report.md", "results.json", *compare.compare_report.PLOTS):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    for png in compare.compare_report.PLOTS:
        assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((d / "results.json").read_text())
    assert out["results"] == str(d / "results.json")
    assert set(results["summary"]) == {"random 10%", "class"}
    methods = set(results["summary"]["class"])
    assert methods == {compare.GOLD, compare.ORIGINAL, "fine_tune", "grad_ascent", "SISA S=2 (exact)"}
    for row in results["rows"]:
        if row["method"] == compare.GOLD:
            assert row["mia_loss_gap"] == 0 and row["agree_test"] == 1.0
    cls = results["summary"]["class"]
    assert cls["SISA S=2 (exact)"]["acc_forget"]["mean"] == 0.0  # exact: the class is gone
    assert cls[compare.GOLD]["acc_forget"]["mean"] == 0.0
    assert results["search"]["class"]["fine_tune"]["best"]["learning_rate"] in (1e-3, 1e-2)
    report = (d / "report.md").read_text()
    assert "| method |" in report and "## Definitions" in report and "## Exact config" in report
    assert "SISA S=2 (exact)" in report and compare.GOLD in report


def test_compare_never_writes_over_results_and_has_a_quick_budget(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("committed")
    with pytest.raises(SisaError, match="not empty.*--overwrite"):
        compare.run(compare.from_dict(TINY), out, dataset=blobs(), progress=False)
    assert (out / "report.md").read_text() == "committed"
    q = compare.quick(compare.from_dict({**TINY, "seeds": [0, 1, 2], "forget": {"random": [0.1, 0.01], "class": True},
                                         "sisa": {"shards": [2, 4], "slices": 2}}))
    assert q.seeds == (0,) and q.forget_fractions == (0.01,) and not q.forget_class and q.sisa_shards == (2,)
    assert all(len(v) == 1 for m in q.methods for v in m.grid.values())


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
        {**TINY, "sisa": {"shards": [2], "shadow_shards": 3}},
    ]
    for d in bad:
        with pytest.raises(SisaError):
            compare.from_dict(d)
    (tmp_path / "c.toml").write_text("name = 'x'\n[sisa]\nshards = [1]\n")
    with pytest.raises(SisaError):
        compare.load(tmp_path / "c.toml")
