"""Approximate-unlearning baselines: each does what its paper says, on tiny blobs and a tiny MLP."""

import jax
import numpy as np
import pytest

import sisa
from sisa.errors import SisaError
from sisa.eval import metrics
from sisa.unlearn.baselines import BASELINES, Budget, fisher, salun, search
from sisa.workdir import Workdir
from tests.conftest import blobs, tree_equal


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_cfg):
    ds = blobs()
    cfg = tiny_cfg.replace(partition={"shards": 1, "slices": 1})
    root = tmp_path_factory.mktemp("baselines") / "original"
    sisa.train(root, cfg, dataset=ds, progress=False)
    wd = Workdir.open(root)
    params = wd.checkpoints[0].restore(0)[0]["params"]
    is_f = np.zeros(len(ds.ids), bool)
    is_f[::10] = True  # 30 of 300
    return {
        "ds": ds, "cfg": cfg, "trainer": wd.trainer, "params": params, "forget_ids": ds.ids[is_f],
        "forget": (ds.x[is_f], ds.y[is_f]), "retain": (ds.x[~is_f], ds.y[~is_f]), "retain_ids": ds.ids[~is_f],
    }


def _forget_loss(s, params):
    x, y = s["forget"]
    return metrics.losses(metrics.log_probs(s["trainer"], params, x), y).mean()


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_returns_params_of_the_same_tree(setup, name):
    s = setup
    kw = {"retain_ids": s["retain_ids"]} if name == "retrain" else {}
    result = BASELINES[name](s["trainer"], s["params"], s["forget"], s["retain"], key=jax.random.key(1), **kw)
    assert jax.tree.structure(result.params) == jax.tree.structure(s["params"])
    for new, old in zip(jax.tree.leaves(result.params), jax.tree.leaves(s["params"])):
        assert new.shape == old.shape and new.dtype == old.dtype
        assert np.isfinite(np.asarray(new)).all()
    assert result.seconds > 0 and result.examples_passes > 0
    assert set(BASELINES[name].defaults) <= set(result.hparams)


def test_gradient_ascent_raises_the_forget_loss(setup):
    s = setup
    before = _forget_loss(s, s["params"])
    result = BASELINES["grad_ascent"](s["trainer"], s["params"], s["forget"], s["retain"],
                                      Budget(epochs=10, batch_size=16, learning_rate=1e-2), jax.random.key(0))
    after = _forget_loss(s, result.params)
    assert after > 2 * before + 0.1, (before, after)
    assert result.examples_passes == 10 * len(s["forget"][0])


def test_salun_updates_only_salient_weights(setup):
    s = setup
    ratio, budget = 0.3, Budget(epochs=1, batch_size=16, learning_rate=1e-2)
    mask = salun.saliency_mask(s["trainer"], s["params"], s["forget"], ratio, budget.batch_size)
    total = sum(m.size for m in jax.tree.leaves(mask))
    assert abs(sum(int(m.sum()) for m in jax.tree.leaves(mask)) - ratio * total) <= 1
    result = BASELINES["salun"](s["trainer"], s["params"], s["forget"], s["retain"], budget, jax.random.key(0),
                                ratio=ratio)
    moved = 0
    for m, new, old in zip(jax.tree.leaves(mask), jax.tree.leaves(result.params), jax.tree.leaves(s["params"])):
        m, new, old = np.asarray(m), np.asarray(new), np.asarray(old)
        assert np.array_equal(new[~m].view(np.uint32), old[~m].view(np.uint32))  # bit for bit
        moved += int((new[m] != old[m]).sum())
    assert moved > 0.5 * round(ratio * total)


