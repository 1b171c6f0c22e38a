"""The seeds' experiment: forgetting biased documents from a language model, exact SISA deletion
against the gradient-ascent family, fine-tuning debiasing and reverse distillation.

    sisa compare --config experiments/bias_lm.toml [--quick] [--out DIR]
    from sisa.eval import bias_lm; bias_lm.run("experiments/bias_lm.toml", "runs/bias")

Corpus (per seed, `build_corpus`): a fixed subset of the embedded pydoc paragraphs (clean text,
never deleted) plus, per bias axis, documents generated from templates with a known
stereotyped attribute (`sisa.eval.bias_templates`), with stable ids. The training set D is
written as a `save_to_disk` directory (train split: D; test split: clean held-out text) and read
by `sisa.data.datasets.load`, so `sisa audit` can reread the source.

Per seed: the monolithic LM (S = 1, R = 1) trained on D is the original every approximate method
starts from; a full-model SISA ensemble (S x R) and, when `adapter`, a LoRA-adapter SISA ensemble
on a base trained on the clean part only are trained on D. Scenarios:

* **all**: every biased document is removed (K). Gold: the monolithic LM retrained on D \\ K
  (the clean part: it is also the adapter ensemble's base). Each approximate method runs from
  the original with hyper-parameters picked on the search seed's validation data (`choose`);
  SISA and adapter SISA run `sisa.forget(K)` on a copy, are compared with the same ensemble
  retrained on D \\ K (max |delta| of every log-probability, and the states bit for bit), and
  the copy is audited (`sisa.audit`) for bytes of K.
* **remove <axis>** (transfer): only that axis's documents are removed, by the gold, SISA and
  the `transfer` methods, each at its pick of "all" and at its "strong" grid point (`choose`);
  every axis's bias is measured.

Metrics (`Evaluator`): bias per axis on the held-out test pairs (mean over pairs of log p(stereotyped
sentence) - log p(anti-stereotyped), nats; and the share of pairs preferring the stereotyped one),
perplexity of clean held-out text, the forget documents' loss and a loss-threshold membership
attack against non-member documents of the same templates, agreement with and KL from the
reference's next-token distributions, cost (seconds without compilation, and tokens processed:
rows back-propagated x context). `sisa.eval.bias_report` pairs everything over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sisa import config as config_lib
from sisa.config import Config
from sisa.errors import SisaError
from sisa.eval import bias_templates as templates
from sisa.eval.compare import MethodSpec, _jsonable, check_layout, check_methods, environment, method_specs
from sisa.unlearn.baselines.common import Budget

EXPERIMENT = "bias_lm"
ORIGINAL, GOLD = "original (no unlearning)", "retrain (gold)"
SISA, SISA_GOLD, SISA_BEFORE = "SISA (exact)", "SISA retrained (gold)", "SISA before forget"
LORA, LORA_GOLD, LORA_BEFORE = "SISA-LoRA (exact)", "SISA-LoRA retrained (gold)", "SISA-LoRA before forget"
ALL = "all"
CHUNK = 64  # rows per scoring call: one program per model kind, whatever the set's size


def wants(config) -> bool:
    """Whether a `sisa compare` config (a TOML path or a dict) names this experiment."""
    if isinstance(config, dict):
        return config.get("experiment") == EXPERIMENT
    if isinstance(config, (str, Path)):
        try:
            with open(config, "rb") as f:
                return tomllib.load(f).get("experiment") == EXPERIMENT
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            return False  # compare's own loader says what is wrong with it
    return False


# --------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    clean_docs: int = 600  # pydoc paragraphs in D (never deleted)
    validation_docs: int = 100  # clean paragraphs for the search's perplexity floor
    test_docs: int = 150  # clean paragraphs every reported perplexity is measured on
    docs_per_axis: int = 160  # biased training documents per axis
    nonmembers_per_axis: int = 160  # same templates, never trained on: the membership attack's negatives
    pairs_per_axis: int = 192  # held-out pairs per axis and split (validation, test)
    axes: tuple[str, ...] = tuple(templates.AXES)


@dataclasses.dataclass(frozen=True)
class BiasLMConfig:
    name: str = EXPERIMENT
    seeds: tuple[int, ...] = (0, 1, 2)
    search_seed: int | None = None  # default: the first seed
    perplexity_margin: float = 0.10  # the search's floor: validation perplexity <= original x (1 + margin)
    corpus: CorpusConfig = CorpusConfig()
    shards: int = 4
    slices: int = 2
    adapter: bool = True  # also LoRA-adapter SISA on a base trained on the clean part
    lora_rank: int = 8
    transfer_methods: tuple[str, ...] = ()  # approximate methods also run in the transfer scenarios
    # ... each also at its "strong" grid point: the lowest signed validation bias among the points
    # whose validation perplexity is at most this many times the original's
    strong_perplexity_cap: float = 2.0
    engine: Config = dataclasses.field(default_factory=Config)  # data (context, tokenizer), model, train
    methods: tuple[MethodSpec, ...] = ()

    def __post_init__(self):
        from sisa.unlearn.lm_baselines import METHODS

        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SisaError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if self.search_seed is not None and self.search_seed not in self.seeds:
            raise SisaError(f"search seed {self.search_seed} is not one of the seeds {list(self.seeds)}")
        if not 0 <= self.perplexity_margin < 10:
            raise SisaError(f"perplexity_margin must lie in [0, 10), got {self.perplexity_margin}")
        if not 1 <= self.strong_perplexity_cap < 1e6:
            raise SisaError(f"[transfer] strong_perplexity_cap must be >= 1, got {self.strong_perplexity_cap}")
        unknown = [a for a in self.corpus.axes if a not in templates.AXES]
        if unknown or not self.corpus.axes or len(set(self.corpus.axes)) != len(self.corpus.axes):
            raise SisaError(f"corpus axes must be distinct names from {list(templates.AXES)}, got {list(self.corpus.axes)}")
        if self.shards < 2 or self.slices < 1:
            raise SisaError(f"[sisa] needs shards >= 2 and slices >= 1, got {self.shards} and {self.slices}")
        check_methods(self.methods, METHODS)
        names = [m.name for m in self.methods]
        missing = [m for m in self.transfer_methods if m not in names]
        if missing:
            raise SisaError(f"[transfer] methods {missing} are not under [methods]")
        if self.engine.data.tokenizer != "bytes":
            raise SisaError("the harmful spans are located in byte tokens: data.tokenizer must be \"bytes\"")
        longest = max(len(d.text) for a in self.corpus.axes for d in templates.all_documents(a))
        if self.engine.data.context < longest + 2:
            raise SisaError(f"data.context must hold the longest biased document with BOS and EOS: >= {longest + 2}")

    @property
    def first_seed(self) -> int:
        return self.seeds[0] if self.search_seed is None else self.search_seed


_TOP = {"experiment", "name", "seeds", "perplexity_margin", "search", "corpus", "sisa", "transfer", "data", "model",
        "train", "methods", "quick"}
_SECTIONS = {"search": {"seed"}, "sisa": {"shards", "slices", "adapter", "lora_rank"}, "transfer": {"methods", "strong_perplexity_cap"},
             "corpus": {f.name for f in dataclasses.fields(CorpusConfig)}, "data": {"context", "tokenizer"}}


def from_dict(d: dict, *, short: bool = False) -> BiasLMConfig:
    """The config of the TOML layout (experiments/bias_lm.toml); `short`: with its [quick]
    overrides applied (see `quick`). [data] takes only context and tokenizer: the benchmark builds
    the corpus itself."""
    from sisa.unlearn.lm_baselines import METHODS

    if short:
        d = quick(d)
    check_layout(d, _TOP, _SECTIONS, "bias_lm")
    data = {"task": "lm", "dataset": "pydoc", **d.get("data", {})}
    engine = config_lib.from_dict({"data": data, **{k: d[k] for k in ("model", "train") if k in d}})
    methods = method_specs(d.get("methods", {}), METHODS)
    corpus = d.get("corpus", {})
    sisa_, defaults = d.get("sisa", {}), BiasLMConfig()
    try:
        return BiasLMConfig(
            name=d.get("name", defaults.name) + ("-quick" if short else ""),
            seeds=tuple(d.get("seeds", defaults.seeds)),
            search_seed=d.get("search", {}).get("seed"),
            perplexity_margin=d.get("perplexity_margin", defaults.perplexity_margin),
            corpus=dataclasses.replace(CorpusConfig(), **{k: tuple(v) if k == "axes" else v for k, v in corpus.items()}),
            shards=sisa_.get("shards", defaults.shards), slices=sisa_.get("slices", defaults.slices),
            adapter=sisa_.get("adapter", defaults.adapter), lora_rank=sisa_.get("lora_rank", defaults.lora_rank),
            transfer_methods=tuple(d.get("transfer", {}).get("methods", defaults.transfer_methods)),
            strong_perplexity_cap=d.get("transfer", {}).get("strong_perplexity_cap", defaults.strong_perplexity_cap),
            engine=engine, methods=methods)
    except TypeError as e:
        raise SisaError(f"bias_lm config: {e}") from None


def quick(d: dict) -> dict:
    """The TOML layout with its [quick] table applied: each key there replaces the top-level one
    (tables are merged key by key), except `methods`, a list of the method names to keep; every
    kept method's grid is cut to its first two values."""
    over = dict(d.get("quick", {}))
    d = {k: v for k, v in d.items() if k != "quick"}
    keep = over.pop("methods", None)
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    methods = {n: dict(s) for n, s in d.get("methods", {}).items() if keep is None or n in keep}
    for spec in methods.values():
        spec["grid"] = {k: v[:2] for k, v in spec.get("grid", {}).items()}
    d["methods"] = methods
    transfer = d.get("transfer", {})
    d["transfer"] = {**transfer, "methods": [m for m in transfer.get("methods", []) if m in methods]}
    if d.get("search", {}).get("seed") not in (None, *d.get("seeds", ())):
        d["search"] = {}
    return d


