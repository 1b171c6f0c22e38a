"""Human-readable rendering of command results (the `--json` objects are the source)."""

from __future__ import annotations

# Characters a terminal acts on instead of showing: C0 controls (newline and tab included), DEL,
# C1 controls, the Unicode line separators and the bidi embeddings, overrides and isolates.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES |= {c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_ESCAPES |= {c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)}  # undecodable bytes of a path (no UTF-8 either)


def safe(text) -> str:
    """`text` with every character a terminal would act on written as a visible escape
    (`\\x1b`, `\\n`, `\\u202e`): user text (paths, request references, messages quoting
    them) can neither move the cursor, recolour, hide lines nor reorder what is shown."""
    return str(text).translate(_ESCAPES)


def _safe_tree(v):
    """`v` with every string in it (dict keys too) passed through `safe`."""
    if isinstance(v, str):
        return safe(v)
    if isinstance(v, dict):
        return {_safe_tree(k): _safe_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_safe_tree(x) for x in v)
    return v


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# Shards, slices and stages are numbered from 0 everywhere: in code, lineages, the ledger, JSON
# and text (a run of R slices has stages 0..R-1). Text that shows a stage number says so.
FROM_0 = "stages numbered from 0"


def _runs(numbers) -> str:
    """[1, 2, 3, 5] -> "1..3, 5"."""
    out, numbers = [], sorted(numbers)
    for i, n in enumerate(numbers):
        if i and n == numbers[i - 1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in out)


