"""The aggregation rule's effect: softmax mean against label vote, against the number of shards S.

Both rules are applied to the same trained ensembles (one `sisa.evaluate` of each run gives
both), so the comparison is paired by construction: per run, softmax - vote, then over seeds.
"""

from __future__ import annotations

from pathlib import Path

from sisa.experiments import accuracy
from sisa.experiments.accuracy import Sweep

NAME = "aggregation"
PLOT = "aggregation.png"

FULL = Sweep("shards", (1, 2, 5, 10, 20), fixed=1, seeds=(0, 1, 2),
             data=(accuracy.mnist5k(), accuracy.digits(), accuracy.purchase(accuracy.PURCHASE_ROWS), accuracy.adult()))
QUICK = Sweep("shards", (1, 5, 20), fixed=1, seeds=(0,),
              data=(accuracy.mnist5k(), accuracy.digits(), accuracy.purchase(accuracy.QUICK_PURCHASE_ROWS),
                    accuracy.adult()))

PAPER = """## The paper, for orientation

- Bourtoule et al. aggregate by a label-based majority vote by default, and also evaluate averaging
  the constituents' prediction vectors; the rule must not use training data (else the aggregator
  itself would need unlearning). Both of sisa's rules (`sisa/aggregate.py`) satisfy that.
- Second-hand only (a public reading note on GitHub, not checked against the paper): on ImageNet,
  prediction-vector averaging recovers +1.68 points of top-1 and +4.37 points of top-5 accuracy over
  the label vote. Numbers for the simple tasks (MNIST, Purchase, SVHN): **not found**.
- Ties: sisa's vote gives a tie to the lowest class index (deterministic); with few constituents
  (S=2) ties are frequent, which is part of what the S=2 rows measure."""


def run(out, *, quick: bool, progress: bool, setting: Sweep | None = None) -> dict:
    """`setting`: another sweep (tests use a tiny one)."""
    sweep = setting or (QUICK if quick else FULL)
    return accuracy.execute(NAME, sweep, Path(out), render, quick=quick, progress=progress)


def render(res: dict, out: Path) -> list[str]:
    summary = accuracy.summarize(res)
    parts = [("# Aggregation: softmax mean against label vote\n\n"
              f"Each data set is split into S shards (R = {res['fixed']['slices']}); the S constituents' test "
              "predictions are combined by the mean of their softmax outputs (sisa's default) and by a label "
              "vote (each constituent votes for its argmax; ties to the lowest class). Same ensembles, two rules."),
             accuracy.setup_section(res), "## Results"]
    for name, per in summary.items():
        cols = [("S", accuracy.value_cell(res)),
                ("softmax mean", accuracy.acc_cell("acc_softmax")),
                ("label vote", accuracy.acc_cell("acc_vote")),
                ("Δ softmax − vote", accuracy.delta_cell("rules")),
                ("p", accuracy.p_cell("rules")),
                ("mean constituent acc", accuracy.acc_cell("acc_constituents"))]
        parts.append(f"### {name}\n\n" + accuracy.table(res, per, cols))
    plot = accuracy.plot(res, summary, out, PLOT, rules=("softmax", "vote"), delta="rules",
                         delta_label="Δ test accuracy, softmax − vote (pp)",
                         title="SISA: aggregation rule vs shards (R=1)")
    parts.append(f"![softmax vs vote]({plot})\n\nLeft: test accuracy of each rule (solid: softmax mean, dashed: "
                 "label vote); right: their paired difference on the same ensembles (percentage points).")
    parts.append("## What the tables show\n\nΔ = softmax mean − label vote on the same ensemble, paired over "
                 "seeds:\n\n" + "\n".join(f"- {line}" for line in accuracy.findings_rules(res, summary)) +
                 "\n\nAt S = 1 both rules take the one model's argmax, so they must agree exactly there.")
    parts.append(PAPER)
    (out / "report.md").write_text("\n\n".join(parts) + "\n")
    return ["report.md", plot]
