"""The comparison benchmark's outputs: aggregated summary, plots (PNG) and `report.md`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

PLOTS = ("forget_quality_vs_time.png", "test_accuracy_vs_time.png")
METRICS = ("acc_test", "acc_retain", "acc_forget", "agree_test", "kl_test", "agree_forget", "kl_forget",
           "mia_loss_auc", "mia_loss_gap", "mia_lira_auc", "mia_lira_gap",
           "seconds", "compile_seconds", "wall_seconds", "examples_passes", "shards_retrained", "work_fraction")


def summarize(rows: list[dict]) -> dict:
    """scenario -> method -> {"kind", metric: {"mean", "std", "n"}}; std over seeds with ddof=1 (0 for one seed)."""
    grouped: dict = {}
    for r in rows:
        grouped.setdefault(r["scenario"], {}).setdefault(r["method"], []).append(r)
    out: dict = {}
    for sc, methods in grouped.items():
        for method, rs in methods.items():
            entry = {"kind": rs[0]["kind"]}
            for k in METRICS:
                v = np.array([r[k] for r in rs if k in r], np.float64)
                if len(v) and not np.isnan(v).all():
                    entry[k] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
                                "n": int(len(v))}
            out.setdefault(sc, {})[method] = entry
    return out


def reaches_gold(summary: dict, tolerance: float) -> dict:
    """scenario -> methods (gold excluded) whose mean ΔMIA (loss attack) is at most `tolerance`,
    with their LiRA Δ, test accuracy, time, and time relative to each SISA row."""
    out = {}
    for sc, methods in summary.items():
        sisa = {m: e["seconds"]["mean"] for m, e in methods.items() if e["kind"] == "sisa"}
        hits = []
        for m, e in methods.items():
            if e["kind"] == "gold" or e["mia_loss_gap"]["mean"] > tolerance:
                continue
            t = e["seconds"]["mean"]
            hits.append({"method": m, "kind": e["kind"], "mia_loss_gap": e["mia_loss_gap"]["mean"],
                         "mia_lira_gap": e["mia_lira_gap"]["mean"], "acc_test": e["acc_test"]["mean"],
                         "seconds": t, "time_vs_sisa": {s: t / ts if ts > 0 else None for s, ts in sisa.items()}})
        out[sc] = hits
    return out


# --------------------------------------------------------------------------------------------
# Plots


def plot(summary: dict, out: Path) -> list[str]:
    """Forget quality (ΔMIA) vs time and test accuracy vs time, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [(PLOTS[0], "mia_loss_gap", "|MIA AUC − gold's|, loss attack (lower is better)"),
             (PLOTS[1], "acc_test", "test accuracy")]
    names = list(summary)
    methods = [m for m, e in next(iter(summary.values())).items() if e["kind"] != "original"]
    kinds = {m: next(iter(summary.values()))[m]["kind"] for m in methods}
    others = iter([c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3] + ["navy", "teal", "olive"] * 9)
    reds = iter(["#d62728", "#8b0000", "#ff7f50", "#c71585"] * 9)
    style = {m: ("*", "black") if kinds[m] == "gold" else ("s", next(reds)) if kinds[m] == "sisa" else ("o", next(others))
             for m in methods}
    for filename, metric, ylabel in specs:
        fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names) + 2.2, 4.4), squeeze=False)
        for ax, sc in zip(axes[0], names):
            for method, e in summary[sc].items():
                if e["kind"] == "original":  # no time: a reference line, not a point
                    ax.axhline(e[metric]["mean"], color="grey", lw=0.9, ls=":")
                    ax.annotate("original (no unlearning)", (0.99, e[metric]["mean"]),
                                xycoords=("axes fraction", "data"), ha="right", fontsize=7, color="grey",
                                xytext=(0, 3), textcoords="offset points")
                    continue
                marker, color = style.get(method, ("o", "tab:blue"))
                x, y = max(e["seconds"]["mean"], 1e-4), e[metric]["mean"]
                ax.errorbar(x, y, xerr=e["seconds"]["std"], yerr=e[metric]["std"], fmt=marker, color=color,
                            markersize=12 if marker == "*" else 7, capsize=2, alpha=0.9, label=method)
            ax.set_xscale("log")
            ax.set_title(sc)
            ax.set_xlabel("seconds (compilation excluded, log scale)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1 - 2.1 / (4.6 * len(names) + 2.2), 1))
        fig.savefig(out / filename, dpi=120)
        plt.close(fig)
    return list(PLOTS)


# --------------------------------------------------------------------------------------------
# Markdown

_COLUMNS = [("acc_test", "test acc", 3), ("acc_retain", "retain acc", 3), ("acc_forget", "forget acc", 3),
            ("agree_test", "agree w/ gold (test)", 3), ("kl_test", "KL(gold‖m) test", 3),
            ("mia_loss_auc", "MIA AUC (loss)", 3), ("mia_loss_gap", "ΔMIA loss", 3),
            ("mia_lira_auc", "MIA AUC (LiRA)", 3), ("mia_lira_gap", "ΔMIA LiRA", 3),
            ("seconds", "time (s)", 3), ("examples_passes", "examples×passes", 0)]


def _cell(e: dict | None, digits: int) -> str:
    if e is None or e["mean"] is None or math.isnan(e["mean"]):
        return "–"
    if digits == 0:
        return f"{e['mean']:,.0f} ± {e['std']:,.0f}"
    return f"{e['mean']:.{digits}f} ± {e['std']:.{digits}f}"


def table(methods: dict) -> str:
    lines = ["| method | " + " | ".join(c[1] for c in _COLUMNS) + " |",
             "|---|" + "|".join("---:" for _ in _COLUMNS) + "|"]
    for m, e in methods.items():
        name = f"**{m}**" if e["kind"] in ("gold", "sisa") else m
        lines.append(f"| {name} | " + " | ".join(_cell(e.get(k), d) for k, _, d in _COLUMNS) + " |")
    return "\n".join(lines)


def _findings(sc: str, methods: dict, hits: list, tolerance: float) -> list[str]:
    out = []
    for m, e in methods.items():
        if e["kind"] == "sisa":
            out.append(f"{m} retrained {e['shards_retrained']['mean']:.1f} shards on average, "
                       f"{e['work_fraction']['mean']:.0%} of the example-epochs of training that ensemble from scratch.")
    gold = next(e for e in methods.values() if e["kind"] == "gold")
    original = next((e for e in methods.values() if e["kind"] == "original"), None)
    if original is not None:
        out.append(f"Scale: doing nothing (the original model) gives ΔMIA loss {original['mia_loss_gap']['mean']:.3f} "
                   f"(LiRA {original['mia_lira_gap']['mean']:.3f}); the gold standard's own AUC varies by "
                   f"± {gold['mia_loss_auc']['std']:.3f} (loss) across seeds, i.e. across forget sets.")
    if not hits:
        out.append(f"No method other than the gold standard is within {tolerance} of its forget-set MIA AUC "
                   "(loss attack, mean over seeds).")
        return out
    parts = []
    for h in hits:
        ratio = ", ".join(f"{r:.2g}× {s.split(' (')[0]}" for s, r in h["time_vs_sisa"].items() if r is not None)
        parts.append(f"{h['method']} (ΔMIA loss {h['mia_loss_gap']:.3f}, LiRA {h['mia_lira_gap']:.3f}; test acc "
                     f"{h['acc_test']:.3f}; {h['seconds']:.3g} s" + (f" = {ratio} time" if ratio and h["kind"] != "sisa"
                                                                    else "") + ")")
    out.append(f"Within {tolerance} of the gold standard's forget-set MIA AUC (loss attack, mean over seeds): "
               + "; ".join(parts) + ".")
    return out


def write(results: dict, out: Path) -> list[str]:
    """Write the plots and `report.md` of `results` (as `compare.run` builds them, or read back from
    `results.json`) into `out`; returns the plot paths."""
    out = Path(out)
    plots = [str(out / p) for p in plot(results["summary"], out)]
    (out / "report.md").write_text(render(results))
    return plots


def render(results: dict) -> str:
    cfg, env, summary = results["config"], results["environment"], results["summary"]
    seeds = cfg["seeds"]
    first = next(iter(results["seeds"].values()))
    tol = cfg["mia_tolerance"]
    lines = [
        f"# Exact vs approximate unlearning: {results['name']}",
        "",
        f"Generated by `sisa.eval.compare.run` on {env['date']}; total wall time of the run "
        f"**{results['wall_seconds']:.0f} s** on {env['cpu_count']} CPU core(s) "
        f"(JAX backend `{env['jax_backend']}`, {env['processor']}, jax {env['versions'].get('jax')}). "
        f"1-minute load average {env['load_average_before'][0]:.1f} before and {env['load_average_after'][0]:.1f} "
        "after the run (other processes on the machine slow the timings down). "
        "Every number below comes from `results.json` next to this file (per seed in `rows`, aggregated "
        "in `summary`); nothing was edited by hand. Reproduce with `python experiments/run_compare.py "
        "--config CONFIG.toml --out DIR` on the config at the end (or `sisa.eval.compare.run`).",
        "",
        "## Setup",
        "",
        f"- Data: `{results['dataset']['name']}`, {results['dataset']['train']} training / "
        f"{results['dataset']['test']} test examples, {results['dataset']['num_classes']} classes. Per seed, "
        f"{first['validation_examples']} training examples ({cfg['validation_fraction']:.0%}) are held out as a "
        "validation split that no model trains on; every model trains on the other "
        f"{first['train_examples']} (D). The test split is used only for the numbers reported here.",
        f"- Model: `{cfg['model']['name']}` hidden {cfg['model'].get('hidden')}, {cfg['train']['optimizer']} "
        f"lr {cfg['train']['learning_rate']}, batch {cfg['train']['batch_size']}, {cfg['train']['epochs']} epochs "
        f"(schedule `{cfg['train']['schedule']}`).",
        f"- Seeds {seeds}: the validation split, the forget sets, initialisation, data order and every "
        "unlearning key follow the seed. Tables: mean ± standard deviation over the "
        f"{len(seeds)} seeds (ddof = 1).",
        f"- Forget scenarios (seed {results['resolved']['search_seed']}): " + "; ".join(
            f"**{k}**: {v}" for k, v in first["scenarios"].items()) + ". The class forgotten is `seed % classes`.",
        f"- SISA: S ∈ {cfg['sisa']['shards']}, R = {cfg['sisa']['slices']} slices, the same model and training "
        "config, trained once per seed on D; each scenario runs `sisa.forget(ids)` (one request) on a copy.",
        "",
    ]
    for sc, methods in summary.items():
        lines += [f"## Scenario: {sc}", "", table(methods), "",
                  *_findings(sc, methods, results["reaches_gold"].get(sc, []), tol), ""]
    lines += [
        "## Plots",
        "",
        f"![forget quality vs time]({PLOTS[0]})",
        "",
        f"![test accuracy vs time]({PLOTS[1]})",
        "",
        "Error bars: ± one standard deviation over seeds. The original model (no unlearning, no time) is the "
        "dotted line.",
        "",
        "## Definitions",
        "",
        "- **Gold standard** (`retrain (gold)`): the engine itself (`sisa.train` with 1 shard and 1 slice, the "
        "same config and seed) trained from scratch on D \\ K: the original model retrained with the same code "
        "without the forget set K. It is the reference of every Δ, agreement and KL column.",
        "- **Original**: the monolithic model trained on D; every baseline starts from it and sees only K and "
        "D \\ K.",
        "- **SISA S=…** rows are the aggregated ensembles (mean of the constituents' softmax) after exact "
        "deletion. SISA is exact with respect to its own retraining (the S-shard ensemble trained on D \\ K, "
        "bit for bit, as the engine's tests check), so its distance to the *monolithic* gold measures a "
        "different, weaker model (each constituent sees 1/S of the data), not leftover memory of K.",
        "- **test / retain / forget acc**: top-1 accuracy on the test split, on D \\ K and on K.",
        "- **agree w/ gold (test)**: fraction of test examples on which the model and the gold model predict the "
        "same label. **KL(gold‖m) test**: mean over test examples of KL(p_gold ‖ p_model), in nats. "
        "(`results.json` also has both on K: `agree_forget`, `kl_forget`.)",
        "- **MIA AUC (loss)**: ROC AUC (`sklearn.metrics.roc_auc_score`) of the loss-threshold attack, "
        "score = −cross-entropy of the true label; positives = K (members of the original training set), "
        "negatives = the whole test split (never trained on). 0.5 = K looks like unseen data; for a forgotten "
        "class the gold's AUC is far below 0.5 (an unseen class has a high loss). **ΔMIA** = |AUC(model) − "
        "AUC(gold)| per seed, then averaged over seeds: the forget-quality axis (0 = as the gold standard).",
        f"- **MIA AUC (LiRA)**: offline LiRA (Carlini et al. 2022) with the constituents of the SISA "
        f"S={results['resolved']['shadow_shards']} run (trained on known, disjoint shards of D, before any deletion) as "
        "shadow models: for each example, the logit-scaled confidence φ = log p(y|x) − log(1 − p(y|x)) under "
        "the shadows that did not train on it (S−1 for a training example, S for a test example) gives μ_out; "
        "σ_out is pooled over examples (fixed variance); score = (φ_model − μ_out) / σ_out. Same positives and "
        "negatives as the loss attack.",
        "- **time (s)**: wall-clock seconds of the unlearning call minus JAX's tracing/compilation time "
        "(from `jax.monitoring` compile events; `compile_seconds` and `wall_seconds` are in `results.json`). "
        "Baselines: the whole call, every step in one jitted program. Gold: `sisa.train` of a fresh workdir "
        "(writing its data store and checkpoint included). SISA: the whole `sisa.forget` call (ledger fsync, "
        "data-store rewrite, checkpoint restores and saves, retraining). Hyper-parameter search time is not "
        "included (the gold standard and SISA need no search).",
        "- **examples×passes**: examples whose loss was back-propagated, counted once per pass (the engine's "
        "`examples_epochs`). Teacher/reference forward passes (SCRUB, bad teacher, NPO) are not counted; "
        "Fisher counts one gradient per class per retain example; SalUn adds its saliency pass over K.",
        "",
        "## Hyper-parameters",
        "",
        f"Chosen once per scenario on seed {results['resolved']['search_seed']}'s validation split by "
        "`sisa.unlearn.baselines.search` and reused for every seed; neither the test split nor any retrained "
        "model is used. Score = accuracy on the validation examples of the classes D \\ K still has − "
        f"{cfg['search']['weight']} × |AUC(K vs validation examples of K's classes) − 0.5| (loss attack) − "
        "accuracy on validation examples of classes D \\ K no longer has (0 unless a class is forgotten). "
        "Budgets, fixed hyper-parameters and grids are in the config below (`fisher` takes no optimiser "
        "steps: only its batch size is used; `retrain` ignores budgets: it is the engine's own recipe).",
        "",
        "| scenario | method | chosen grid point | budget: epochs / steps, batch, lr, optimizer | hyper-parameters used |",
        "|---|---|---|---|---|",
    ]
    for sc, methods in results["search"].items():
        for m, s in methods.items():
            b = s["budget"]
            steps = "–" if b["steps"] is None else b["steps"]
            lines.append(f"| {sc} | {m} | {_short(s['best']) or '(no grid)'} | {b['epochs']:g} / {steps}, "
                         f"{b['batch_size']}, {b['learning_rate']:g}, {b['optimizer']} | {_short(s['hparams']) or '–'} |")
    lines += ["", "## Exact config", "", "```toml", results["config_toml"].rstrip(), "```", ""]
    return "\n".join(lines)


def _short(d: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
