"""The accuracy bars of the engine, and the demo's promise, on the embedded data sets."""

from pathlib import Path

import sisa
from sisa.config import load
from sisa.data import datasets
from sisa.demos import DEMO_CONFIG


def test_digits_four_shards_three_slices_reach_90_percent(tmp_path):
    cfg = sisa.Config().replace(data={"dataset": "digits"}, partition={"shards": 4, "slices": 3}, train={"epochs": 20})
    sisa.train(tmp_path / "run", cfg, dataset=datasets.load("digits"), progress=False)
    ev = sisa.evaluate(tmp_path / "run")
    assert ev["accuracy_softmax"] >= 0.90 and ev["accuracy_vote"] >= 0.90, ev


def test_demo_is_exact_and_close_to_monolithic(tmp_path):
    out = sisa.demo(tmp_path / "demo", progress=False)
    assert out["bit_identical"]
    assert out["accuracy"] >= out["accuracy_monolithic"] - 0.02  # issue 15's bar, by the recipe
    assert len(out["forget_ids"]) == 10
    assert out["forget"]["examples_epochs_retrained"] < out["forget"]["examples_epochs_full_retrain"]


def test_demo_runs_the_recipe_the_experiments_measure():
    """experiments/mnist5k.toml (what scripts/bench_accuracy.py measured) is the demo's config."""
    assert load(Path(__file__).parents[1] / "experiments" / "mnist5k.toml") == DEMO_CONFIG


def test_every_api_name_stays_the_function_once_the_modules_load():
    """`sisa.<name>` for each API function, after every sisa module has been imported: a module
    of the same name (sisa/demo.py once) would replace the function after its first call."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(sisa.__path__, "sisa."):
        importlib.import_module(info.name)
    for name in sisa._API:
        assert callable(getattr(sisa, name)), name
