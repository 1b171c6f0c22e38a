"""Every new path of the framework keeps the promise: forget(train(D), K) == train(D \\ K), bit for
bit, for your own model, the text classifier, the language model and adapters on a frozen base;
and what cannot hold is refused with a clear message, changing nothing."""

import json
import shutil

import numpy as np
import pytest

from sisa import api
from sisa.config import Config
from sisa.data import datasets
from sisa.errors import SisaError
from sisa.verification import compare
from sisa.workdir import Workdir
from tests.conftest import blobs, file_digests

WORDS = {"pos": ["good", "great", "fine", "superb", "lovely", "nice"], "neg": ["bad", "awful", "poor", "dire", "grim", "nasty"]}
COMMON = ["the", "a", "film", "movie", "plot", "cast", "was", "is", "and", "very"]


def corpus(path, n=120, seed=0, labels=True):
    """A small labelled text set (CSV, string labels) or, without labels, a .txt file of documents."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["neg", "pos"][i % 2]
        words = rng.choice(COMMON, rng.integers(2, 6)).tolist() + rng.choice(WORDS[label], rng.integers(1, 4)).tolist()
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    if labels:
        path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    else:
        path.write_text("".join(f"{t}\n" for t, _ in rows))
    return str(path)


SMALL = {"hidden": (16,), "options": {"heads": 2}}


def text_cfg(model: str, data: str, **data_opts) -> Config:
    from sisa.config import from_dict

    return from_dict({
        "data": {"dataset": data, "context": 16, **data_opts},
        "partition": {"shards": 3, "slices": 2},
        "model": {"name": model, **SMALL},
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3},
    })


def assert_exact(tmp_path, cfg, ds, draws=3, k=3, seed=0):
    """For `draws` random sets of `k` ids: forget(train(D), K) equals train(D minus K), states and
    served outputs bit for bit. Returns the trained run's root."""
    root = tmp_path / "run"
    api.train(str(root), cfg, dataset=ds, progress=False)
    rng = np.random.default_rng(seed)
    for d in range(draws):
        copy = tmp_path / f"forgot-{d}"
        shutil.copytree(root, copy)
        ids = rng.choice(ds.ids, k, replace=False).tolist()
        api.forget(str(copy), ids, progress=False)
        scratch = tmp_path / f"scratch-{d}"
        api.train(str(scratch), cfg, dataset=ds.without(ids), progress=False)
        result = compare(Workdir.open(copy), Workdir.open(scratch))
        assert result["identical"], (ids, result)
        assert api.evaluate(str(copy)) == api.evaluate(str(scratch))
    return root


USER_MODEL = '''
import jax
from flax import nnx


class {name}(nnx.Module):
    """A two-layer perceptron with its own width option and dropout."""

    def __init__(self, input_shape, num_classes, *, rngs, width=8, rate=0.0):
        import math

        self.a = nnx.Linear(math.prod(input_shape), width, rngs=rngs)
        self.b = nnx.Linear(width, num_classes, rngs=rngs)
        self.rate = rate

    def __call__(self, x, *, key=None):
        h = jax.nn.tanh(self.a(x.reshape(x.shape[0], -1)))
        if key is not None and self.rate:
            h = h * jax.random.bernoulli(key, 1 - self.rate, h.shape) / (1 - self.rate)
        return self.b(h)
'''