def test_fisher_noise_is_large_only_where_the_fisher_is_small(setup):
    s = setup
    f = np.concatenate([np.ravel(a) for a in jax.tree.leaves(
        fisher.fisher_diagonal(s["trainer"], s["params"], s["retain"], batch_size=16))])

    def delta(alpha, clip):
        result = BASELINES["fisher"](s["trainer"], s["params"], s["forget"], s["retain"], Budget(batch_size=16),
                                     jax.random.key(0), alpha=alpha, clip=clip)
        return np.concatenate([np.ravel(np.asarray(a) - np.asarray(b))
                               for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(s["params"]))])

    alpha = 1e-4
    d = delta(alpha, 1e6)
    z = d / np.sqrt(alpha * np.minimum(1 / (f + 1e-8), 1e6))
    assert abs(z.std() - 1) < 0.15 and abs(z.mean()) < 0.15  # exactly scale * N(0, 1) per weight
    # Weights the retain set pins down (large Fisher) barely move; unconstrained ones move a lot.
    order = np.argsort(f)
    small, large = order[: len(f) // 10], order[-len(f) // 10 :]
    assert np.abs(d[small]).mean() > 20 * np.abs(d[large]).mean()
    assert np.abs(d[large]).max() < 5 * np.sqrt(alpha / f[large].min())
    # The clip bounds the inverse Fisher, so the noise of every weight.
    assert np.abs(delta(alpha, 10.0)).max() < 6 * np.sqrt(alpha * 10.0)


def test_retrain_is_bitwise_training_without_the_forget_set(setup, tmp_path):
    s = setup
    result = BASELINES["retrain"](s["trainer"], s["params"], s["forget"], s["retain"], retain_ids=s["retain_ids"])
    sisa.train(tmp_path / "scratch", s["cfg"], dataset=s["ds"].without(s["forget_ids"]), progress=False)
    scratch = Workdir.open(tmp_path / "scratch").checkpoints[0].restore(0)[0]["params"]
    assert tree_equal(result.params, scratch)
    assert not tree_equal(result.params, s["params"])


def test_a_second_call_compiles_nothing(setup):
    """Data sizes are bucketed and hyper-parameters traced: new sizes and values reuse the programs."""
    s = setup
    (xf, yf), (xr, yr) = s["forget"], s["retain"]
    for name in sorted(set(BASELINES) - {"retrain"}):
        fn = BASELINES[name]
        fn(s["trainer"], s["params"], (xf, yf), (xr, yr), key=jax.random.key(0))
        hp = {k: v * 0.5 for k, v in fn.defaults.items() if isinstance(v, float)}
        budget = Budget(**{**fn.default_budget.__dict__, "learning_rate": fn.default_budget.learning_rate * 2})
        again = fn(s["trainer"], s["params"], (xf[:-3], yf[:-3]), (xr[:-5], yr[:-5]), budget, jax.random.key(3), **hp)
        assert again.compile_seconds == 0, name


def test_unknown_hyper_parameters_are_refused(setup):
    s = setup
    with pytest.raises(SisaError, match="unknown hyper-parameter"):
        BASELINES["npo"](s["trainer"], s["params"], s["forget"], s["retain"], betta=0.1)


def test_search_picks_a_grid_point_on_validation(setup):
    s = setup
    validation = (s["ds"].x_test[:45], s["ds"].y_test[:45])  # stands in for a held-out split here
    grid = {"learning_rate": [1e-5, 1e-3], "forget_weight": [1.0]}
    found = search("grad_diff", s["trainer"], s["params"], s["forget"], s["retain"], validation, grid)
    assert found["best"] in [t["point"] for t in found["trials"]] and len(found["trials"]) == 2
    chosen = next(t for t in found["trials"] if t["point"] == found["best"])
    for t in found["trials"]:  # the pick: eligible first, then the most forgetting progress
        assert t["eligible"] == (t["utility"] >= found["original"]["utility"] - 0.02)
        if t["eligible"] and chosen["eligible"]:
            assert chosen["progress"] >= t["progress"]
    assert found["eligible"] == chosen["eligible"]
    with pytest.raises(SisaError, match="unknown"):
        search("grad_diff", s["trainer"], s["params"], s["forget"], s["retain"], validation, {"lr": [1.0]})
