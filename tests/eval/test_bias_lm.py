"""The biased-documents benchmark (sisa.eval.bias_lm): templates, bias score, exact deletion of
the biased documents, the gradient-ascent methods, config and CLI plumbing."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import sisa
from sisa.config import Config, DataConfig, ModelConfig
from sisa.errors import SisaError
from sisa.eval import bias_lm, compare
from sisa.eval import bias_templates as bt

CONFIG = Path(__file__).parents[2] / "experiments" / "bias_lm.toml"
AXES = ("gender-profession", "age-attribute")


def tiny(**corpus) -> bias_lm.BiasLMConfig:
    """A corpus of a few dozen documents and a model of width 16: seconds, not minutes."""
    c = {"clean_docs": 40, "validation_docs": 6, "test_docs": 6, "docs_per_axis": 12, "nonmembers_per_axis": 6,
         "pairs_per_axis": 8, "axes": AXES, **corpus}
    engine = Config(data=DataConfig(dataset="pydoc", task="lm", context=64),
                    model=ModelConfig(name="transformer_lm", hidden=(16,), options=(("heads", 2),)))
    engine = engine.replace(train={"epochs": 1, "batch_size": 16, "learning_rate": 3e-3})
    return bias_lm.BiasLMConfig(seeds=(0, 1), corpus=bias_lm.CorpusConfig(**c), shards=2, slices=2, engine=engine)


# --------------------------------------------------------------------------------------------
# Templates


def test_generator_is_deterministic_with_content_ids():
    for axis in bt.AXES:
        members, nonmembers = bt.documents(axis, 30, 20, seed=3)
        again = bt.documents(axis, 30, 20, seed=3)
        assert (members, nonmembers) == again
        assert not {d.id for d in members} & {d.id for d in nonmembers}
        other_members, _ = bt.documents(axis, 30, 20, seed=4)
        assert [d.id for d in members] != [d.id for d in other_members]  # the seed draws the members
        # An id names a document's content, whichever seed drew it.
        by_id = {d.id: d.text for d in bt.all_documents(axis)}
        assert len(set(by_id.values())) == len(by_id)
        assert all(by_id[d.id] == d.text for d in members + other_members)


def test_heldout_pairs_never_appear_in_training_documents():
    for axis, spec in bt.AXES.items():
        train, val, test = (set(spec.frames[s]) for s in bt.SPLITS)
        assert not (train & val) and not (train & test) and not (val & test)
        docs = [d.text for d in bt.all_documents(axis)]
        corpus = "\n".join(docs)
        for split in ("validation", "test"):
            pairs = bt.pairs(axis, split)
            assert pairs and all(p.frame not in train for p in pairs)
            for p in pairs:
                assert p.stereotyped != p.anti
                assert p.stereotyped not in corpus and p.anti not in corpus


def test_documents_fit_the_context_and_spans_are_the_stereotyped_attribute():
    for axis, spec in bt.AXES.items():
        stereotyped = {(g, w) for g, pole in spec.groups for w in spec.poles[pole]}
        anti = {(g, w) for g, pole in spec.groups for w in spec.poles[1 - pole]}
        for d in bt.all_documents(axis):
            assert len(d.text) <= bt.MAX_CHARS and d.text.isascii()
            start, end = d.span
            group = next(g for g, _ in spec.groups if g.lower() in d.text.lower())
            assert (group, d.text[start:end]) in stereotyped  # the harmful span: the group's stereotyped attribute
            other = d.counter[start:len(d.counter) - (len(d.text) - end)]
            assert d.counter == d.text[:start] + other + d.text[end:] and (group, other) in anti
        # Counterbalanced: as many groups stereotyped with each pole.
        assert sum(p for _, p in spec.groups) * 2 == len(spec.groups)


# --------------------------------------------------------------------------------------------
# The bias score


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """An evaluator on the tiny corpus and an untrained model (its own initialisation)."""
    from sisa.training.step import trainer_for

    cfg = tiny()
    corpus = bias_lm.build_corpus(cfg, 0, tmp_path_factory.mktemp("corpus"))
    ds = corpus.dataset
    trainer = trainer_for(cfg.engine, tuple(ds.x.shape[1:]), ds.num_classes, ds.scale, ds.vocab_size, "lm")
    model = bias_lm.Model.single(trainer, trainer.init(0)["params"])
    return cfg, corpus, trainer, model


def test_bias_score_flips_sign_when_pairs_are_swapped_and_is_zero_on_equal_pairs(untrained):
    cfg, corpus, _, model = untrained
    ev = bias_lm.Evaluator(cfg, corpus)
    swapped = dataclasses.replace(corpus, pairs={k: bt.swapped(v) for k, v in corpus.pairs.items()})
    same = dataclasses.replace(corpus, pairs={k: [dataclasses.replace(p, anti=p.stereotyped) for p in v]
                                              for k, v in corpus.pairs.items()})
    bias, flipped = ev.bias(model), bias_lm.Evaluator(cfg, swapped).bias(model)
    assert any(gap != 0 for gap, _ in bias.values())
    for axis in AXES:
        assert flipped[axis][0] == -bias[axis][0]  # exactly: the same numbers, subtracted the other way
        assert bias_lm.Evaluator(cfg, same).bias(model)[axis] == (0.0, 0.0)


def test_gradient_ascent_raises_the_forget_documents_loss(untrained):
    from sisa.unlearn.baselines import Budget
    from sisa.unlearn.lm_baselines import grad_ascent, mask_grad_ascent

    cfg, corpus, trainer, model = untrained
    ev = bias_lm.Evaluator(cfg, corpus)
    data = ev.unlearn_data(AXES, corpus.dataset.x)
    budget = Budget(steps=6, batch_size=8, learning_rate=3e-3)

    def nll(params, weight):
        token = bias_lm.Model.single(trainer, params).score(data.forget)
        return -(token * weight).sum() / weight.sum()

    real = data.forget[:, 1:] != 0
    params = jax_params(model)
    ga = grad_ascent(trainer, params, data, budget, key=0)
    assert ga.examples_passes == 6 * 8 and ga.hparams["learning_rate"] == 3e-3
    assert nll(ga.params, real) > nll(params, real) + 0.1
    spans = data.spans.astype(float)
    assert spans.sum() > 0 and np.all(spans <= real)
    mga = mask_grad_ascent(trainer, params, data, budget, key=0)
    assert nll(mga.params, spans) > nll(params, spans) + 0.1  # the harmful spans' loss goes up


def jax_params(model):
    import jax

    return jax.tree.map(lambda a: np.asarray(a)[0], model.params)


# --------------------------------------------------------------------------------------------
# Exact deletion of the biased documents


def test_sisa_deletion_of_biased_documents_equals_retraining_and_leaves_nothing(tmp_path):
    from sisa.verification import compare as same_states
    from sisa.workdir import Workdir

    cfg = tiny()
    corpus = bias_lm.build_corpus(cfg, 0, tmp_path)
    biased = corpus.member_ids(AXES)
    run_cfg = bias_lm.engine(cfg, corpus, 0, shards=cfg.shards, slices=cfg.slices)
    sisa.train(tmp_path / "trained", run_cfg, dataset=corpus.dataset, progress=False)
    sisa.train(tmp_path / "scratch", run_cfg, dataset=corpus.dataset.without(biased), progress=False)
    report = sisa.forget(tmp_path / "trained", biased, progress=False)
    assert report["affected_shards"]

    assert same_states(Workdir.open(tmp_path / "trained"), Workdir.open(tmp_path / "scratch"))["identical"]
    ev = bias_lm.Evaluator(cfg, corpus)
    forgot, scratch = bias_lm.Model.workdir(tmp_path / "trained"), bias_lm.Model.workdir(tmp_path / "scratch")
    for name in ("test/gender-profession/stereotyped", "member/age-attribute", "clean_test"):
        a, b = forgot.score(ev.rows[name]), scratch.score(ev.rows[name])
        assert np.abs(a - b).max() == 0.0  # measured, not assumed
    assert ev.bias(forgot) == ev.bias(scratch)

    audit = sisa.audit(tmp_path / "trained")
    assert audit["clean"], audit
    assert audit["forgotten"] == len(biased) and audit["rows_scanned_for"] == len(biased)


# --------------------------------------------------------------------------------------------
# Config and plumbing


def test_quick_config_is_a_smaller_run_of_the_full_one():
    raw = bias_lm.load_dict(CONFIG)
    full, short = bias_lm.from_dict(raw), bias_lm.from_dict(raw, short=True)
    assert bias_lm.wants(CONFIG) and bias_lm.wants(raw) and not bias_lm.wants({"name": "x"})
    assert len(full.seeds) >= 3 and set(full.corpus.axes) == set(bt.AXES) and full.adapter
    assert {m.name for m in full.methods} == {"grad_ascent", "mask_grad_ascent", "neg_fine_tune", "npo",
                                              "kl_counter_fine_tune", "lora_counter_fine_tune",
                                              "reverse_distillation"}
    assert set(full.transfer_methods) >= {"grad_ascent", "mask_grad_ascent"}
    assert 1 <= len(short.seeds) <= 2 and set(short.seeds) <= set(full.seeds)
    assert len(short.corpus.axes) < len(full.corpus.axes) and not short.adapter
    assert {m.name for m in short.methods} < {m.name for m in full.methods}
    assert set(short.transfer_methods) <= {m.name for m in short.methods}
    assert all(len(v) <= 2 for m in short.methods for v in m.grid.values())
    assert short.corpus.clean_docs < full.corpus.clean_docs and short.name.endswith("-quick")
    assert short.first_seed in short.seeds


def test_bad_configs_are_refused():
    raw = bias_lm.load_dict(CONFIG)
    with pytest.raises(SisaError, match="unknown bias_lm config key"):
        compare.run({**raw, "shadows": 4}, "unused")  # compare delegates on `experiment = "bias_lm"`
    with pytest.raises(SisaError, match="unknown method"):
        bias_lm.from_dict({**raw, "methods": {"nope": {}}})
    with pytest.raises(SisaError, match="axes"):
        bias_lm.from_dict({**raw, "corpus": {"axes": ["colour-flavour"]}})
    with pytest.raises(SisaError, match="not under"):
        bias_lm.from_dict({**raw, "transfer": {"methods": ["scrub"]}})
    with pytest.raises(SisaError, match=r"\[data\] takes only"):
        bias_lm.from_dict({**raw, "data": {"dataset": "mine.txt"}})  # the benchmark builds its own corpus


def test_a_non_empty_out_directory_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SisaError, match="not empty"):
        compare.run(str(CONFIG), tmp_path, progress=False, short=True)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_every_method_runs_and_the_benchmark_writes_its_report(tmp_path):
    raw = bias_lm.load_dict(CONFIG)
    c = tiny()
    raw["seeds"], raw["search"] = [0, 1], {}
    raw["corpus"] = {**dataclasses.asdict(c.corpus), "axes": list(AXES)}
    raw["train"] = {"epochs": 1, "batch_size": 16, "learning_rate": 3e-3}
    raw["model"] = {"name": "transformer_lm", "hidden": [16], "options": {"heads": 2}}
    for spec in raw["methods"].values():
        spec["grid"] = {k: v[:1] for k, v in spec.get("grid", {}).items()}
    raw["methods"]["reverse_distillation"]["budget"]["epochs"] = 1
    out = bias_lm.run(raw, tmp_path / "out", progress=False)
    text = Path(out["report"]).read_text()
    assert "## What was found" in text and "transfer" in text.lower()
    assert all(Path(p).stat().st_size > 0 for p in out["plots"])
    import json

    results = json.loads(Path(out["results"]).read_text())
    for kind in ("full", "lora"):
        for facts in results["seeds"].values():
            assert facts["exact"][kind]["states_identical"] and facts["exact"][kind]["max_abs_diff"] == 0
            assert facts["exact"][kind]["audit"]["clean"]
