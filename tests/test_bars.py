"""The accuracy bars of the engine, and the demo's promise, on the embedded data sets."""

import sisa
from sisa.data import datasets


def test_digits_four_shards_three_slices_reach_90_percent(tmp_path):
    cfg = sisa.Config().replace(data={"dataset": "digits"}, partition={"shards": 4, "slices": 3}, train={"epochs": 20})
    sisa.train(tmp_path / "run", cfg, dataset=datasets.load("digits"), progress=False)
    ev = sisa.evaluate(tmp_path / "run")
    assert ev["accuracy_softmax"] >= 0.90 and ev["accuracy_vote"] >= 0.90, ev


def test_demo_is_exact_and_close_to_monolithic(tmp_path):
    out = sisa.demo(tmp_path / "demo", progress=False)
    assert out["bit_identical"]
    assert out["accuracy"] >= out["accuracy_monolithic"] - 0.03
    assert len(out["forget_ids"]) == 10
    assert out["forget"]["examples_epochs_retrained"] < out["forget"]["examples_epochs_full_retrain"]