def user_module(tmp_path, monkeypatch, name="TinyNet", module="usernet_a", body=USER_MODEL):
    (tmp_path / f"{module}.py").write_text(body.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:{name}"


def test_your_own_model_forgets_exactly(tmp_path, monkeypatch, tiny_cfg, tiny_ds):
    name = user_module(tmp_path, monkeypatch, module="usernet_exact")
    cfg = tiny_cfg.replace(model={"name": name, "options": (("rate", 0.1), ("width", 12))})
    root = assert_exact(tmp_path, cfg, tiny_ds)
    manifest = json.loads((root / "sisa.json").read_text())
    assert len(manifest["model_code"]) == 16
    assert api.evaluate(str(root))["accuracy"] > 0.8  # it learns: the options reached the model


def test_the_python_api_takes_a_model_class(tmp_path, monkeypatch, tiny_cfg, tiny_ds):
    user_module(tmp_path, monkeypatch, module="usernet_api")
    import usernet_api

    api.train(str(tmp_path / "r"), tiny_cfg, dataset=tiny_ds, model=usernet_api.TinyNet, progress=False)
    assert Workdir.open(tmp_path / "r").config.model.name == "usernet_api:TinyNet"

    class Local(usernet_api.TinyNet):
        pass

    with pytest.raises(SisaError, match="top level of an importable module"):
        api.train(str(tmp_path / "s"), tiny_cfg, dataset=tiny_ds, model=Local, progress=False)
    assert not (tmp_path / "s").exists()


def test_changed_model_code_is_refused_and_changes_nothing(tmp_path, monkeypatch, tiny_cfg, tiny_ds):
    name = user_module(tmp_path, monkeypatch, module="usernet_changed")
    cfg = tiny_cfg.replace(model={"name": name})
    root = tmp_path / "r"
    api.train(str(root), cfg, dataset=tiny_ds, progress=False)
    (tmp_path / "usernet_changed.py").write_text(USER_MODEL.format(name="TinyNet").replace("tanh", "relu"))
    before = file_digests(root)
    for call in (lambda: api.forget(str(root), [int(tiny_ds.ids[0])], progress=False),
                 lambda: api.predict(str(root), tiny_ds.x_test[:2])):
        with pytest.raises(SisaError, match="source of model .* changed"):
            call()
    assert file_digests(root) == before


@pytest.mark.parametrize("body, match", [
    (USER_MODEL.replace("return self.b(h)", "return self.b(h)[:, :1]"), r"returns \(2, 1\).*needs logits of shape \(2, 3\)"),
    (USER_MODEL.replace("nnx.Module", "object"), "not a Flax NNX module"),
    (USER_MODEL.replace("width=8", "width=None"), "could not be built"),
])
def test_a_model_that_breaks_the_contract_is_refused(tmp_path, monkeypatch, tiny_cfg, tiny_ds, body, match):
    module = f"usernet_bad_{abs(hash(match)) % 10**6}"
    name = user_module(tmp_path, monkeypatch, module=module, body=body)
    with pytest.raises(SisaError, match=match):
        api.train(str(tmp_path / "r"), tiny_cfg.replace(model={"name": name}), dataset=tiny_ds, progress=False)
    assert not (tmp_path / "r").exists()


def test_unknown_model_module_is_refused(tmp_path, tiny_cfg, tiny_ds):
    with pytest.raises(SisaError, match="cannot import the module of model"):
        api.train(str(tmp_path / "r"), tiny_cfg.replace(model={"name": "no_such_pkg.mod:Net"}), dataset=tiny_ds,
                       progress=False)
    assert not (tmp_path / "r").exists()


def test_the_text_classifier_forgets_exactly_and_names_labels(tmp_path):
    cfg = text_cfg("transformer", corpus(tmp_path / "reviews.csv"))
    ds = datasets.load(cfg.data.dataset, data=cfg.data)
    assert ds.task == "classify" and ds.label_names == ("neg", "pos") and ds.x.dtype == np.int32
    root = assert_exact(tmp_path, cfg, ds, draws=2)
    out = api.predict(str(root), ["good great superb film", "awful dire grim plot"])
    assert out["label_names"] == [["neg", "pos"][k] for k in out["labels"]]
    assert np.allclose(np.sum(out["probabilities"], axis=1), 1, atol=1e-5)


def test_the_language_model_forgets_exactly(tmp_path):
    cfg = text_cfg("transformer_lm", corpus(tmp_path / "docs.txt", labels=False))
    ds = datasets.load(cfg.data.dataset, data=cfg.data)
    assert ds.task == "lm" and ds.x.shape[1] == 17 and ds.num_classes == ds.vocab_size == 259
    root = assert_exact(tmp_path, cfg, ds)
    ev = api.evaluate(str(root))
    assert ev["perplexity"] == pytest.approx(np.exp(ev["loss"])) and 1 < ev["perplexity"] < 259


def test_language_model_scores_are_the_mixture_of_constituents(tmp_path):
    """predict's score of a continuation = the sum over its tokens of the log of the mean of the
    constituents' probabilities of that token; recomputed here from each shard's parameters."""
    import jax

    from sisa import serve

    cfg = text_cfg("transformer_lm", corpus(tmp_path / "docs.txt", labels=False))
    root = tmp_path / "r"
    api.train(str(root), cfg, progress=False)
    out = api.predict(str(root), [{"text": "the film", "continuation": " good"}, "the plot"])
    assert out["tokens"] == [len(" good"), len("the plot")]
    wd = Workdir.open(root)
    members = serve.constituents(wd)
    ids = [1, *[b + 3 for b in b"the film good"]]
    row = np.zeros((1, 16), np.int32)
    row[0, : len(ids)] = ids
    logp = [np.asarray(jax.nn.log_softmax(wd.trainer.logits(jax.tree.map(lambda a, i=i: a[i], members.params), row),
                                          axis=-1), np.float64)[0] for i in range(len(members.shards))]
    first = 1 + len("the film")  # the continuation's first position in the row
    expected = sum(np.log(np.mean([np.exp(lp[t - 1, ids[t]]) for lp in logp])) for t in range(first, len(ids)))
    assert out["scores"][0] == pytest.approx(expected, rel=1e-6)
    assert len(out["next"][1]) == 5 and all(0 <= n["probability"] <= 1 for n in out["next"][1])
    with pytest.raises(SisaError, match="mean of their next-token distributions"):
        api.predict(str(root), ["x"], "vote")


def base_run(tmp_path, model="transformer_lm", hidden=(16,), seed=1):
    """A base model: one shard, one slice, trained on other (public) documents."""
    cfg = text_cfg(model, corpus(tmp_path / f"public-{seed}.txt", n=80, seed=seed, labels=False)).replace(
        partition={"shards": 1, "slices": 1}, model={"hidden": hidden})
    root = tmp_path / f"base-{seed}"
    api.train(str(root), cfg, progress=False)
    return root


def test_adapters_on_a_frozen_base_forget_exactly_and_hold_only_adapters(tmp_path):
    base = base_run(tmp_path)
    cfg = text_cfg("transformer_lm", corpus(tmp_path / "private.txt", labels=False)).replace(
        model={"base": str(base)}, train={"adapter": "lora", "lora_rank": 4})
    ds = datasets.load(cfg.data.dataset, data=cfg.data)
    root = assert_exact(tmp_path, cfg, ds, draws=2)
    wd = Workdir.open(root)
    state = wd.checkpoints[0].restore(1)[0]
    import jax

    paths = [tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(state["params"])]
    assert paths and all(p[-1] in ("a", "b") and p[-2] == "kernel" for p in paths)
    full = sum(a.size for a in jax.tree.leaves(Workdir.open(base).checkpoints[0].restore(0)[0]["params"]))
    assert sum(a.size for a in jax.tree.leaves(state["params"])) < full / 3
    assert wd.manifest["base"]["digest"] and json.loads((root / "sisa.json").read_text())["base"]["path"] == str(base)
    cert = api.verify(str(root), [1], progress=False)
    assert cert["verdict"] == "verified" and cert["model"]["base"] == wd.manifest["base"]


def test_a_changed_or_mismatched_base_is_refused(tmp_path):
    base = base_run(tmp_path)
    data = corpus(tmp_path / "private.txt", labels=False)
    lora = {"adapter": "lora", "lora_rank": 4}
    wrong = text_cfg("transformer_lm", data).replace(model={"base": str(base), "hidden": (24,)}, train=lora)
    with pytest.raises(SisaError, match="does not match the model"):
        api.train(str(tmp_path / "w"), wrong, progress=False)
    assert not (tmp_path / "w").exists()
    cfg = text_cfg("transformer_lm", data).replace(model={"base": str(base)}, train=lora)
    root = tmp_path / "r"
    api.train(str(root), cfg, progress=False)
    shutil.rmtree(base)
    shutil.copytree(base_run(tmp_path, seed=2), base)  # another base at the same path
    before = file_digests(root)
    with pytest.raises(SisaError, match="changed since this run was trained"):
        api.forget(str(root), [0], progress=False)
    assert file_digests(root) == before


@pytest.mark.parametrize("content, match", [
    (b"one\n\nthree\n", "empty"),
    (b"fine\nbad \xff byte\n", "line 2.*UTF-8"),
])
def test_bad_text_files_are_refused_before_anything_is_written(tmp_path, content, match):
    path = tmp_path / "docs.txt"
    path.write_bytes(content)
    with pytest.raises(SisaError, match=match):
        api.train(str(tmp_path / "r"), text_cfg("transformer_lm", str(path)), progress=False)
    assert not (tmp_path / "r").exists()


def test_long_documents_are_truncated_to_the_context(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("x" * 500 + "\n" + "short one\n" * 9)
    cfg = text_cfg("transformer_lm", str(path))
    ds = datasets.load(str(path), data=cfg.data)
    assert ds.x.shape[1] == 17 and (ds.x[0] == [1] + [ord("x") + 3] * 16).all()


def test_a_changed_tokenizer_file_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    docs = corpus(tmp_path / "docs.txt", labels=False)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([docs], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok_path = tmp_path / "tok.json"
    tok.save(str(tok_path))
    cfg = text_cfg("transformer_lm", docs, tokenizer=str(tok_path))
    root = tmp_path / "r"
    api.train(str(root), cfg, progress=False)
    assert Workdir.open(root).manifest["dataset"]["tokenizer"]["kind"] == "file"
    assert api.predict(str(root), ["the film"])["tokens"] == [2]
    tok.add_tokens(["extra"])
    tok.save(str(tok_path))
    with pytest.raises(SisaError, match="tokenizer"):
        api.predict(str(root), ["the film"])


def test_numeric_models_refuse_text_and_text_models_refuse_numbers(tmp_path, tiny_cfg, tiny_ds):
    with pytest.raises(SisaError, match="takes numeric features"):
        api.train(str(tmp_path / "a"), text_cfg("mlp", corpus(tmp_path / "d.txt", labels=False)), progress=False)
    with pytest.raises(SisaError, match="reads text"):
        api.train(str(tmp_path / "b"), tiny_cfg.replace(model={"name": "transformer"}), dataset=tiny_ds,
                       progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_string_labels_without_a_declared_set_are_audited(tmp_path):
    """A label name found in the data outlives its last example's forgetting: audit says so."""
    path = tmp_path / "r.csv"
    corpus(path)
    path.write_text(path.read_text() + "rare words here,rare\n")
    cfg = text_cfg("transformer", str(path)).replace(partition={"shards": 2, "slices": 1})
    ds = datasets.load(str(path), data=cfg.data)
    assert ds.label_names == ("neg", "pos", "rare") and (ds.y == 2).sum() == 1  # row 120: in the training split
    rare = int(ds.ids[ds.y == 2][0])
    root = tmp_path / "run"
    api.train(str(root), cfg, dataset=ds, progress=False)
    api.forget(str(root), [rare], progress=False)
    assert any("'rare'" in f for f in api.audit(str(root))["findings"])


def test_blobs_still_train_as_before(tmp_path, tiny_cfg):
    """The classic path is untouched by the framework: its config digest and bits are unchanged."""
    assert Config().digest() == "2990adf32fa2eb55"
    api.train(str(tmp_path / "r"), tiny_cfg, dataset=blobs(), progress=False)
    assert "vocab_size" not in Workdir.open(tmp_path / "r").manifest["dataset"]



def sisa_cli(*argv, cwd=None):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "sisa.cli", *argv], check=False, capture_output=True, text=True,
                         cwd=cwd, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=600)
    return out.returncode, out.stdout, out.stderr


def test_the_cli_trains_predicts_and_evaluates_text(tmp_path):
    docs = corpus(tmp_path / "docs.txt", labels=False)
    cfg_path = tmp_path / "lm.toml"
    from sisa.config import dumps

    cfg_path.write_text(dumps(text_cfg("transformer_lm", docs)))
    run = str(tmp_path / "run")
    code, _, err = sisa_cli("train", "--workdir", run, "--config", str(cfg_path), "--json")
    assert code == 0, err
    (tmp_path / "p.txt").write_text("the film\nthe plot was\n")
    (tmp_path / "p.jsonl").write_text('{"text": "the film", "continuation": " good"}\n')
    code, out, err = sisa_cli("predict", "--workdir", run, "--input", str(tmp_path / "p.txt"), "--json")
    assert code == 0, err
    assert json.loads(out)["tokens"] == [8, 12]
    code, out, err = sisa_cli("predict", "--workdir", run, "--input", str(tmp_path / "p.jsonl"), "--json")
    assert code == 0 and json.loads(out)["tokens"] == [5], err
    code, out, err = sisa_cli("evaluate", "--workdir", run, "--json")
    ev = json.loads(out)
    assert code == 0 and ev["perplexity"] == pytest.approx(np.exp(ev["loss"])), err
    code, out, err = sisa_cli("predict", "--workdir", run, "--input", str(tmp_path / "p.txt"))
    assert code == 0 and out.count("log-likelihood") == 2 and "next:" in out, err
    code, out, err = sisa_cli("evaluate", "--workdir", run)
    assert code == 0 and "test perplexity" in out and "nats/token" in out, err
    (tmp_path / "bad.jsonl").write_text('{"txt": "no text field"}\n')
    code, out, err = sisa_cli("predict", "--workdir", run, "--input", str(tmp_path / "bad.jsonl"), "--json")
    assert code != 0 and json.loads(out)["kind"] == "bad_input" and "line 1" in err


def test_demo_text_proves_its_forget_bit_for_bit(tmp_path):
    code, out, err = sisa_cli("demo", "--text", "--workdir", str(tmp_path / "d"), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["bit_identical"] is True and r["perplexity_after"] == r["perplexity_retrained"]
    assert 1 < r["perplexity_after"] < 64


def test_adapters_on_an_orbax_checkpoint_base_of_an_mlp(tmp_path, tiny_cfg, tiny_ds):
    """A base given as an orbax checkpoint of the model's parameters (here an MLP's): adapters
    train on it and forget exactly."""
    import orbax.checkpoint as ocp

    base_run = tmp_path / "public"
    api.train(str(base_run), tiny_cfg.replace(partition={"shards": 1, "slices": 1}), dataset=blobs(seed=3),
              progress=False)
    params = Workdir.open(base_run).checkpoints[0].restore(0)[0]["params"]
    saver = ocp.StandardCheckpointer()
    saver.save(tmp_path / "base-ckpt", params)
    saver.wait_until_finished()
    cfg = tiny_cfg.replace(model={"base": str(tmp_path / "base-ckpt")}, train={"adapter": "lora", "lora_rank": 2})
    assert_exact(tmp_path, cfg, tiny_ds, draws=2)
