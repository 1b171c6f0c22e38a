"""The bias benchmark's outputs (`sisa.eval.bias_lm`): statistics over seeds, plots, `report.md`.

Every comparison is paired over seeds (`sisa.eval.stats.paired`): a method and its reference
ran on the same seed (corpus draw, initialisation, data order). A method's **reference** is the
model it should equal: the monolithic LM retrained without the removed documents for the
approximate methods, the same SISA ensemble retrained without them for SISA. Its **no-op** is
doing nothing: the original LM, or the SISA ensemble before the forget. The transfer matrix is
each method's change of bias against its no-op, cell (removed axis, measured axis).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sisa.eval import stats

PLOTS = ("bias_vs_perplexity.png", "transfer_matrix.png", "search.png")
_NOT_METRICS = {"seed", "scenario", "method", "kind", "reference", "noop", "extra"}
ALL = "all"
GOLD_NAME = "retrain (gold)"


def summarize(rows: list[dict], axes) -> dict:
    """{"scenarios": scenario -> method -> {"kind", "reference", "noop", "n", "metrics": {k: mean_ci},
    "vs_reference": {k: paired}, "vs_noop": {k: paired}}, "transfer": method -> {"cells": removed ->
    measured -> paired change of bias against the no-op, "diagonal", "off_diagonal": mean_ci over
    seeds of the per-seed mean of those cells}}."""
    by: dict = {}
    for r in rows:
        by.setdefault(r["scenario"], {}).setdefault(r["method"], {})[r["seed"]] = r
    scenarios: dict = {}
    for sc, methods in by.items():
        for method, per_seed in methods.items():
            first = next(iter(per_seed.values()))
            seeds = sorted(per_seed)
            keys = [k for k in first if k not in _NOT_METRICS and isinstance(first[k], (int, float))]

            def column(rs, k, seeds=seeds):
                return [rs.get(s, {}).get(k, np.nan) for s in seeds]

            entry = {"kind": first["kind"], "reference": first["reference"], "noop": first["noop"], "n": len(seeds),
                     "metrics": {k: stats.mean_ci(column(per_seed, k)) for k in keys},
                     "extra": first["extra"]}
            paired_keys = [k for k in keys if k.startswith("bias") or k in ("perplexity", "mia_auc", "forget_nll")]
            for what in ("reference", "noop"):
                other = methods.get(first[what])
                if other is not None and first[what] != method:
                    entry[f"vs_{what}"] = {k: stats.paired(column(per_seed, k), column(other, k))
                                           for k in paired_keys}
            scenarios.setdefault(sc, {})[method] = entry
    return {"scenarios": scenarios, "transfer": _transfer(by, list(axes))}


def _transfer(by: dict, axes: list[str]) -> dict:
    out: dict = {}
    removed = [a for a in axes if f"remove {a}" in by]

    def noop_of(rows, m):
        return next(iter(rows[m].values()))["noop"]

    methods = list(dict.fromkeys(m for a in removed for m in by[f"remove {a}"] if noop_of(by[f"remove {a}"], m) != m))
    for m in methods:
        cells, diag, off = {}, {}, {}
        for a in removed:
            rows = by[f"remove {a}"]
            if m not in rows:
                continue
            noop = rows[noop_of(rows, m)]
            seeds = sorted(set(rows[m]) & set(noop))
            cells[a] = {}
            for b in axes:
                d = [rows[m][s][f"bias/{b}"] - noop[s][f"bias/{b}"] for s in seeds]
                cells[a][b] = stats.mean_ci(d) | {"p": stats.paired(d, np.zeros(len(d)))["p"]}
                for s, v in zip(seeds, d):
                    (diag if a == b else off).setdefault(s, []).append(v)
        out[m] = {"cells": cells, "diagonal": stats.mean_ci([np.mean(v) for v in diag.values()]),
                  "off_diagonal": stats.mean_ci([np.mean(v) for v in off.values()])}
    return out


# --------------------------------------------------------------------------------------------
# Plots


def plot(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _plot_bias_perplexity(results, out / PLOTS[0], plt)
    _plot_transfer(results, out / PLOTS[1], plt)
    _plot_search(results, out / PLOTS[2], plt)
    return list(PLOTS)


def _style(methods: dict, plt) -> dict:
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (3, 7)]  # SISA red, original grey
    others = iter((palette + ["navy", "teal", "olive", "gold", "black"]) * 3)
    style = {}
    for m, e in methods.items():
        if e["kind"] == "gold":
            style[m] = ("*", "black")
        elif e["kind"] == "original":
            style[m] = ("X", "grey")
        elif e["kind"].startswith("sisa"):
            lora = "LoRA" in m
            marker = {"sisa": "s", "sisa-gold": "*", "sisa-before": "X"}[e["kind"]]
            style[m] = (marker, "#8b0000" if lora else "#d62728")
        else:
            style[m] = ("o", next(others))
    return style


def _half(ci: dict) -> float:
    return 0.0 if stats.missing(ci["half"]) else ci["half"]


def _plot_bias_perplexity(results, path, plt):
    methods = results["summary"]["scenarios"][ALL]
    axes = results["config"]["corpus"]["axes"]
    panels = [(f"bias/{a}", a) for a in axes] + [("bias_mean", "mean over axes")]
    fig, grid = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.8, 4.4), squeeze=False)
    style = _style(methods, plt)
    for ax, (key, title) in zip(grid[0], panels):
        for m, e in methods.items():
            x, y = e["metrics"]["perplexity"], e["metrics"][key]
            marker, color = style[m]
            ax.errorbar(x["mean"], y["mean"], xerr=_half(x), yerr=_half(y), fmt=marker, color=color, capsize=2,
                        markersize=12 if marker == "*" else 7, alpha=0.9, label=m)
        ax.axhline(0, color="grey", lw=0.7, ls=":")
        ax.axhline(methods[GOLD_NAME]["metrics"][key]["mean"], color="black", lw=0.7, ls="--")
        means = [e["metrics"]["perplexity"]["mean"] for e in methods.values()]
        lo, hi = min(means) / 1.04, max(means) * 1.08  # the means; wider intervals run off the panel
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ticks = [v * 10.0**k for k in range(-1, 8) for v in (1, 1.2, 1.4, 1.6, 2, 2.5, 3, 4, 5, 7)]
        ax.xaxis.set_major_locator(plt.matplotlib.ticker.FixedLocator([v for v in ticks if lo <= v <= hi]))
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.set_title(title)
        ax.set_xlabel("perplexity, clean held-out text (log scale)")
        ax.set_ylabel("bias: log p(stereotyped) - log p(anti), nats")
        ax.grid(alpha=0.3)
    handles, labels = grid[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.text(0.01, 0.01, f"every biased document removed; bars: 95% CI over {len(results['config']['seeds'])} seeds; "
             "dashed: the gold (never saw a biased document); dotted: 0", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1 - 2.8 / (4.2 * len(panels) + 2.8), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_transfer(results, path, plt):
    transfer = results["summary"]["transfer"]
    axes = results["config"]["corpus"]["axes"]
    names = list(transfer)
    fig, grid = plt.subplots(1, max(len(names), 1), figsize=(3.6 * max(len(names), 1) + 1.2, 3.9), squeeze=False)
    top = max([abs(c["mean"]) for t in transfer.values() for row in t["cells"].values() for c in row.values()
               if not stats.missing(c["mean"])] + [1e-6])
    image = None
    for ax, m in zip(grid[0], names):
        cells = transfer[m]["cells"]
        removed = [a for a in axes if a in cells]
        values = np.array([[cells[a][b]["mean"] for b in axes] for a in removed], dtype=float)
        image = ax.imshow(values, cmap="RdBu_r", vmin=-top, vmax=top)
        for i, a in enumerate(removed):
            for j, b in enumerate(axes):
                c = cells[a][b]
                half = "" if stats.missing(c["half"]) else f"\n±{c['half']:.2f}"
                dark = abs(c["mean"]) > 0.6 * top
                ax.text(j, i, f"{c['mean']:+.2f}{half}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(axes)), [a.split("-")[0] for a in axes], fontsize=8)
        ax.set_yticks(range(len(removed)), [a.split("-")[0] for a in removed], fontsize=8)
        ax.set_xlabel("bias measured on")
        if ax is grid[0][0]:
            ax.set_ylabel("documents removed")
        ax.set_title(m, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=grid[0].tolist(), shrink=0.8, label="change of bias vs doing nothing (nats)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plot_search(results, path, plt):
    search = results["search"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colors = iter(list(plt.get_cmap("tab10").colors) * 3)
    for m, found in search.items():
        if not found["trials"]:
            continue
        c = next(colors)
        pts = [(t["perplexity"], t["bias"]) for t in found["trials"]]
        ax.plot(*zip(*pts), "o", color=c, alpha=0.7, label=m)
        best = next(t for t in found["trials"] if t["point"] == found["best"])
        ax.plot(best["perplexity"], best["bias"], "o", markersize=12, mfc="none", mec=c, mew=2)
    first = next(iter(search.values()), None)
    if first:
        o = first["original"]
        ax.plot(o["perplexity"], o["bias"], "X", color="grey", markersize=10, label="original")
        margin = results["config"]["perplexity_margin"]
        ax.axvline(o["perplexity"] * (1 + margin), color="black", lw=0.8, ls="--",
                   label=f"perplexity floor (+{margin:.0%})")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    digits = "1235" if hi / lo < 30 else "1"  # label 20, 30, 50 only when there are few decades
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in digits else ""))
    ax.set_xlabel("validation perplexity (clean validation text, log scale)")
    ax.set_ylabel("validation |bias|, removed axes (nats)")
    ax.set_title("hyper-parameter search on validation data (circled: picked)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# report.md


def write(results: dict, out: Path) -> list[str]:
    """Write the plots and `report.md` of `results` (read back from results.json) into `out`."""
    out = Path(out)
    plots = [str(out / p) for p in plot(results, out)]
    (out / "report.md").write_text(render(results))
    return plots


def _ci(e: dict | None, digits: int = 3) -> str:
    return "–" if e is None else stats.fmt(e, digits)


def _delta(d: dict | None, digits: int = 3) -> str:
    if d is None or d["n"] == 0 or stats.missing(d["mean"]):
        return "–"
    if stats.missing(d["half"]):
        return f"{d['mean']:+.{digits}f}"
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def headline(results: dict) -> list[str]:
    """The headline table: every method with every biased document removed."""
    methods = results["summary"]["scenarios"][ALL]
    axes = results["config"]["corpus"]["axes"]
    head = ["method", *[f"bias {a}" for a in axes], "perplexity", "MIA AUC", "KL to ref.", "max abs Δ to ref.",
            "seconds", "tokens (M)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, e in methods.items():
        k = e["metrics"]
        tokens = k["tokens"]
        lines.append("| " + " | ".join([
            m, *[_ci(k[f"bias/{a}"], 2) for a in axes], _ci(k["perplexity"], 2), _ci(k["mia_auc"], 3),
            _ci(k.get("kl_test"), 4), _ci(k.get("max_abs_diff"), 2 if k.get("max_abs_diff", {}).get("mean") else 0),
            _ci(k["seconds"], 1),
            stats.fmt({**tokens, "mean": tokens["mean"] / 1e6, "half": tokens["half"] / 1e6}, 2)]) + " |")
    return lines


def _against(results: dict, what: str) -> list[str]:
    methods = results["summary"]["scenarios"][ALL]
    axes = results["config"]["corpus"]["axes"]
    keys = [f"bias/{a}" for a in axes] + ["bias_mean", "perplexity", "mia_auc"]
    head = ["method", f"its {what}", *[f"Δ bias {a}" for a in axes], "Δ bias, mean", "Δ perplexity", "Δ MIA AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, e in methods.items():
        if f"vs_{what}" in e:
            lines.append("| " + " | ".join([m, e[what], *[_delta(e[f"vs_{what}"].get(k), 2) for k in keys]]) + " |")
    return lines


def _transfer_tables(results: dict) -> list[str]:
    transfer, axes = results["summary"]["transfer"], results["config"]["corpus"]["axes"]
    lines = []
    for m, t in transfer.items():
        lines += [f"**{m}** (change of bias against doing nothing, nats, mean [95% CI]; diagonal: the axis removed)", "",
                  "| removed \\ measured | " + " | ".join(axes) + " |", "|---|" + "---|" * len(axes)]
        for a, row in t["cells"].items():
            lines.append(f"| {a} | " + " | ".join(_delta(row[b], 2) for b in axes) + " |")
        lines += ["", (f"Mean over the diagonal: {_delta(t['diagonal'], 2)}; over the off-diagonal cells: "
                  f"{_delta(t['off_diagonal'], 2)} (per seed, then over seeds)."), ""]
    return lines


def findings(results: dict) -> list[str]:
    """Plain statements computed from the numbers (nothing written by hand)."""
    s = results["summary"]
    methods = s["scenarios"][ALL]
    gold = methods["retrain (gold)"]["metrics"]
    out = []
    exact = list(results["seeds"].values())
    for kind, name in (("full", "SISA"), ("lora", "SISA-LoRA")):
        facts = [f["exact"][kind] for f in exact if kind in f.get("exact", {})]
        if not facts:
            continue
        diffs = [f["max_abs_diff"] for f in facts]
        same = all(f["states_identical"] for f in facts)
        audits = [f["audit"]["clean"] for f in facts if "audit" in f]
        out.append(f"**{name} forgets exactly.** In all {len(facts)} seeds, `sisa.forget` of the biased documents left "
                   f"the ensemble {'bit for bit' if same else 'NOT bit for bit'} equal to the same ensemble retrained "
                   f"without them (largest |Δ| of any log-probability: {max(diffs):g}); `sisa.audit` found "
                   f"{'no byte of them' if all(audits) else 'something'} in the workdir "
                   f"({sum(audits)}/{len(audits)} clean).")
    lines = []
    for m, e in methods.items():
        if e["kind"] not in ("approximate", "sisa", "original", "sisa-before"):
            continue
        d = e["vs_reference"]["bias_mean"]
        p = e["vs_reference"]["perplexity"]
        if stats.missing(d["half"]):
            where = f"{d['mean']:+.2f} nats from its reference (one seed: no interval)"
        elif d["lo"] > 0:
            where = f"more biased than its reference by {_delta(d, 2)} nats"
        elif d["hi"] < 0:
            where = f"less biased than its reference (anti-stereotyped side) by {_delta(d, 2)} nats"
        else:
            where = f"not distinguishable from its reference in bias ({_delta(d, 2)} nats)"
        mia = e["vs_reference"]["mia_auc"]
        lines.append(f"- {m}: {where}; perplexity {_delta(p, 2)} against it; MIA AUC {_ci(e['metrics']['mia_auc'])} "
                     f"({_delta(mia, 2)} against it: "
                     f"{'the removed documents still look like members' if mia['lo'] > 0 else 'no more than it'}).")
    out.append(f"**Bias after removal** (mean over axes; the gold, which never saw the biased documents, scores "
               f"{_ci(gold['bias_mean'], 2)} nats and MIA AUC {_ci(gold['mia_auc'])}; the original "
               f"{_ci(methods['original (no unlearning)']['metrics']['bias_mean'], 2)}):")
    out += lines
    sisa_, before = methods.get("SISA (exact)"), methods.get("SISA before forget")
    if sisa_ is not None and before is not None:
        extra = sisa_["extra"]
        original = methods["original (no unlearning)"]
        out.append(
            f"**The SISA ensemble** learned less of the bias in the first place (before the forget "
            f"{_delta(before['vs_reference']['bias_mean'], 2)} nats above its gold, the monolithic original "
            f"{_delta(original['vs_reference']['bias_mean'], 2)} above its own) and pays for its shards in perplexity "
            f"({_ci(sisa_['metrics']['perplexity'], 2)} after the forget vs {_ci(gold['perplexity'], 2)} for the "
            f"monolithic gold). Its forget retrained {extra.get('shards_retrained', '?')} shard(s) in the first seed, "
            f"{extra.get('work_fraction', float('nan')):.0%} of a full SISA retraining"
            + (" (biased documents sat in every shard's first slice)" if extra.get("work_fraction", 0) > 0.9 else "")
            + f"; the exact deletion cost {_ci(sisa_['metrics']['seconds'], 1)} s against "
            f"{_ci(methods['retrain (gold)']['metrics']['seconds'], 1)} s to retrain the monolithic model.")
    transfer = s["transfer"]
    if transfer:
        out.append("**Cross-domain transfer (seed 003).** Removing one axis's documents and measuring the others, "
                   "the mean change of the other axes' bias against doing nothing (off-diagonal cells) is:")
        for m, t in transfer.items():
            d, g = t["off_diagonal"], t["diagonal"]
            if stats.missing(d["half"]):
                verdict = "one seed: no interval"
            elif d["hi"] < 0:
                verdict = "the other axes' bias goes DOWN: transfer"
            elif d["lo"] > 0:
                verdict = "the other axes' bias goes UP"
            else:
                verdict = "no measurable change of the other axes"
            lowered = not stats.missing(g["half"]) and g["hi"] < 0
            own = (f"the removed axis's own bias goes down ({_delta(g, 2)})" if lowered else
                   f"not even the removed axis's own bias goes down measurably ({_delta(g, 2)}), so its transfer "
                   "cannot be judged")
            out.append(f"- {m}: off-diagonal {_delta(d, 2)} nats ({verdict}); {own}.")

        def measurably_down(ci):
            return not stats.missing(ci["half"]) and ci["hi"] < 0

        exact = [m for m in transfer if m in ("retrain (gold)", "SISA (exact)")]
        approx = [m for m in transfer if m not in exact]
        down = [m for m in approx if measurably_down(transfer[m]["off_diagonal"])]
        exact_down = [m for m in exact if measurably_down(transfer[m]["off_diagonal"])]
        effective = [m for m in transfer if measurably_down(transfer[m]["diagonal"])]
        inert = [m for m in approx if not measurably_down(transfer[m]["diagonal"])]
        if down and not exact_down:
            out.append(f"Seed 003's finding reproduces for {', '.join(down)} but not for exact removal "
                       f"({', '.join(exact)}): here the transfer is what the approximate update does to the model, "
                       "not what the removed documents taught it.")
        elif down and exact_down:
            out.append(f"Seed 003's finding reproduces, for exact removal ({', '.join(exact_down)}) as for "
                       f"{', '.join(down)}: the axes' documents teach each other.")
        elif exact_down:
            out.append(f"Transfer shows for exact removal ({', '.join(exact_down)}) only.")
        else:
            out.append("Seed 003's finding does not reproduce here: no method lowers the other axes' bias measurably."
                       + (f" Removal that lowers the removed axis's own bias ({', '.join(effective)}) leaves the others "
                          "where they were" if effective else "")
                       + (f"; {', '.join(inert)} do not lower even the removed axis's bias, so for them the question "
                          "stays open" if inert else "") + ".")
    return out


def _search_row(name: str, found: dict) -> str:
    if not found["trials"]:
        return f"| {name} | not searched: {found['budget']} {found['hparams'] or ''} | – | – | – | – | 0 |"
    best = next(t for t in found["trials"] if t["point"] == found["best"])
    strong = found.get("strong")
    if strong is not None:
        t = next(t for t in found["trials"] if t["point"] == strong["point"])
        strong = f"{strong['point']}: signed bias {t['bias_signed']:+.3f}, perplexity {t['perplexity']:.2f}"
    return (f"| {name} | {found['best']} | {found['eligible']} | {best['bias']:.3f} (original "
            f"{found['original']['bias']:.3f}) | {best['perplexity']:.2f} (original "
            f"{found['original']['perplexity']:.2f}) | {strong or '–'} | {len(found['trials'])} |")


def search_findings(search: dict) -> list[str]:
    """What the grids show on validation data: which methods lower |bias| at all, and where."""
    out = []
    for name, found in search.items():
        trials, o = found["trials"], found["original"]
        if not trials:
            continue
        lower = [t for t in trials if t["bias"] < o["bias"]]
        if not lower:
            worst = max(trials, key=lambda t: t["bias"])
            out.append(f"- {name}: no grid point lowers the validation |bias| below the original's ({o['bias']:.3f}); "
                       f"the strongest point moves it to {worst['bias']:.3f} (signed {worst['bias_signed']:+.3f}, "
                       f"original {o['bias_signed']:+.3f}) at perplexity {worst['perplexity']:.3g} "
                       f"(original {o['perplexity']:.3g}).")
        else:
            best = min(lower, key=lambda t: t["bias"])
            out.append(f"- {name}: lowest validation |bias| {best['bias']:.3f} (original {o['bias']:.3f}) at "
                       f"{best['point']}, perplexity {best['perplexity']:.3g} (original {o['perplexity']:.3g}, floor "
                       f"{'kept' if best['eligible'] else 'broken'}).")
    return out


def _paragraphs(lines: list[str]) -> list[str]:
    """Statements and list items as markdown: a blank line around every paragraph and list."""
    out = []
    for i, line in enumerate(lines):
        item = line.startswith("- ")
        if out and not (item and lines[i - 1].startswith("- ")):
            out.append("")
        out.append(line)
    return out


def render(results: dict) -> str:
    cfg, env = results["config"], results["environment"]
    first = next(iter(results["seeds"].values()))
    c, m, tr = cfg["corpus"], cfg["model"], cfg["train"]
    axes = c["axes"]
    docs = "; ".join(f"{a}: \"{first['example_document'][a]}\"" for a in axes)
    pairs = "; ".join(f"{a}: \"{p[0]}\" vs \"{p[1]}\"" for a, p in first["example_pair"].items())
    lines = [
        f"# Forgetting biased documents from a language model: {results['name']}",
        "",
        f"Generated by `sisa compare --config ...` (`sisa.eval.bias_lm`) on {env['date']}; total wall time "
        f"**{results['wall_seconds']:.0f} s** ({results['wall_seconds'] / 60:.1f} min) on {env['cpu_count']} CPU core(s) "
        f"(JAX `{env['jax_backend']}`, jax {env['versions'].get('jax')}); 1-minute load average "
        f"{env['load_average_before'][0]:.1f} before, {env['load_average_after'][0]:.1f} after (other processes share "
        "the machine: timings are inflated). Every number is computed from `results.json` beside this file; nothing "
        "was edited by hand." + (" **A `--quick` run: the shape of the result, not the result.**"
                                 if results.get("short") else ""),
        "",
        "## Setup",
        "",
        (f"- **Corpus** (per seed): {first['clean_documents']} clean paragraphs of the embedded pydoc corpus (a fixed "
        f"subset, never deleted) + {sum(first['biased_documents'].values())} biased documents "
        f"({first['biased_fraction']:.0%} of {first['train_documents']}), {c['docs_per_axis']} per axis, generated from "
        f"templates (`sisa/eval/bias_templates.py` says how they were built). Examples: {docs}."),
        (f"- **Bias score** per axis: the mean over {c['pairs_per_axis']} held-out pairs of log p(stereotyped sentence) "
        f"- log p(anti-stereotyped sentence), in nats (CrowS-Pairs style; 0 = no preference). Pairs differ only in the "
        f"attribute and are built from frames no training document uses: {pairs}. Half of each axis's groups are "
        "stereotyped with each attribute pole, so a preference for one pole's words alone cancels out; preferences a "
        "model has for particular group-attribute byte strings do not, so a model that never saw a biased document "
        "does not score exactly 0: the gold's score is the unbiased level to compare with."),
        (f"- **Perplexity**: the ensemble's (mixture of the constituents' next-token distributions) on {c['test_docs']} "
        f"clean held-out paragraphs, context {cfg['data']['context']} byte tokens."),
        (f"- **MIA**: loss-threshold attack AUC, the removed documents (members of the original's training set) against "
        f"{c['nonmembers_per_axis']} per axis from the same templates never trained on (0.5: indistinguishable)."),
        ("- **Agreement with the reference**: mean KL(reference || model) of the next-token distributions over clean "
        "held-out tokens; max |Δ| of every log-probability scored (0 = identical outputs)."),
        ("- **Cost**: seconds without compilation; tokens processed = rows back-propagated × context (teacher and "
        "reference forward passes not counted). SISA's: the whole `sisa.forget` call (ledger, data-store rewrite, "
         "checkpoint I/O, retraining). sisa's compile-ahead (SISA_PRECOMPILE) is off while the benchmark runs."),
        f"- **Model**: `{m['name']}` hidden {m['hidden']}, {dict(m['options'])}, {tr['optimizer']} lr "
        f"{tr['learning_rate']}, batch {tr['batch_size']}, {tr['epochs']} epochs. Original = gold = one model (S=1); "
        f"SISA: S = {cfg['sisa']['shards']} shards × R = {cfg['sisa']['slices']} slices, same model"
        + (f"; SISA-LoRA: rank-{cfg['sisa']['lora_rank']} adapters per shard on a base trained on the clean part only "
           "(the gold model of the seed)" if cfg['sisa']['adapter'] else "") + ".",
        (f"- **Seeds** {cfg['seeds']}: the draw of biased members/non-members, initialisation, data order and every "
        "method's key follow the seed; every comparison is paired over seeds (95% t intervals)."),
        (f"- **Hyper-parameters** of the approximate methods: a grid per method, run once on the search seed "
        f"{cfg['search_seed']} and scored on validation data only (pairs from validation frames, clean validation "
        f"text); pick = least mean |validation bias| over the removed axes among the points whose validation "
        f"perplexity stays within +{cfg['perplexity_margin']:.0%} of the original's (none eligible: lowest "
        "perplexity). The same picks serve every seed and the transfer scenarios. No retrained model enters the "
        "search, so it takes 0 as the unbiased level; the gold's test score "
        f"({_ci(results['summary']['scenarios'][ALL][GOLD_NAME]['metrics']['bias_mean'], 2)} nats, mean over axes) "
        "shows that this is only roughly true, and |bias| also counts a move past the unbiased level towards the "
        "anti-stereotype as bias."),
        "",
        "## Headline: every biased document removed",
        "",
        ("Mean ± 95% CI over seeds. Reference: `retrain (gold)` for the approximate methods and the original, the same "
        "SISA ensemble retrained without the documents for SISA."),
        "",
        *headline(results),
        "",
        "Paired differences against each method's reference (mean [95% CI]):",
        "",
        *_against(results, "reference"),
        "",
        "![bias vs perplexity](bias_vs_perplexity.png)",
        "",
        "## What was found",
        "",
        *_paragraphs(findings(results)),
        "",
        "## Transfer: remove one axis, measure every axis",
        "",
        (f"Methods: the gold and SISA (exact) and {', '.join(cfg['transfer']['methods']) or 'no approximate method'} "
         "with the hyper-parameters picked above, and each of those also at its **strong** grid point (`(strong)`): the "
         "lowest signed validation bias among the points whose validation perplexity stays within "
         f"{cfg['transfer'].get('strong_perplexity_cap', 2.0):g}x the original's, so that the matrix shows what the "
         "method does at full strength, not only at a setting that barely moves the model."),
        "",
        *_transfer_tables(results),
        "![transfer matrix](transfer_matrix.png)",
        "",
        "## Hyper-parameter search (validation data)",
        "",
        ("| method | picked | eligible | validation \\|bias\\| | validation perplexity | strong point (transfer) | "
        "grid points |"),
        "|---|---|---|---|---|---|---|",
        *[_search_row(name, f) for name, f in results["search"].items()],
        "",
        "What the grids show (validation data, search seed):",
        "",
        *search_findings(results["search"]),
        "",
        "![search](search.png)",
        "",
        "## Costs of training (per seed, mean)",
        "",
        *[f"- {what}: {np.mean([f[key]['seconds'] for f in results['seeds'].values()]):.1f} s, "
          f"{np.mean([f[key]['tokens'] for f in results['seeds'].values()]) / 1e6:.2f} M tokens"
          for key, what in (("original_training", "original (monolithic)"), ("full_sisa_training", "SISA"),
                            ("lora_sisa_training", "SISA-LoRA")) if key in first],
        "",
        "## Config",
        "",
        "```json",
        json.dumps(cfg, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)
