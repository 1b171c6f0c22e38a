"""The accuracy recipe's knobs (train.lr_schedule, train.label_smoothing, train.weight_decay):
defaults change nothing, and a forget under them is still train(D \\ K) bit for bit."""

import numpy as np
import pytest

import sisa
from sisa.config import Config, load
from sisa.errors import SisaError
from sisa.verification import compare
from sisa.workdir import Workdir
from tests.conftest import blobs


def test_defaults_keep_the_digest():
    # Config().digest() before the knobs existed: workdirs trained then still open.
    assert Config().digest() == "2990adf32fa2eb55"
    assert Config().replace(train={"optimizer": "adamw", "schedule": "uniform"}).digest() == "86a114236249de2a"
    for change in ({"lr_schedule": "cosine"}, {"label_smoothing": 0.1}, {"weight_decay": 0.0}):
        assert Config().replace(train=change).digest() != Config().digest(), change


@pytest.mark.parametrize("field,value", [("lr_schedule", "linear"), ("label_smoothing", 1.0),
                                         ("label_smoothing", -0.1), ("weight_decay", -1.0),
                                         ("weight_decay", float("nan")), ("label_smoothing", True)])
def test_bad_values_are_refused(field, value):
    with pytest.raises(SisaError, match=f"train.{field}|learning-rate schedule"):
        Config().replace(train={field: value})


def test_mnist5k_experiment_loads():
    cfg = load("experiments/mnist5k.toml")
    assert cfg.partition.shards == 5 and cfg.data.dataset == "mnist5k"


RECIPES = {
    "cosine_budget_smooth": {"train": {"lr_schedule": "cosine", "label_smoothing": 0.1}},
    "cosine_uniform_adamw": {"train": {"lr_schedule": "cosine", "schedule": "uniform", "optimizer": "adamw",
                                       "weight_decay": 0.05, "checkpoint_every": 2},
                             "model": {"dropout": 0.2}},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_forget_is_exact_under_the_recipe(name, tmp_path):
    ds = blobs(n_train=240, n_test=60, seed=3)
    cfg = Config().replace(data={"dataset": "blobs"}, partition={"shards": 2, "slices": 3},
                           model={"hidden": (16,)}, train={"epochs": 3, "batch_size": 16, "learning_rate": 1e-2})
    cfg = cfg.replace(**RECIPES[name])  # Config.replace changes only the fields named
    a, b = tmp_path / "forgotten", tmp_path / "scratch"
    sisa.train(a, cfg, dataset=ds, progress=False)
    store = Workdir.open(a).store()
    # One id from a middle slice of shard 0 and two from the first slice of shard 1: stage
    # lengths (so the cosine's steps) change, and one shard retrains from stage 0.
    ids = (store.ids[(store.shard == 0) & (store.slice == 1)][:1].tolist()
           + store.ids[(store.shard == 1) & (store.slice == 0)][:2].tolist())
    sisa.forget(a, ids, progress=False)
    sisa.train(b, cfg, dataset=ds.without(ids), progress=False)
    result = compare(Workdir.open(a), Workdir.open(b))
    assert result["identical"], result
    for agg in ("vote", "softmax"):
        pa, pb = sisa.predict(a, ds.x_test, agg), sisa.predict(b, ds.x_test, agg)
        assert pa["labels"] == pb["labels"] and pa["probabilities"] == pb["probabilities"]


def test_cosine_changes_the_training(tmp_path):
    ds = blobs(n_train=120, n_test=30, seed=1)
    base = Config().replace(data={"dataset": "blobs"}, partition={"shards": 2, "slices": 2},
                            model={"hidden": (8,)}, train={"epochs": 2, "batch_size": 16, "learning_rate": 1e-2})
    probs = {}
    for schedule in ("constant", "cosine"):
        cfg = base.replace(train={"lr_schedule": schedule})
        sisa.train(tmp_path / schedule, cfg, dataset=ds, progress=False)
        probs[schedule] = np.asarray(sisa.predict(tmp_path / schedule, ds.x_test)["probabilities"])
    assert not np.array_equal(probs["constant"], probs["cosine"])
