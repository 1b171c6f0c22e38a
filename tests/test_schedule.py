"""The epoch schedules' cost: what a stage trains is what `Config.stage_steps` says, and
"fractional" spends the paper's budget of E passes over each shard, whatever R.
"""

from __future__ import annotations

import numpy as np
import pytest

import sisa
from sisa.config import Config
from sisa.unlearn.exact import full_cost
from sisa.workdir import Workdir
from tests.conftest import blobs


def _steps_expected(cfg: Config, store, shard: int) -> int:
    """Steps a shard trains from scratch: each stage's `stage_steps` over its slices 0..stage."""
    per_slice = store.counts(cfg.partition.shards, cfg.partition.slices)[shard].cumsum()
    return sum(cfg.stage_steps(int(n)) for n in per_slice)


@pytest.mark.parametrize("schedule,epochs,slices,batch", [
    ("fractional", 2, 4, 16),  # 0.8 epoch per stage: every stage cut
    ("fractional", 3, 6, 8),  # 6/7
    ("fractional", 4, 2, 16),  # 2.67: two whole epochs and a cut third
    ("budget", 2, 4, 16),
    ("uniform", 2, 3, 16),
])
def test_each_shard_trains_the_steps_of_its_schedule(tmp_path, schedule, epochs, slices, batch):
    cfg = Config().replace(partition={"shards": 3, "slices": slices}, model={"hidden": (8,)},
                           train={"epochs": epochs, "schedule": schedule, "batch_size": batch})
    report = sisa.train(tmp_path / "w", cfg, dataset=blobs(n_train=250), progress=False)
    wd = Workdir.open(tmp_path / "w")
    store = wd.store()
    for c in wd.checkpoints:
        state = c.restore(c.latest())[0]
        assert int(state["step"]) == _steps_expected(cfg, store, c.shard), c.shard
    assert report["examples_epochs"] == full_cost(wd, store)


@pytest.mark.parametrize("slices", [4, 9, 20, 50])
def test_fractional_spends_the_budget_whatever_r(tmp_path, slices):
    """E passes over each shard, up to one batch per stage (its last step rounds up); "budget"
    rounds every stage up to a whole epoch, so at R > 2E it costs about R/2 passes."""
    epochs, n, shards, batch = 2, 600, 2, 8
    ds = blobs(n_train=n)
    cost = {}
    for schedule in ("fractional", "budget"):
        cfg = Config().replace(partition={"shards": shards, "slices": slices}, model={"hidden": (8,)},
                               train={"epochs": epochs, "schedule": schedule, "batch_size": batch})
        cost[schedule] = sisa.train(tmp_path / schedule, cfg, dataset=ds, progress=False)["examples_epochs"]
    assert epochs * n <= cost["fractional"] <= epochs * n + shards * slices * batch
    if slices > 2 * epochs:  # one whole epoch per stage: each stage visits all of slices 0..stage
        store = Workdir.open(tmp_path / "budget").store()
        assert cost["budget"] == store.counts(shards, slices).cumsum(axis=1).sum()
    assert cost["fractional"] <= cost["budget"]


def test_train_flag_sets_the_schedule(tmp_path, capsys):
    from sisa.cli import main
    from tests.conftest import npz_dataset

    data = npz_dataset(tmp_path)
    assert main(["train", "--workdir", str(tmp_path / "w"), "--dataset", str(tmp_path / "blobs.npz"), "--shards", "2",
                 "--slices", "5", "--epochs", "1", "--schedule", "fractional"]) == 0
    cfg = Workdir.open(tmp_path / "w").config
    assert cfg.train.schedule == "fractional" and len(data.ids) == len(Workdir.open(tmp_path / "w").store())


def test_budget_overspending_its_epochs_is_named(tmp_path, capsys):
    """At R > 2E "budget" trains about R/2 passes: a new run says so, once, and how to keep E."""
    import warnings

    from sisa.cli import main
    from sisa.config import ScheduleWarning
    from tests.conftest import npz_dataset

    assert Config().schedule_warning() is None  # R=4, E=10: 4 epochs a stage, exactly the budget
    assert Config().replace(partition={"slices": 10}).schedule_warning() is None  # 11 passes for 10
    assert Config().replace(partition={"slices": 3}, train={"epochs": 3}).schedule_warning() is None  # 4 for 3
    cfg = Config().replace(partition={"slices": 50}, train={"epochs": 5})
    assert cfg.passes() == 25.5 and "5.1x the budget" in cfg.schedule_warning()
    assert cfg.replace(train={"schedule": "fractional"}).schedule_warning() is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sisa.train(tmp_path / "w", cfg.replace(partition={"shards": 2, "slices": 20}, train={"epochs": 1}),
                   dataset=blobs(n_train=120), progress=False)
    assert [w.category for w in caught if issubclass(w.category, ScheduleWarning)] == [ScheduleWarning]
    npz_dataset(tmp_path)
    assert main(["train", "--workdir", str(tmp_path / "c"), "--dataset", str(tmp_path / "blobs.npz"), "--shards", "2",
                 "--slices", "20", "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "sisa train: warning: train.schedule \"budget\" at R=20, E=1 makes 10.5 passes" in err