def _retrained(stages: dict) -> str:
    """{0: [1, 2, 3], 2: [3]} -> "retrained shard 0 stages 1..3, shard 2 stage 3 (stages numbered from 0)"."""
    parts = [f"shard {s} " + (f"stage{'s' if len(st) > 1 else ''} {_runs(st)}" if st else "none")
             for s, st in stages.items()]
    return f"retrained {', '.join(parts) or 'nothing'} ({FROM_0})"


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def render(command: str, r: dict) -> str:
    """Every string of the result is shown through `safe`; the line breaks are render's own."""
    if command == "demo":  # its text is lines sisa wrote, quoting the user's workdir
        return "\n".join(map(safe, r["text"].split("\n")))
    r = _safe_tree(r)
    if command == "train":
        done = [f"done: {step}" for step in r.get("plan", []) if not step.startswith("train shard")]
        if any("stage" in step for step in done):
            done[-1] += f" ({FROM_0})"
        if not r["shards_trained"]:
            return "\n".join([*done, f"{r['workdir']}: already trained; nothing to do" if not done else
                               f"{r['workdir']}: no shard needed training"])
        return "\n".join([*done, f"trained shards {r['shards_trained']} in {r['seconds']:.1f} s "
                                  f"({r['examples_epochs']} example-epochs) -> {r['workdir']}"])
    if command == "forget":
        return "\n".join([
            f"forgot {r['forgotten']} id(s): ledger entry #{r['entry']} committed, head {r['hash'][:16]}",
            _retrained(r["stages_retrained"]),
            f"cost: {r['examples_epochs_retrained']} example-epochs vs {r['examples_epochs_full_retrain']} "
            f"for a full retrain ({r['examples_epochs_retrained'] / max(r['examples_epochs_full_retrain'], 1):.1%}), "
            f"{r['seconds']:.2f} s",
        ])
    if command == "predict" and "scores" in r:  # a language model
        return "\n".join(f"{i}\tlog-likelihood {score:.3f} nats over {n} token(s)\tnext: "
                         + " ".join(f"{nx['token']!r}:{nx['probability']:.3f}" for nx in nxt)
                         for i, (score, n, nxt) in enumerate(zip(r["scores"], r["tokens"], r["next"])))
    if command == "predict":
        names = r.get("label_names") or r["labels"]
        return "\n".join(f"{i}\t{name}\t{max(p):.3f}" for i, (name, p) in enumerate(zip(names, r["probabilities"])))
    if command == "evaluate":
        stage = {int(s): v["stage"] for s, v in r.get("served", {}).items()}
        last = max(stage.values(), default=0)
        shard = lambda s: f"shard {s}" + (f" (stage {stage[int(s)]}, retraining)" if stage.get(int(s), last) < last else "")  # noqa: E731
        if "perplexity" in r:
            rows = [[shard(s), ppl] for s, ppl in r["per_shard"].items()]
            rows += [["ensemble (mean of distributions)", r["perplexity"]]]
            out = _table(["model", "test perplexity"], rows) + f"\nloss: {r['loss']:.4f} nats/token over {r['test_tokens']} tokens"
        else:
            rows = [[shard(s), acc] for s, acc in r["per_shard"].items()]
            rows += [["aggregate (vote)", r["accuracy_vote"]], ["aggregate (softmax)", r["accuracy_softmax"]]]
            out = _table(["model", "test accuracy"], rows)
        left = [s for v in r["left_out"].values() for s in v]
        return out + (f"\nnot served at their final stage: {r['left_out']}" if left else "")
    if command == "status":
        rows = [[s, n, " ".join(map(str, per))] for s, (n, per) in
                enumerate(zip(r["examples_per_shard"], r["examples_per_shard_slice"]))]
        disk = r["disk_bytes"]
        return "\n".join([
            f"{r['workdir']}: {r['dataset']}, {r['shards']} shards x {r['slices']} slices, {r['examples']} examples",
            _table(["shard", "examples", f"per slice 0..{r['slices'] - 1}"], rows),
            f"deleted: {r['deleted']} id(s) in {r['requests']} request(s); pending: {r['pending_requests'] or 'none'}",
            f"pending work: {'; '.join(r['pending_plan']) or 'none'}"
            + (f" ({FROM_0})" if any("stage" in step for step in r["pending_plan"]) else ""),
            f"disk: {_human_bytes(disk['total'])} (checkpoints {_human_bytes(disk['checkpoints'])}, data {_human_bytes(disk['data'])})",
        ])
    if command == "ledger" and "entries" not in r:  # --head: the one line to keep
        return r["anchor"]
    if command == "ledger":
        rows = [[e["seq"], e["state"], len(e["ids"]), " ".join(f"{s}:{st}" for s, st in e["affected"].items()),
                 e["request"] or "", e["times"]["requested"], e["hash"][:16]] for e in r["entries"]]
        keep = "keep it off this machine; `sisa verify --expect-head` checks it later"
        return (_table(["seq", "state", "ids", "affected (shard:stage, from 0)", "request", "requested", "hash"],
                       rows) + f"\nhead: {r['anchor']}  ({keep})")
    if command == "verify":
        rows = [[s, r["served"][:16] if r["served"] else "-", "yes" if r["identical"] else "NO"]
                for s, r in r["shards"].items()]
        env = r["environment"]
        return "\n".join([
            f"verdict: {r['verdict']}", f"ledger head: {r['ledger_head']} ({r['forgotten']} id(s) forgotten)",
            _table(["shard", "checkpoint digest", "equals retrain"], rows),
            f"environment: {env['now']}" + (f"\n{env['note']}" if env["note"] else ""),
            *[f"accepted environment change at {c['time']}: {c['from']['versions']} -> {c['to']['versions']}"
              for c in env["accepted_changes"]],
            *[f"problem: {p}" for p in r["problems"]],
        ])
    if command == "audit":
        head = ("clean: nothing of forgotten examples found" if r["clean"] else "FOUND traces of forgotten examples"
                if r["findings"] else "NOT CLEAN: parts could not be checked")
        return "\n".join([f"{head} ({r['forgotten']} forgotten, {r['rows_scanned_for']} scanned for by bytes)",
                          *[f"finding: {f}" for f in r["findings"]], *[f"could not check: {u}" for u in r["unchecked"]],
                          *[f"note: {n}" for n in r["notes"]]])
    if command == "compare":
        return f"{r['report']} ({r['wall_seconds']:.0f} s); plots: {', '.join(r['plots'])}"
    if command == "experiment":
        return f"{r['report']} ({r['wall_seconds']:.0f} s)"
    if command == "demo":
        return r["text"]
    if command == "add":
        return (f"added {r['added']} example(s) as arrival {r['arrival']} (stage {r['stage']}, from 0): shards "
                f"{r['shards']} trained {r['examples_epochs']} example-epochs in {r['seconds']:.2f} s")
    if command == "serve":
        return f"sisa serve stopped ({r['served']})"
    raise AssertionError(command)
