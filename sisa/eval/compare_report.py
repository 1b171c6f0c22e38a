"""The comparison benchmark's outputs: paired statistics, verdicts, plots (PNG) and `report.md`.

Every number is paired over seeds: a method and its reference ran on the same seed (the same
validation split, forget set, initialisation and data order), so `sisa.eval.stats.paired` takes
the per-seed differences and gives their mean with a 95% t interval and a paired t-test.

A method's **reference** is the model it should equal: the monolithic model retrained on D \\ K
for the baselines, the same SISA ensemble retrained on D \\ K for SISA. Its **no-op** is what
doing nothing leaves: the original monolithic model, or the SISA ensemble before the forget.
The verdict "indistinguishable from retraining" needs all three of:

* utility floor: the paired difference in test accuracy on the classes still present (method -
  reference) has its 95% interval above -`utility_margin`;
* forgetting floor: the forget set's mean loss moved measurably away from the no-op's (paired
  t-test, p < 0.05) in the direction retraining moves it. If retraining itself does not move it
  measurably, the scenario cannot tell forgetting from doing nothing: the verdict is
  "inconclusive" for every method that passes the other two;
* equivalence on the forget set's mean loss and on every attack's AUC (loss threshold, LiRA
  offline, LiRA online): the 95% interval of the paired difference (method - reference) lies
  within ± 1.96 × the reference's own seed-to-seed standard deviation of that number (a two
  one-sided tests procedure whose margin is how much retraining itself varies from one forget
  set and seed to the next). The loss is there because an attack's AUC can match while the
  forget set moved only part of the way retraining moves it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sisa.eval import stats

PLOTS = ("attack_auc_vs_time.png", "test_accuracy_vs_time.png", "search_curves.png")
ATTACKS = ("mia_loss_auc", "mia_lira_offline_auc", "mia_lira_online_auc")
EQUIVALENCE = ("forget_loss", *ATTACKS)  # what must lie within the reference's spread
METRICS = ("acc_test", "acc_test_kept", "acc_retain", "acc_forget", "forget_loss", "agree_test", "kl_test",
           "agree_forget", "kl_forget", "max_abs_diff", *ATTACKS, "seconds", "compile_seconds", "wall_seconds",
           "examples_passes", "shards_retrained", "work_fraction")
PAIRED = ("acc_test", "acc_test_kept", "acc_forget", *EQUIVALENCE, "seconds")
SPREAD = 1.96  # equivalence margin, in reference standard deviations
ALPHA = 0.05  # forgetting floor: paired t-test level
RESULTS = {"indistinguishable": "indistinguishable from retraining", "inconclusive": "inconclusive",
           "not_shown": "not shown indistinguishable", "n/a": "n/a"}


def summarize(rows: list[dict], utility_margin: float) -> dict:
    """scenario -> method -> {"kind", "reference", "noop", "n", "metrics": {metric: mean_ci},
    "vs_reference": {metric: paired}, "vs_noop": {"forget_loss": paired}, "margins": {attack: m},
    "verdict": {"result", "why"}} (reference rows have no verdict)."""
    by: dict = {}
    for r in rows:
        by.setdefault(r["scenario"], {}).setdefault(r["method"], {})[r["seed"]] = r
    out: dict = {}
    for sc, methods in by.items():
        for method, per_seed in methods.items():
            first = next(iter(per_seed.values()))
            seeds = sorted(per_seed)
            entry = {"kind": first["kind"], "reference": first["reference"], "noop": first["noop"], "n": len(seeds),
                     "metrics": {k: stats.mean_ci([np.nan if per_seed[s].get(k) is None else per_seed[s][k]
                                                   for s in seeds])
                                 for k in METRICS if any(k in per_seed[s] for s in seeds)}}
            ref, noop = methods[first["reference"]], methods[first["noop"]]

            def column(rs, k):  # strict JSON keeps NaN as None
                return [np.nan if rs[s].get(k) is None else rs[s][k] for s in seeds]

            entry["vs_reference"] = {k: stats.paired(column(per_seed, k), column(ref, k)) for k in PAIRED}
            entry["vs_noop"] = {"forget_loss": stats.paired(column(per_seed, "forget_loss"), column(noop, "forget_loss"))}
            entry["reference_moves"] = stats.paired(column(ref, "forget_loss"), column(noop, "forget_loss"))
            entry["margins"] = {k: SPREAD * stats.mean_ci(column(ref, k))["std"] for k in EQUIVALENCE}
            if method != first["reference"]:
                entry["verdict"] = _verdict(entry, utility_margin)
            out.setdefault(sc, {})[method] = entry
    return out


def _verdict(e: dict, utility_margin: float) -> dict:
    if e["n"] < 2:
        return {"result": "n/a", "why": ["one seed: no interval"]}
    why = []
    acc = e["vs_reference"]["acc_test_kept"]
    if not acc["lo"] >= -utility_margin:
        why.append(f"utility: test accuracy (classes kept) {acc['mean']:+.3f} [{acc['lo']:+.3f}, {acc['hi']:+.3f}] vs "
                   f"reference, below the -{utility_margin:g} floor")
    for k in EQUIVALENCE:
        d, m = e["vs_reference"][k], e["margins"][k]
        if not (d["lo"] >= -m and d["hi"] <= m):
            why.append(f"{_NAMES[k]} {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] vs reference, "
                       f"not within ± {m:.3f}")
    moves, moved = e["reference_moves"], e["vs_noop"]["forget_loss"]
    measurable = moves["p"] < ALPHA
    if measurable and not (moved["p"] < ALPHA and np.sign(moved["mean"]) == np.sign(moves["mean"])):
        why.append(f"forgetting: forget-set loss {moved['mean']:+.3f} vs doing nothing (p = {moved['p']:.2g}), not "
                   f"measurably moved the way retraining moves it ({moves['mean']:+.3f})")
    if why:
        return {"result": "not_shown", "why": why}
    if not measurable:
        return {"result": "inconclusive", "why": [
            f"retraining itself does not move the forget-set loss measurably from doing nothing ({moves['mean']:+.3f}, "
            f"p = {moves['p']:.2g}): this scenario cannot tell forgetting from inaction"]}
    return {"result": "indistinguishable", "why": []}


_NAMES = {"forget_loss": "forget loss", "mia_loss_auc": "loss-threshold AUC",
          "mia_lira_offline_auc": "LiRA offline AUC", "mia_lira_online_auc": "LiRA online AUC"}


def verdicts(summary: dict) -> dict:
    """scenario -> method -> verdict result, for every method that has one."""
    return {sc: {m: e["verdict"]["result"] for m, e in methods.items() if "verdict" in e}
            for sc, methods in summary.items()}


# --------------------------------------------------------------------------------------------
# Plots


def _style(methods: dict) -> dict:
    import matplotlib.pyplot as plt

    others = iter([c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3] + ["navy", "teal", "olive"] * 9)
    reds = iter(["#d62728", "#8b0000", "#ff7f50", "#c71585"] * 9)
    style = {}
    for m, e in methods.items():
        style[m] = {"gold": ("*", "black"), "sisa-gold": ("*", "grey"), "sisa": ("s", None)}.get(e["kind"], ("o", None))
        if style[m][1] is None:
            style[m] = (style[m][0], next(reds) if e["kind"] == "sisa" else next(others))
    return style


def plot(results: dict, out: Path) -> list[str]:
    """Attack AUC and test accuracy vs time (95% intervals), and the search's forgetting-utility
    curves; one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    names = list(summary)
    specs = [(PLOTS[0], "mia_lira_online_auc", "LiRA (online) AUC, forget set vs same-class non-members"),
             (PLOTS[1], "acc_test", "test accuracy")]
    for filename, metric, ylabel in specs:
        fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names) + 2.6, 4.4), squeeze=False)
        for ax, sc in zip(axes[0], names):
            style = _style(summary[sc])
            for method, e in summary[sc].items():
                ci = e["metrics"].get(metric)
                if ci is None:
                    continue
                if e["kind"] in ("original", "sisa-original"):  # no time: a reference line, not a point
                    ax.axhline(ci["mean"], color="grey" if e["kind"] == "original" else "#d62728", lw=0.9, ls=":")
                    continue
                marker, color = style[method]
                t = e["metrics"]["seconds"]
                ax.errorbar(max(t["mean"], 1e-4), ci["mean"], xerr=_half(t), yerr=_half(ci), fmt=marker, color=color,
                            markersize=12 if marker == "*" else 7, capsize=2, alpha=0.9, label=method)
            ax.set_xscale("log")
            ax.set_title(sc)
            ax.set_xlabel("seconds (compilation excluded, log scale)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
        fig.text(0.01, 0.01, "dotted: doing nothing (grey: monolithic, red: SISA before forget); bars: 95% CI",
                 fontsize=7)
        fig.tight_layout(rect=(0, 0.03, 1 - 2.6 / (4.8 * len(names) + 2.6), 1))
        fig.savefig(out / filename, dpi=120)
        plt.close(fig)
    _plot_search(results["search"], out / PLOTS[2], plt)
    return list(PLOTS)


def _half(ci: dict) -> float:
    return 0.0 if stats.missing(ci["half"]) else ci["half"]


def _plot_search(search: dict, path: Path, plt) -> None:
    names = list(search)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.8 * max(len(names), 1) + 2.6, 4.4), squeeze=False)
    colors = iter(list(plt.get_cmap("tab10").colors) * 5)
    color = {}
    for ax, sc in zip(axes[0], names):
        for method, found in search[sc].items():
            trials = found["trials"]
            if not trials:
                continue
            c = color.setdefault(method, next(colors))
            pts = sorted((t["progress"], t["utility"], t["point"] == found["best"]) for t in trials
                         if t["progress"] is not None)
            if not pts:
                continue
            xs, ys, chosen = zip(*pts)
            ax.plot(xs, ys, "-o", color=c, markersize=4, lw=1, alpha=0.8, label=method)
            for x, y, ch in pts:
                if ch:
                    ax.plot(x, y, "o", markersize=11, mfc="none", mec=c, mew=2)
            if found.get("original"):
                ax.axhline(found["original"]["utility"], color="grey", lw=0.8, ls=":")
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.axvline(1, color="black", lw=0.8, ls="--")
        ax.set_title(f"{sc}: search on the validation split")
        ax.set_xlabel("forgetting progress (0 = no-op, 1 = looks unseen)")
        ax.set_ylabel("validation accuracy (classes kept)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.text(0.01, 0.01, "every grid point; circled: the pick; dotted line: the original model's utility", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1 - 2.6 / (4.8 * max(len(names), 1) + 2.6), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Markdown


def _ci(e: dict | None, digits: int = 3) -> str:
    return "–" if e is None else stats.fmt(e, digits)


def _delta(d: dict, digits: int = 3) -> str:
    if d["n"] == 0 or stats.missing(d["mean"]):
        return "–"
    if stats.missing(d["half"]):
        return f"{d['mean']:+.{digits}f}"
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def _p(d: dict) -> str:
    return "" if stats.missing(d["p"]) else f" ({d['p']:.2g})"


def tables(methods: dict) -> list[str]:
    """The scenario's three tables: utility and forgetting, attacks, cost."""
    def name(m, e):
        return f"**{m}**" if e["kind"] in ("gold", "sisa-gold", "sisa") else m

    util = ["| method | test acc | Δ test acc (kept classes) vs reference | forget acc | forget loss | "
            "Δ forget loss vs no-op (p) | agree w/ reference (test) | max abs Δ log p vs reference | verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    attack = ["| method | " + " | ".join(f"{_NAMES[k]} | Δ vs reference (margin)" for k in EQUIVALENCE) + " |",
              "|---|" + "---:|" * (2 * len(EQUIVALENCE))]
    cost = ["| method | time (s) | Δ time vs reference (s) | compile (s) | examples×passes | shards retrained |",
            "|---|---:|---:|---:|---:|---:|"]
    for m, e in methods.items():
        mm, ref, noop = e["metrics"], e["vs_reference"], e["vs_noop"]["forget_loss"]
        is_ref = m == e["reference"]
        verdict = RESULTS[e["verdict"]["result"]] if "verdict" in e else "(reference)"
        util.append(f"| {name(m, e)} | {_ci(mm.get('acc_test'))} | {'–' if is_ref else _delta(ref['acc_test_kept'])} | "
                    f"{_ci(mm.get('acc_forget'))} | {_ci(mm.get('forget_loss'))} | "
                    f"{'–' if m == e['noop'] else _delta(noop) + _p(noop)} | "
                    f"{_ci(mm.get('agree_test'))} | {mm['max_abs_diff']['mean']:.3g} | {verdict} |")
        attack.append(f"| {name(m, e)} | " + " | ".join(
            f"{_ci(mm.get(k))} | " + ("–" if is_ref else f"{_delta(ref[k])} (± {e['margins'][k]:.3f})")
            for k in EQUIVALENCE) + " |")
        if e["kind"] in ("original", "sisa-original"):
            continue
        cost.append(f"| {name(m, e)} | {_ci(mm.get('seconds'))} | {'–' if is_ref else _delta(ref['seconds'])} | "
                    f"{_ci(mm.get('compile_seconds'))} | {mm['examples_passes']['mean']:,.0f} | "
                    f"{_ci(mm['shards_retrained'], 1) if 'shards_retrained' in mm else '–'} |")
    return ["Utility and forgetting (mean ± 95% CI over seeds; Δ: paired mean [95% CI]):", "", *util, "",
            "Equivalence with the reference: the forget set's loss and the membership-inference attacks (forget "
            "set vs test examples of its classes); margin: 1.96 × the reference's seed-to-seed SD:", "", *attack, "", "Cost:", "", *cost]


def findings(sc: str, methods: dict) -> list[str]:
    """Plain sentences read off the scenario's numbers, SISA's losses included."""
    out = []
    gold = methods.get(next((m for m, e in methods.items() if e["kind"] == "gold"), ""), None)
    for m, e in methods.items():
        if e["kind"] != "sisa":
            continue
        mm = e["metrics"]
        out.append(f"- {m}: largest difference from its own retrain-from-scratch, over every output of every seed: "
                   f"**{mm['max_abs_diff']['mean']:.3g}** (log-probability); retrained "
                   f"{mm['shards_retrained']['mean']:.1f} shards on average, {mm['work_fraction']['mean']:.0%} of the "
                   f"example-epochs of training that ensemble from scratch.")
        if gold is not None:
            acc, t = e["metrics"]["acc_test"], e["metrics"]["seconds"]
            g_acc, g_t = gold["metrics"]["acc_test"], gold["metrics"]["seconds"]
            slower = "slower" if t["mean"] > g_t["mean"] else "faster"
            out.append(f"  Against the monolithic retrain a user could run instead: test accuracy {acc['mean']:.3f} vs "
                       f"{g_acc['mean']:.3f} ({acc['mean'] - g_acc['mean']:+.3f}), and its forget took "
                       f"{t['mean']:.2f} s vs {g_t['mean']:.2f} s for that retrain ({slower}).")
    res = verdicts({sc: methods})[sc]
    for kind in ("indistinguishable", "inconclusive", "not_shown"):
        ms = [m for m, r in res.items() if r == kind]
        if ms:
            out.append(f"- {RESULTS[kind]}: {', '.join(ms)}.")
    return out


def rerender(out) -> dict:
    """Recompute the summary of `out/results.json` from its per-seed rows, store it there, and
    write the plots and `report.md` beside it: {"summary", "plots"}. Also regenerates a report
    after a change to the statistics, without running anything again."""
    import json

    from sisa.eval.compare import _jsonable  # strict JSON: NaN as None

    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    results["summary"] = summarize(results["rows"], results["config"]["utility_margin"])
    results = _jsonable(results)  # as the file will say it: NaNs as None
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    plots = [str(out / p) for p in plot(results, out)]
    (out / "report.md").write_text(render(results))
    return {"summary": results["summary"], "plots": plots}


def render(results: dict) -> str:
    cfg, env, summary = results["config"], results["environment"], results["summary"]
    seeds = cfg["seeds"]
    first = next(iter(results["seeds"].values()))
    margin = cfg["utility_margin"]
    lines = [
        f"# Exact vs approximate unlearning: {results['name']}",
        "",
        f"Generated by `sisa compare` (`sisa.eval.compare.run`) on {env['date']}; total wall time "
        f"**{results['wall_seconds']:.0f} s** on {env['cpu_count']} CPU core(s) (JAX backend `{env['jax_backend']}`, "
        f"jax {env['versions'].get('jax')}). 1-minute load average {env['load_average_before'][0]:.1f} before and "
        f"{env['load_average_after'][0]:.1f} after (other processes slow the timings down). Every number below is "
        "computed from `results.json` next to this file (per seed in `rows`); nothing was edited by hand.",
        "",
        "## Setup",
        "",
        f"- Data: `{results['dataset']['name']}`, {results['dataset']['train']} training / "
        f"{results['dataset']['test']} test examples, {results['dataset']['num_classes']} classes. Per seed, "
        f"{first['validation_examples']} training examples ({cfg['validation_fraction']:.0%}) are a validation split "
        f"no model trains on; every target model trains on the other {first['train_examples']} (D).",
        f"- Model: `{cfg['model']['name']}` hidden {cfg['model'].get('hidden')}, {cfg['train']['optimizer']} "
        f"lr {cfg['train']['learning_rate']}, batch {cfg['train']['batch_size']}, {cfg['train']['epochs']} epochs.",
        f"- Seeds {seeds} ({len(seeds)}): the validation split, the forget sets, initialisation, data order and "
        "every unlearning key follow the seed. Every comparison is paired over these seeds.",
        "- Forget scenarios (first seed): " + "; ".join(f"**{k}**: {v}" for k, v in first["scenarios"].items())
        + ". The class forgotten is `seed % classes`.",
        f"- SISA: S ∈ {cfg['sisa']['shards']}, R = {cfg['sisa']['slices']} slices, the same model and training "
        "config, trained once per seed on D; each scenario runs `sisa.forget(ids)` (one request) on a copy, and the "
        "same ensemble is retrained from scratch on D \\ K as SISA's reference.",
        f"- LiRA: {cfg['shadows']} shadow models per target architecture (the monolithic model, each SISA S), "
        "each trained by `sisa.train` on a random half of the training and test splits together (every example in "
        "exactly half of them).",
        "",
        "## Verdicts",
        "",
        f"A method is **indistinguishable from retraining** when (1) its test accuracy on the classes still present "
        f"is no more than {margin:g} below its reference's (the 95% CI of the paired difference lies above "
        f"−{margin:g}); (2) it moves the forget set's loss away from doing nothing, in retraining's direction (paired "
        f"t-test, p < {ALPHA}); and (3) for each of the three attacks, the 95% CI of the paired AUC difference from "
        f"its reference lies within ± {SPREAD} × the reference's own seed-to-seed SD of that AUC, and so does the "
        "forget set's mean loss (an AUC can match while the loss moved only part of the way). When retraining "
        "itself does not move the forget-set loss measurably, (2) cannot be met by anything and a method passing "
        "(1) and (3) is **inconclusive**: the scenario cannot separate forgetting from inaction. Any other method is "
        "**not shown indistinguishable**: an interval that straddles a margin means the seeds could not show "
        "equivalence, not that a difference was shown; the intervals in the tables say which.",
        "",
        "| scenario | method | verdict | why |",
        "|---|---|---|---|",
    ]
    for sc, methods in summary.items():
        for m, e in methods.items():
            if "verdict" in e:
                lines.append(f"| {sc} | {m} | {RESULTS[e['verdict']['result']]} | {'; '.join(e['verdict']['why']) or '–'} |")
    lines.append("")
    for sc, methods in summary.items():
        lines += [f"## Scenario: {sc}", "", *tables(methods), "", *findings(sc, methods), ""]
    lines += [
        "## Plots",
        "",
        f"![attack AUC vs time]({PLOTS[0]})",
        "",
        f"![test accuracy vs time]({PLOTS[1]})",
        "",
        f"![search curves]({PLOTS[2]})",
        "",
        "## Definitions",
        "",
        "- **retrain (gold)**: the engine (`sisa.train`, 1 shard, 1 slice, same config and seed) trained from "
        "scratch on D \\ K: the reference of every baseline and of `original`.",
        "- **SISA S=… retrained (gold)**: the same S-shard ensemble trained from scratch on D \\ K: SISA's "
        "reference. `max abs Δ log p` between `SISA S=… (exact)` and it is measured on every test and forget "
        "output of every seed; exactness says 0, and that is what the table shows, not an assumption. Comparing "
        "SISA with the *monolithic* gold would mix the model class (each constituent sees 1/S of the data) with "
        "forgetting; the findings give that comparison separately, in accuracy and time.",
        "- **original / SISA S=… before forget**: doing nothing; the no-op each method's forgetting is measured "
        "against.",
        "- **test acc (kept classes)**: top-1 accuracy on test examples of the classes D \\ K still has (all "
        "classes in the random scenarios); the utility of the verdict. `test acc` is on the whole test split.",
        "- **forget loss**: mean cross-entropy on K. Members of the training set have a lower loss than unseen "
        "data, so forgetting raises it; the verdict's forgetting floor is a paired t-test on it.",
        "- **Attacks** (ROC AUC, `sklearn.metrics.roc_auc_score`; positives K, negatives the test examples of K's "
        "classes, so that a forgotten class is compared with unseen examples of the same class): the "
        "**loss-threshold** attack (score −loss; Yeom et al. 2018) and **LiRA** (Carlini et al. 2022) on the "
        "logit-scaled confidence φ = log p(y|x) − log(1 − p(y|x)) with shadow models of the target's own "
        "architecture (see Setup): **offline** z = (φ − μ_out)/σ_out, **online** the likelihood ratio of "
        "N(μ_in, σ_in) against N(μ_out, σ_out); μ per example, σ pooled over examples (fixed variance).",
        "- **time (s)**: wall-clock seconds of the unlearning call minus JAX's compilation time "
        "(`compile_seconds`). Baselines: the whole call. Gold: `sisa.train` of a fresh workdir. SISA: the whole "
        "`sisa.forget` call (ledger fsync, data-store rewrite, checkpoint restores and saves, retraining). "
        "Hyper-parameter search time is not included (the golds and SISA need no search).",
        "- **examples×passes**: examples whose loss was back-propagated, counted once per pass.",
        "",
        "## Hyper-parameters",
        "",
        f"Chosen once per scenario on seed {results['resolved']['search_seed']}'s validation split by "
        "`sisa.unlearn.baselines.search` and reused for every seed; neither the test split nor any retrained "
        "model is used. Objective: among grid points whose validation accuracy (classes kept) is at most "
        f"{margin:g} below the original model's (eligible), the one of highest **forgetting progress**: for "
        "random forget sets 1 − |gap| / |gap of the original|, gap = mean loss on K − mean loss on validation "
        "examples of K's classes (0 = K looks unseen; doing nothing scores 0, overshooting scores less than 1); "
        "for a forgotten class 1 − accuracy on that class's validation examples / the original's. If no point is "
        "eligible, the one of highest utility, marked *not eligible*. `search_curves.png` shows every grid point.",
        "",
        "| scenario | method | chosen grid point | eligible | progress | validation acc (original) | "
        "budget: epochs / steps, batch, lr, optimizer | hyper-parameters used |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for sc, methods in results["search"].items():
        for m, s in methods.items():
            b = s["budget"]
            steps = "–" if b["steps"] is None else b["steps"]
            chosen = next((t for t in s["trials"] if t["point"] == s["best"]), None)
            prog = "–" if chosen is None or chosen["progress"] is None else f"{chosen['progress']:.2f}"
            util = "–" if chosen is None else f"{chosen['utility']:.3f} ({s['original']['utility']:.3f})"
            eligible = "–" if s["eligible"] is None else ("yes" if s["eligible"] else "**not eligible**")
            lines.append(f"| {sc} | {m} | {_short(s['best']) or '(no grid)'} | {eligible} | {prog} | {util} | "
                         f"{b['epochs']:g} / {steps}, {b['batch_size']}, {b['learning_rate']:g}, {b['optimizer']} | "
                         f"{_short(s['hparams']) or '–'} |")
    lines += ["", "## Exact config", "", "```toml", results["config_toml"].rstrip(), "```", ""]
    return "\n".join(lines)


def _short(d: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