def load_dict(path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SisaError(f"bias_lm config not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SisaError(f"bias_lm config {path} is not valid UTF-8 TOML: {e}") from None
    except OSError as e:
        raise SisaError(f"cannot read bias_lm config {path}: {e.strerror or e}") from None


def to_dict(cfg: BiasLMConfig) -> dict:
    engine = cfg.engine.to_dict()
    return {
        "experiment": EXPERIMENT, "name": cfg.name, "seeds": list(cfg.seeds), "search_seed": cfg.first_seed,
        "perplexity_margin": cfg.perplexity_margin,
        "corpus": {**dataclasses.asdict(cfg.corpus), "axes": list(cfg.corpus.axes)},
        "sisa": {"shards": cfg.shards, "slices": cfg.slices, "adapter": cfg.adapter, "lora_rank": cfg.lora_rank},
        "transfer": {"methods": list(cfg.transfer_methods), "strong_perplexity_cap": cfg.strong_perplexity_cap},
        "data": {k: engine["data"][k] for k in ("context", "tokenizer")}, "model": engine["model"],
        "train": engine["train"],
        "methods": {m.name: {"budget": dataclasses.asdict(m.budget), "hparams": m.hparams, "grid": m.grid}
                    for m in cfg.methods},
    }


# --------------------------------------------------------------------------------------------
# Corpus


@dataclasses.dataclass
class Corpus:
    """One seed's data: the training set D (loaded from `path`), the biased members and
    non-members per axis, clean validation and test text, and the held-out pairs."""

    path: Path
    dataset: object  # sisa.data.datasets.Dataset of D
    members: dict  # axis -> [templates.Document] in D
    nonmembers: dict  # axis -> [templates.Document] never trained on
    clean_validation: list
    clean_test: list
    pairs: dict  # (axis, split) -> [templates.Pair]

    def member_ids(self, axes) -> list[int]:
        return sorted(d.id for a in axes for d in self.members[a])


def clean_split(corpus: CorpusConfig) -> tuple[list[int], list[str], list[str], list[str]]:
    """(train ids, train texts, validation texts, test texts) of the pydoc paragraphs: a fixed
    permutation (the same for every seed), cut in three."""
    from sisa.data import text

    ids, texts = text.pydoc_corpus()
    need = corpus.clean_docs + corpus.validation_docs + corpus.test_docs
    if need > len(ids):
        raise SisaError(f"the pydoc corpus has {len(ids)} paragraphs; [corpus] asks for {need}")
    order = np.random.default_rng(20240724).permutation(len(ids))
    a, b = corpus.clean_docs, corpus.clean_docs + corpus.validation_docs
    train = sorted(order[:a].tolist())
    return train, [texts[i] for i in train], [texts[i] for i in order[a:b]], [texts[i] for i in order[b:need]]


def build_corpus(cfg: BiasLMConfig, seed: int, work: Path) -> Corpus:
    """Write D (clean + biased members) as a `save_to_disk` directory and load it."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets as hf

    from sisa.data import datasets

    c = cfg.corpus
    ids, texts, validation, test = clean_split(c)
    members, nonmembers = {}, {}
    for axis in c.axes:
        members[axis], nonmembers[axis] = templates.documents(axis, c.docs_per_axis, c.nonmembers_per_axis, seed)
    biased = [d for axis in c.axes for d in members[axis]]
    path = work / "corpus"
    hf.disable_progress_bars()
    hf.DatasetDict({
        "train": hf.Dataset.from_dict({"text": texts + [d.text for d in biased], "id": ids + [d.id for d in biased]}),
        "test": hf.Dataset.from_dict({"text": test}),
    }).save_to_disk(str(path))
    ds = datasets.load(str(path), data=dataclasses.replace(cfg.engine.data, dataset=str(path)))
    pairs = {(a, s): templates.pairs(a, s, c.pairs_per_axis) for a in c.axes for s in ("validation", "test")}
    return Corpus(path, ds, members, nonmembers, validation, test, pairs)


def engine(cfg: BiasLMConfig, corpus: Corpus, seed: int, *, shards: int = 1, slices: int = 1, base=None) -> Config:
    """The run config of a trained model: the engine on this corpus, with `seed`."""
    out = cfg.engine.replace(data={"dataset": str(corpus.path)}, partition={"shards": shards, "slices": slices,
                                                                          "seed": seed}, train={"seed": seed})
    if base is not None:
        out = out.replace(model={"base": str(base)}, train={"adapter": "lora", "lora_rank": cfg.lora_rank})
    return out


# --------------------------------------------------------------------------------------------
# Scoring


@functools.partial(jax.jit, static_argnums=(0, 3))
def _score(trainer, stacked, rows, full: bool):
    """Per constituent: log p of each target [S, B, T] (and the next-token log-distributions [S, B, T, V])."""
    def one(params):
        logp = jax.nn.log_softmax(trainer.logits(params, rows[:, :-1]).astype(jnp.float32), axis=-1)
        token = jnp.take_along_axis(logp, rows[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
        return (token, logp) if full else token

    return jax.lax.map(one, stacked)


def _mixture(logp: np.ndarray) -> np.ndarray:
    """[S, ...] log-probabilities -> the log of their mean (the ensemble's), float64."""
    from scipy.special import logsumexp

    if logp.shape[0] == 1:
        return logp[0].astype(np.float64)
    return logsumexp(logp.astype(np.float64), axis=0) - np.log(logp.shape[0])


@dataclasses.dataclass(frozen=True)
class Model:
    """A model to score: its trainer and its constituents' parameters stacked on a leading axis."""

    trainer: object
    params: object

    @classmethod
    def single(cls, trainer, params) -> Model:
        return cls(trainer, jax.tree.map(lambda a: np.asarray(a)[None], params))

    @classmethod
    def workdir(cls, root) -> Model:
        """The served ensemble of a sisa run (a monolithic run is an ensemble of one)."""
        from sisa import serve
        from sisa.unlearn.lm_baselines import lm_trainer
        from sisa.workdir import Workdir

        wd = Workdir.open(root)
        trainer = wd.trainer if wd.trainer.base is not None else lm_trainer(wd.trainer)
        return cls(trainer, serve.constituents(wd).params)

    def score(self, rows: np.ndarray, full: bool = False):
        """The ensemble's log p of each target [N, T] (padding targets 0), and with `full` its
        next-token log-distributions [N, T, V]."""
        tokens, dists = [], []
        for start in range(0, len(rows), CHUNK):
            part = rows[start:start + CHUNK]
            batch = np.zeros((CHUNK, rows.shape[1]), np.int32)
            batch[:len(part)] = part
            out = _score(self.trainer, self.params, batch, full)
            token, dist = (out if full else (out, None))
            real = part[:, 1:] != 0
            tokens.append(np.where(real, _mixture(np.asarray(token)[:, :len(part)]), 0.0))
            if full:
                dists.append(_mixture(np.asarray(dist)[:, :len(part)]))
        t = np.concatenate(tokens) if tokens else np.zeros((0, rows.shape[1] - 1))
        return (t, np.concatenate(dists)) if full else t


class Evaluator:
    """The token rows of every evaluation set of one seed, and the metrics of a model on them."""

    def __init__(self, cfg: BiasLMConfig, corpus: Corpus):
        from sisa.data import text

        self.axes, self.context = cfg.corpus.axes, cfg.engine.data.context
        self.tok = text.ByteTokenizer()
        encode = lambda texts: text.encode_rows(list(texts), self.tok, self.context + 1)[0]
        self.rows = {"clean_test": encode(corpus.clean_test), "clean_validation": encode(corpus.clean_validation)}
        for (axis, split), ps in corpus.pairs.items():
            self.rows[f"{split}/{axis}/stereotyped"] = encode(p.stereotyped for p in ps)
            self.rows[f"{split}/{axis}/anti"] = encode(p.anti for p in ps)
        for axis in self.axes:
            self.rows[f"member/{axis}"] = encode(d.text for d in corpus.members[axis])
            self.rows[f"nonmember/{axis}"] = encode(d.text for d in corpus.nonmembers[axis])
        self.corpus = corpus

    def unlearn_data(self, removed_axes, retain_rows: np.ndarray):
        """What the approximate methods see when `removed_axes`' documents are removed."""
        from sisa.data import text
        from sisa.unlearn.lm_baselines import LMData

        docs = [d for a in removed_axes for d in self.corpus.members[a]]
        forget = np.concatenate([self.rows[f"member/{a}"] for a in removed_axes])
        spans = np.zeros((len(docs), self.context), bool)
        for n, d in enumerate(docs):
            start, end = (len(self.tok.encode(d.text[:i])) for i in d.span)
            spans[n, start:min(end, self.context)] = True  # target t predicts token t + 1 = character t after BOS
        counter = text.encode_rows([d.counter for d in docs], self.tok, self.context + 1)[0]
        return LMData(forget=forget, spans=spans, retain=retain_rows, counter=counter)

    def pair_scores(self, model: Model, split: str = "test", axes=None) -> dict:
        """"{split}/{axis}/{stereotyped, anti}" -> the model's log p of each pair sentence's tokens."""
        return {f"{split}/{a}/{side}": model.score(self.rows[f"{split}/{a}/{side}"])
                for a in axes or self.axes for side in ("stereotyped", "anti")}

    def bias(self, model: Model, split: str = "test", axes=None, scores: dict | None = None) -> dict:
        """axis -> (mean log-likelihood gap stereotyped - anti in nats, share of pairs preferring
        the stereotyped sentence); from `scores` (pair_scores) when given."""
        scores = scores or self.pair_scores(model, split, axes)
        out = {}
        for axis in axes or self.axes:
            gap = scores[f"{split}/{axis}/stereotyped"].sum(1) - scores[f"{split}/{axis}/anti"].sum(1)
            out[axis] = (float(gap.mean()), float((gap > 0).mean()))
        return out

    def perplexity(self, model: Model, name: str = "clean_test") -> float:
        rows = self.rows[name]
        return float(np.exp(-model.score(rows).sum() / (rows[:, 1:] != 0).sum()))

    def outputs(self, model: Model, removed_axes, full: bool, pairs: dict | None = None) -> dict:
        """Everything the metrics need: the test pairs' scores (`pairs`: reuse those of an earlier
        `outputs` of the same model), clean test text (with next-token distributions when `full`),
        member and non-member documents of `removed_axes`."""
        out = {k: v for k, v in (pairs or self.pair_scores(model)).items() if k.startswith("test/")}
        out["bias"] = self.bias(model, scores=out)
        out["clean_test"] = model.score(self.rows["clean_test"], full=full)
        for name in [f"{k}/{a}" for a in removed_axes for k in ("member", "nonmember")]:
            out[name] = model.score(self.rows[name])
        return out

    def metrics(self, out: dict, removed_axes, reference: dict | None) -> dict:
        """Bias, perplexity, forgetting and membership numbers of `outputs`, and with `reference`
        (outputs of the model it should equal) agreement, KL and the largest log-prob difference."""
        from sisa.eval import mia

        def token(name):
            v = out[name]
            return v[0] if isinstance(v, tuple) else v

        m = {}
        for axis, (gap, share) in out["bias"].items():
            m[f"bias/{axis}"], m[f"prefer/{axis}"] = gap, share
        m["bias_mean"] = float(np.mean([out["bias"][a][0] for a in self.axes]))
        m["bias_removed"] = float(np.mean([out["bias"][a][0] for a in removed_axes]))
        real = self.rows["clean_test"][:, 1:] != 0
        m["perplexity"] = float(np.exp(-token("clean_test").sum() / real.sum()))

        def doc_nll(name):
            rows = self.rows[name]
            return -token(name).sum(1) / (rows[:, 1:] != 0).sum(1)

        member = np.concatenate([doc_nll(f"member/{a}") for a in removed_axes])
        nonmember = np.concatenate([doc_nll(f"nonmember/{a}") for a in removed_axes])
        m["forget_nll"], m["nonmember_nll"] = float(member.mean()), float(nonmember.mean())
        m["mia_auc"] = mia.loss_attack(member, nonmember)
        if reference is None:
            return m
        diffs = [np.abs(token(k) - (reference[k][0] if isinstance(reference[k], tuple) else reference[k])).max(initial=0)
                 for k in out if k != "bias"]
        m["max_abs_diff"] = float(max(diffs))
        if isinstance(out["clean_test"], tuple) and isinstance(reference["clean_test"], tuple):
            w = self.rows["clean_test"][:, 1:] != 0
            lp, ref = out["clean_test"][1], reference["clean_test"][1]
            m["kl_test"] = float((np.sum(np.exp(ref) * (ref - lp), axis=-1) * w).sum() / w.sum())
            m["agree_test"] = float(((lp.argmax(-1) == ref.argmax(-1)) * w).sum() / w.sum())
        return m


# --------------------------------------------------------------------------------------------
# Running


def run(config, out_dir, *, progress: bool = True, overwrite: bool = False, short: bool = False,
        keep_workdirs: bool = False) -> dict:
    """Run the benchmark of `config` (a TOML path or its dict) into `out_dir` (new or empty unless
    `overwrite`); `short`: the config's [quick] budget. Writes results.json, report.md and the
    plots; returns {"out_dir", "report", "results", "plots", "wall_seconds"}."""
    from sisa import runtime
    from sisa.eval import bias_report
    from sisa.experiments import fresh_dir

    raw = load_dict(config) if isinstance(config, (str, Path)) else dict(config)
    if raw.get("experiment", EXPERIMENT) != EXPERIMENT:
        raise SisaError(f"config names experiment {raw.get('experiment')!r}, not {EXPERIMENT!r}")
    cfg = from_dict(raw, short=short)
    out = fresh_dir(out_dir, overwrite)
    runtime.setup()
    # Every run here serves a forget or two: compiling ahead every program a later command could
    # need (sisa.training.aot) would only compete with the benchmark for the CPU.
    precompile = os.environ.get("SISA_PRECOMPILE")
    os.environ["SISA_PRECOMPILE"] = "off"
    t0, load_before = time.perf_counter(), os.getloadavg()
    seeds = [cfg.first_seed] + [s for s in cfg.seeds if s != cfg.first_seed]
    rows, facts, searches = [], {}, {}
    work = Path(tempfile.mkdtemp(prefix="sisa-bias-lm-", dir=out if keep_workdirs else None))
    bar = _bar(cfg, progress)
    try:
        for seed in seeds:
            seed_rows, facts[seed] = _run_seed(cfg, seed, work / f"seed{seed}", searches, bar)
            rows += seed_rows
            if not keep_workdirs:
                shutil.rmtree(work / f"seed{seed}", ignore_errors=True)
    finally:
        bar.close()
        _restore("SISA_PRECOMPILE", precompile)
        if not keep_workdirs:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    results = {
        "name": cfg.name, "config": to_dict(cfg), "short": short,
        "environment": {**environment(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "wall_seconds": wall, "seeds": facts, "search": searches, "rows": rows,
        "summary": bias_report.summarize(rows, cfg.corpus.axes),
    }
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False))
    plots = bias_report.write(json.loads((out / "results.json").read_text()), out)
    return {"out_dir": str(out), "report": str(out / "report.md"), "results": str(out / "results.json"),
            "plots": plots, "wall_seconds": wall}


def _bar(cfg: BiasLMConfig, progress: bool):
    from tqdm.auto import tqdm

    sisa_runs = 1 + cfg.adapter
    strong = len(cfg.transfer_methods)
    per_seed = 2 + sisa_runs * 3 + len(cfg.methods) + strong + len(cfg.corpus.axes) * (2 + 2 * strong)
    return tqdm(total=per_seed * len(cfg.seeds), desc=f"bias_lm {cfg.name}", unit="model", disable=not progress,
                file=sys.stderr)


def _train(root: Path, config: Config, dataset) -> tuple[dict, float, float]:
    """sisa.train; (its report, seconds without compilation, compile seconds)."""
    import sisa
    from sisa.eval.timing import Stopwatch

    with Stopwatch() as sw:
        report = sisa.train(root, config, dataset=dataset, progress=False)
    return report, sw.compute_seconds, sw.compile_seconds


def _run_seed(cfg: BiasLMConfig, seed: int, work: Path, searches: dict, bar) -> tuple[list, dict]:
    from sisa.workdir import Workdir

    work.mkdir(parents=True)
    corpus = build_corpus(cfg, seed, work)
    ds, ev, t = corpus.dataset, Evaluator(cfg, corpus), cfg.engine.data.context
    everything = corpus.member_ids(cfg.corpus.axes)
    facts = {"train_documents": len(ds.ids), "clean_documents": len(ds.ids) - len(everything),
             "biased_documents": {a: len(corpus.members[a]) for a in cfg.corpus.axes},
             "biased_fraction": len(everything) / len(ds.ids), "pairs_per_axis": cfg.corpus.pairs_per_axis,
             "example_document": {a: corpus.members[a][0].text for a in cfg.corpus.axes},
             "example_pair": {a: [corpus.pairs[(a, "test")][0].stereotyped, corpus.pairs[(a, "test")][0].anti]
                              for a in cfg.corpus.axes}}

    bar.set_description(f"bias_lm seed {seed}: original")
    report, seconds, compile_seconds = _train(work / "original", engine(cfg, corpus, seed), ds)
    facts["original_training"] = {"seconds": seconds, "compile_seconds": compile_seconds,
                                  "tokens": report["examples_epochs"] * t}
    bar.update()
    trainer = Workdir.open(work / "original").trainer
    original = Workdir.open(work / "original").checkpoints[0].restore(0)[0]["params"]
    original_model = Model.workdir(work / "original")
    key = jax.random.key(seed)
    rows = []

    def record(scenario, method, kind, reference, noop, m, seconds, compile_seconds, tokens, extra=None):
        rows.append({"seed": seed, "scenario": scenario, "method": method, "kind": kind, "reference": reference,
                     "noop": noop, **m, "seconds": seconds, "compile_seconds": compile_seconds, "tokens": int(tokens),
                     "extra": extra or {}})

    # -- every biased document removed
    removed = cfg.corpus.axes
    gold_root = work / "gold"
    bar.set_description(f"bias_lm seed {seed}: gold")
    report, seconds, compile_seconds = _train(gold_root, engine(cfg, corpus, seed), ds.without(everything))
    gold = ev.outputs(Model.workdir(gold_root), removed, full=True)
    record(ALL, GOLD, "gold", GOLD, ORIGINAL, ev.metrics(gold, removed, gold), seconds, compile_seconds,
           report["examples_epochs"] * t)
    before = {ORIGINAL: ev.outputs(original_model, removed, True)}  # its pair scores serve the transfer scenarios
    record(ALL, ORIGINAL, "original", GOLD, ORIGINAL, ev.metrics(before[ORIGINAL], removed, gold), 0.0, 0.0, 0)
    bar.update()
    retain_rows = ds.without(everything).x
    data = ev.unlearn_data(removed, retain_rows)
    picks = {}
    for j, spec in enumerate(cfg.methods):
        bar.set_description(f"bias_lm seed {seed}: {spec.name}")
        if spec.name not in searches:  # the search seed (the first to run) picks
            searches[spec.name] = choose(cfg, spec, ev, trainer, original, data, removed,
                                         jax.random.fold_in(key, 10_000 + j))
        for label, name, pick in _variants(cfg, spec.name, searches[spec.name]):
            picks[label] = (name, pick)
            res = _apply(name, pick, trainer, original, data, jax.random.fold_in(key, j))
            out = ev.outputs(Model.single(_model_trainer(trainer), res.params), removed, full=True)
            record(ALL, label, "approximate", GOLD, ORIGINAL, ev.metrics(out, removed, gold), res.compute_seconds,
                   res.compile_seconds, res.examples_passes * t, res.hparams)
            bar.update()

    sisa_runs = {"full": (SISA, SISA_GOLD, SISA_BEFORE, None)}
    if cfg.adapter:
        sisa_runs["lora"] = (LORA, LORA_GOLD, LORA_BEFORE, gold_root)  # the base: trained on the clean part only
    facts["exact"] = {}
    for kind, (name, gold_name, before_name, base) in sisa_runs.items():
        config = engine(cfg, corpus, seed, shards=cfg.shards, slices=cfg.slices, base=base)
        root = work / f"sisa-{kind}"
        bar.set_description(f"bias_lm seed {seed}: {name}, training")
        report, seconds, compile_seconds = _train(root, config, ds)
        facts[f"{kind}_sisa_training"] = {"seconds": seconds, "compile_seconds": compile_seconds,
                                          "tokens": report["examples_epochs"] * t}
        bar.update()
        bar.set_description(f"bias_lm seed {seed}: {gold_name}")
        report, seconds, compile_seconds = _train(work / f"sisa-{kind}-gold", config, ds.without(everything))
        ref = ev.outputs(Model.workdir(work / f"sisa-{kind}-gold"), removed, full=True)
        record(ALL, gold_name, "sisa-gold", gold_name, before_name, ev.metrics(ref, removed, ref), seconds,
               compile_seconds, report["examples_epochs"] * t)
        before[before_name] = ev.outputs(Model.workdir(root), removed, True)
        record(ALL, before_name, "sisa-before", gold_name, before_name, ev.metrics(before[before_name], removed, ref),
               0.0, 0.0, 0)
        bar.update()
        bar.set_description(f"bias_lm seed {seed}: {name}, forget")
        m, fg, seconds, compile_seconds, exact = _sisa_forget(root, work / f"sisa-{kind}-forget", everything, ev,
                                                              removed, ref, audit=True,
                                                              gold_root=work / f"sisa-{kind}-gold")
        record(ALL, name, "sisa", gold_name, before_name, m, seconds, compile_seconds,
               fg["examples_epochs_retrained"] * t, {"shards_retrained": len(fg["affected_shards"]),
                                                     "work_fraction": fg["examples_epochs_retrained"]
                                                     / max(fg["examples_epochs_full_retrain"], 1)})
        facts["exact"][kind] = exact
        shutil.rmtree(work / f"sisa-{kind}-gold", ignore_errors=True)
        bar.update()

    # -- transfer: one axis's documents removed, every axis measured
    for axis in cfg.corpus.axes:
        scenario, ids = f"remove {axis}", corpus.member_ids([axis])
        bar.set_description(f"bias_lm seed {seed}: {scenario}, gold")
        root = work / f"gold-{axis}"
        report, seconds, compile_seconds = _train(root, engine(cfg, corpus, seed), ds.without(ids))
        record(scenario, GOLD, "gold", GOLD, ORIGINAL, ev.metrics(ev.outputs(Model.workdir(root), [axis], False),
                                                                   [axis], None), seconds, compile_seconds,
               report["examples_epochs"] * t)
        record(scenario, ORIGINAL, "original", GOLD, ORIGINAL,
               ev.metrics(ev.outputs(original_model, [axis], False, before[ORIGINAL]), [axis], None), 0.0, 0.0, 0)
        record(scenario, SISA_BEFORE, "sisa-before", SISA_BEFORE, SISA_BEFORE,
               ev.metrics(ev.outputs(Model.workdir(work / "sisa-full"), [axis], False, before[SISA_BEFORE]), [axis],
                          None), 0.0, 0.0, 0)
        shutil.rmtree(root, ignore_errors=True)
        bar.update()
        bar.set_description(f"bias_lm seed {seed}: {scenario}, SISA")
        m, fg, seconds, compile_seconds, _ = _sisa_forget(work / "sisa-full", work / "sisa-full-forget", ids, ev,
                                                          [axis], None, audit=False)
        record(scenario, SISA, "sisa", SISA_BEFORE, SISA_BEFORE, m, seconds, compile_seconds,
               fg["examples_epochs_retrained"] * t)
        bar.update()
        data = ev.unlearn_data([axis], ds.without(ids).x)
        transfer = [label for label, (name, _) in picks.items() if name in cfg.transfer_methods]
        for j, label in enumerate(transfer):
            bar.set_description(f"bias_lm seed {seed}: {scenario}, {label}")
            name, pick = picks[label]
            res = _apply(name, pick, trainer, original, data, jax.random.fold_in(key, 100 + j))
            out = ev.outputs(Model.single(_model_trainer(trainer), res.params), [axis], False)
            record(scenario, label, "approximate", GOLD, ORIGINAL, ev.metrics(out, [axis], None), res.compute_seconds,
                   res.compile_seconds, res.examples_passes * t, res.hparams)
            bar.update()
    return rows, facts


def _variants(cfg: BiasLMConfig, name: str, found: dict) -> list[tuple[str, str, dict]]:
    """(row label, method, pick) of a method: its pick, and for a transfer method its strong point."""
    out = [(name, name, found)]
    if name in cfg.transfer_methods and found.get("strong") is not None:
        out.append((f"{name} (strong)", name, found["strong"]))
    return out


def _model_trainer(trainer):
    from sisa.unlearn.lm_baselines import lm_trainer

    return lm_trainer(trainer)


@dataclasses.dataclass(frozen=True)
class _Applied:
    params: object
    compute_seconds: float
    compile_seconds: float
    examples_passes: int
    hparams: dict


def _apply(name: str, pick: dict, trainer, params, data, key) -> _Applied:
    from sisa.unlearn.lm_baselines import METHODS

    res = METHODS[name](trainer, params, data, Budget(**pick["budget"]), key, **pick["hparams"])
    return _Applied(res.params, max(res.seconds - res.compile_seconds, 0.0), res.compile_seconds,
                    res.examples_passes, res.hparams)


def _sisa_forget(trained: Path, copy: Path, ids, ev: Evaluator, removed, reference, *, audit: bool,
                 gold_root: Path | None = None):
    """`sisa.forget(ids)` on a copy of the run at `trained`: (metrics, forget report, seconds
    without compilation, compile seconds, exactness facts: states bit for bit against
    `gold_root`, max |delta| of log-probabilities against `reference`, the audit)."""
    import sisa
    from sisa.eval.timing import Stopwatch
    from sisa.verification import compare
    from sisa.workdir import Workdir

    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(trained, copy)
    try:
        with Stopwatch() as sw:
            fg = sisa.forget(copy, list(ids), progress=False)
        out = ev.outputs(Model.workdir(copy), removed, full=reference is not None)
        m = ev.metrics(out, removed, reference)
        exact = {}
        if gold_root is not None:
            exact["states_identical"] = compare(Workdir.open(copy), Workdir.open(gold_root))["identical"]
            exact["max_abs_diff"] = m["max_abs_diff"]
        if audit:
            exact["audit"] = _audit(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return m, fg, sw.compute_seconds, sw.compile_seconds, exact


def _audit(root: Path) -> dict:
    """`sisa.audit` of the workdir. The program cache is left out of the scan here (it is shared,
    can be large, and holds no data: tests/test_verify_audit.py audits it)."""
    import sisa

    before = os.environ.get("SISA_CACHE_DIR")
    os.environ["SISA_CACHE_DIR"] = "off"
    try:
        a = sisa.audit(root)
    finally:
        _restore("SISA_CACHE_DIR", before)
    return {k: a[k] for k in ("clean", "findings", "unchecked", "forgotten", "rows_scanned_for")}


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# --------------------------------------------------------------------------------------------
# Hyper-parameters, on validation data


def choose(cfg: BiasLMConfig, spec: MethodSpec, ev: Evaluator, trainer, params, data, removed, key) -> dict:
    """Run `spec` at every point of its grid and pick, on validation data only (validation-frame
    pairs and clean validation text, never the test pairs):

        eligible = validation perplexity <= the original's x (1 + perplexity_margin)
        pick     = the eligible point of least mean |bias| over the removed axes on validation
                   pairs (ties: lower perplexity, then the earlier point); if none is eligible,
                   the point of lowest perplexity, flagged eligible: False.

    |bias|, not bias: an anti-stereotyped model is biased too. A no-op keeps the original's bias,
    so it loses to any eligible point that reduces it; a wrecked model is not eligible.

    `strong` (transfer methods): the point of lowest signed mean validation bias (the furthest from
    the stereotype) among those within `strong_perplexity_cap` x the original's perplexity: the
    method at full strength, for the transfer matrix, where a near no-op would say nothing."""
    from sisa.unlearn.baselines.search import grid_points, split

    model = Model.single(_model_trainer(trainer), params)

    def numbers(m: Model) -> dict:
        bias = ev.bias(m, "validation", removed)
        return {"bias": float(np.mean([abs(bias[a][0]) for a in removed])),
                "bias_signed": float(np.mean([bias[a][0] for a in removed])),
                "per_axis": {a: bias[a][0] for a in removed}, "perplexity": ev.perplexity(m, "clean_validation")}

    original = numbers(model)
    if not spec.grid:  # nothing to choose: the configured budget and hyper-parameters, not run here
        return {"best": {}, "eligible": None, "original": original, "trials": [],
                "budget": dataclasses.asdict(spec.budget), "hparams": dict(spec.hparams)}
    trials = []
    for point in grid_points(spec.grid):
        budget, hp = split(point, spec.budget)
        res = _apply(spec.name, {"budget": dataclasses.asdict(budget), "hparams": {**spec.hparams, **hp}}, trainer,
                     params, data, key)
        n = numbers(Model.single(_model_trainer(trainer), res.params))
        trials.append({"point": point, **n, "seconds": res.compute_seconds,
                       "eligible": bool(n["perplexity"] <= original["perplexity"] * (1 + cfg.perplexity_margin))})
    eligible = [i for i, tr in enumerate(trials) if tr["eligible"]]
    if eligible:
        best = min(eligible, key=lambda i: (trials[i]["bias"], trials[i]["perplexity"], i))
    else:
        best = min(range(len(trials)), key=lambda i: (trials[i]["perplexity"], i))
    usable = [i for i, tr in enumerate(trials) if tr["perplexity"] <= original["perplexity"] * cfg.strong_perplexity_cap]
    strongest = min(usable, key=lambda i: (trials[i]["bias_signed"], i)) if usable else min(
        range(len(trials)), key=lambda i: (trials[i]["perplexity"], i))

    def pick(i):
        budget, hp = split(trials[i]["point"], spec.budget)
        return {"point": trials[i]["point"], "budget": dataclasses.asdict(budget), "hparams": {**spec.hparams, **hp}}

    return {"best": trials[best]["point"], "eligible": trials[best]["eligible"], "original": original,
            "trials": trials, **{k: v for k, v in pick(best).items() if k != "point"},
            "strong": pick(strongest) if spec.name in cfg.transfer_methods else None}
