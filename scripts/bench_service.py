"""`sisa serve` under load, on loopback: prediction latency while it forgets, how soon a forget
is committed, whether any answer used a checkpoint that saw an acknowledged id, and kill -9.

    python scripts/bench_service.py [--duration 60] [--forgets 30] [--clients 8] [--rows 32]
                                    [--fault-duration 20] [--kills 10] [--singles 5] [--repeats 3]
                                    [--batch-window 0.5] [--seed 0] [--quick]
                                    [--json] [--out F.json] [--plot F.png]

Method. mnist5k is trained once (default config: 5 shards x 4 slices, MLP) into a temporary
directory, and every phase starts from its own copy of that run, served by `sisa serve` in a
child process (`--batch-window`, a random bearer token in SISA_TOKEN, a free loopback port):

* A, B (side by side in this one run): `--clients` threads, each with its own `sisa.Client`,
  send predictions of `--rows` random test rows (raw uint8 pixels, as JSON lists) back to back
  for `--duration` seconds. A sends nothing else; in B one more thread sends `--forgets`
  requests of 1-10 random ids never forgotten before, at random moments over the first 80% of
  the phase, and another polls `/v1/requests/N` every 50 ms (oldest unfinished first) to time
  each request from its 202 to `committed`. Every prediction's start, latency and `served` map
  (the stage and lineage digest that answered for each shard) is recorded.
* Freshness (A, B and the fault phase): a shard's stage r may answer for the ids of its slices
  0..r of the original store less the ids of the first k ledger requests, for some k no smaller
  than the ledger position of the last request whose 202 reached the client before the
  prediction was sent (requests are committed in ledger order; tests/test_concurrency.py).
  Any other digest, or a smaller k, is a violation.
* Single ids: once B's load is over and its requests committed, `--singles` requests of one id
  each are sent to the idle server one at a time, each waited for (50 ms polling) before the
  next; the server's own retraining seconds (`sisa_retrain_seconds_total` in /metrics) are read
  around each. The same retraining work without a server: `sisa.forget` of that same id in this
  process (programs loaded by one untimed forget first) on a fresh copy of the trained run,
  median of `--repeats`.
* Faults: a fresh copy is loaded as in B for `--fault-duration` seconds (forgets spread the same
  way) while the server is killed with SIGKILL at `--kills` random moments and restarted each
  time (the next kill waits for it to answer /healthz). Clients count connection errors and go
  on; a forget refused at connect is resent, one cut off in flight is not (it may or may not be
  in the ledger). At the end every request in the ledger must be committed, every acknowledged
  one must be there, nothing else (nothing but cut-off requests), and the final model must be
  bit for bit what `sisa.train` on the data set minus every id in the ledger gives. Per kill:
  the seconds until /healthz answered again and until a prediction sent after it was answered.

Targets: p99 latency with forgets <= 2x p99 without them (B vs A); a single-id request committed
within 1.2x its retraining work + 0.2 s of its 202; 0 freshness violations; after the kills
every acknowledged request committed and the model identical to training from scratch.
A request reaching an idle server retrains at once; one arriving during a retraining, or within
the batch window after it, waits for the window to end (the table also shows the time with the
window subtracted), and a retraining under load takes turns with predictions one epoch at a time.

`--plot F.png`: prediction latency over time in B and the fault phase, with each forget's 202
and commit and each kill marked (skipped with a note without matplotlib). Programs compile into
sisa's usual cache (SISA_CACHE_DIR if set). Results go to stdout only; `--out FILE` also writes
the JSON: nothing committed is overwritten unless asked.
"""

from __future__ import annotations

import argparse
import bisect
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib

TARGET_P99_RATIO = 2.0
TARGET_COMMIT = (1.2, 0.2)  # 202 -> committed <= 1.2 x retraining work + 0.2 s
POLL_S = 0.05


# ---------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sisa serve` on a workdir, as a child process that can be killed and started again."""

    def __init__(self, root: Path, batch_window: float, log: Path):
        self.root, self.batch_window, self.log = root, batch_window, log
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.up = threading.Event()

    def client(self, timeout: float = 30.0):
        import sisa

        return sisa.Client(self.url, self.token, timeout=timeout)

    def start(self, timeout: float = 180.0) -> float:
        """Start it and wait until /healthz answers; the seconds that took."""
        from sisa.errors import SisaError

        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sisa.cli", "serve", "--workdir", str(self.root), "--port", str(self.port),
                 "--batch-window", str(self.batch_window)],
                env={**os.environ, "SISA_TOKEN": self.token}, stdout=log, stderr=subprocess.STDOUT)
        probe = self.client(timeout=5)
        while True:
            try:
                probe.healthz()
                self.up.set()
                return time.monotonic() - t0
            except SisaError:
                if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                    self.kill()
                    raise SystemExit(f"sisa serve did not come up; its log:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        self.up.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        self.up.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def metric(client, name: str) -> float:
    for line in client.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"/metrics has no {name}")


def warm_up(client, x) -> None:
    """One prediction, not timed: the server loads its constituents and programs."""
    client.predict(x[:4].tolist())


# ---------------------------------------------------------------------------- load


class Record:
    """What a load phase saw; times in seconds since the phase started (time.monotonic)."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.predicts: list[dict] = []  # {"start", "latency", "served"}
        self.errors: list[dict] = []  # answers other than 200 to a prediction: {"t", "error"}
        self.connection_errors = 0
        self.acked: list[dict] = []  # {"request_id", "ids", "sent", "ack", "committed"}, in 202 order
        self.unacked: list[dict] = []  # cut off in flight: {"ids", "sent", "error"}
        self.refused: list[dict] = []  # forgets the server answered with an error: {"ids", "error"}
        self.kills: list[dict] = []  # {"planned", "killed", "up"}
        self.failures: list[str] = []  # a side thread that stopped on an error
        self.duration: float | None = None
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def connection_error(self) -> None:
        with self._lock:
            self.connection_errors += 1


def predict_loop(client, x, rows: int, seed: int, stop: threading.Event, rec: Record) -> None:
    import numpy as np

    from sisa.errors import SisaError

    rng = np.random.default_rng(seed)
    while not stop.is_set():
        inputs = x[rng.choice(len(x), rows, replace=False)].tolist()
        start = rec.now()
        try:
            answer = client.predict(inputs)
        except SisaError as e:
            if e.kind == "os_error":
                rec.connection_error()
            else:
                rec.errors.append({"t": start, "error": str(e)[:300]})
            time.sleep(0.05)
            continue
        rec.predicts.append({"start": start, "latency": rec.now() - start, "served": answer["served"]})


def forget_stream(client, batches: list[list[int]], at: list[float], rec: Record, deadline: float = 120.0) -> None:
    """Send each batch at its moment; resent while the server refuses connections (down)."""
    from sisa.errors import SisaError

    for n, (ids, when) in enumerate(zip(batches, at)):
        time.sleep(max(0.0, when - rec.now()))
        give_up = time.monotonic() + deadline
        while True:
            sent = rec.now()
            try:
                answer = client.forget(ids, request=f"bench-{n}")
            except SisaError as e:
                if e.kind == "os_error" and "refused" in str(e) and time.monotonic() < give_up:
                    time.sleep(0.05)  # nothing reached a server: send it again
                    continue
                cut = rec.unacked if e.kind == "os_error" else rec.refused  # cut off in flight, or answered
                cut.append({"ids": ids, "sent": sent, "error": str(e)[:300]})
                break
            rec.acked.append({"request_id": answer["request_id"], "ids": ids, "sent": sent, "ack": rec.now(),
                              "committed": None})
            break


def commit_poller(client, rec: Record, stop: threading.Event) -> None:
    """Every 50 ms, the oldest requests not yet seen committed, in order, until one is not."""
    from sisa.errors import SisaError

    while not stop.is_set():
        for a in [a for a in rec.acked if a["committed"] is None]:
            try:
                state = client.request(a["request_id"])["state"]
            except SisaError:
                break  # the server is down (fault phase)
            if state != "committed":
                break
            a["committed"] = rec.now()
        time.sleep(POLL_S)


def killer(server: Server, at: list[float], rec: Record) -> None:
    """SIGKILL the server at each moment (once it is up again), then start it again."""
    for when in at:
        time.sleep(max(0.0, when - rec.now()))
        server.up.wait(300)
        killed = rec.now()
        server.kill()
        server.start()
        rec.kills.append({"planned": when, "killed": killed, "up": rec.now()})


def guarded(fn, rec: Record):
    """`fn` in a thread, its failure recorded instead of lost."""
    def run(*args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001  (SystemExit from Server.start too)
            rec.failures.append(f"{fn.__name__}: {type(e).__name__}: {e}")
    return run


def run_load(server: Server, x, args, seed: int, batches=(), forget_at=(), kill_at=(), duration=None) -> Record:
    """Predictions from `args.clients` threads for `duration` seconds (longer while a kill is
    still being recovered), with the forget stream and kills if given; then wait until every
    acknowledged request is committed."""
    duration = duration or args.duration
    rec, stop, stop_polling = Record(), threading.Event(), threading.Event()
    threads = [threading.Thread(target=predict_loop, args=(server.client(), x, args.rows, seed * 1000 + c, stop, rec))
               for c in range(args.clients)]
    side = []
    if batches:
        side.append(threading.Thread(target=guarded(forget_stream, rec),
                                     args=(server.client(), list(batches), list(forget_at), rec)))
    if kill_at:
        side.append(threading.Thread(target=guarded(killer, rec), args=(server, list(kill_at), rec)))
    poller = threading.Thread(target=commit_poller, args=(server.client(), rec, stop_polling))
    for t in (*threads, *side, poller):
        t.start()
    time.sleep(max(0.0, duration - rec.now()))
    for t in side:
        t.join()
    stop.set()
    if rec.failures:
        for t in threads:
            t.join()
        raise SystemExit("load phase failed: " + "; ".join(rec.failures))
    rec.duration = rec.now()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 300
    while any(a["committed"] is None for a in rec.acked) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    stop_polling.set()
    poller.join()
    return rec


def forget_plan(pool: list[int], n: int, duration: float, rng) -> tuple[list[list[int]], list[float]]:
    """n batches of 1-10 ids taken off the front of `pool`, at random moments over 80% of the phase."""
    batches = []
    for _ in range(n):
        k = int(rng.integers(1, 11))
        batches.append([pool.pop() for _ in range(k)])
    return batches, sorted(rng.uniform(0, 0.8 * duration, n).tolist())


# ---------------------------------------------------------------------------- figures


def latency_summary(rec: Record) -> dict:
    import numpy as np

    lat = np.array([p["latency"] for p in rec.predicts]) * 1000
    return {"predicts": len(lat), "errors": len(rec.errors), "connection_errors": rec.connection_errors,
            "forgets_refused": [r["error"] for r in rec.refused],
            "seconds": rec.duration, "throughput_rps": len(lat) / rec.duration,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "error_samples": [e["error"] for e in rec.errors[:3]]}


def original_lineages(store, slices: int) -> dict:
    """(shard, stage) -> the ids that stage's checkpoint saw in the trained run."""
    import numpy as np

    return {(s, r): set(store.ids[(store.shard == s) & (store.slice <= r)].tolist())
            for s in np.unique(store.shard).tolist() for r in range(slices)}


def freshness(rec: Record, initial: dict, entries: list[dict]) -> dict:
    """Predictions whose served stages are not the original lineage less the first k ledger
    requests with k >= the ledger position of every request acknowledged before they started."""
    from sisa.checkpoint import lineage_digest

    entries = sorted(entries, key=lambda e: e["seq"])
    position = {e["seq"]: n + 1 for n, e in enumerate(entries)}
    prefixes = [set()]
    for e in entries:
        prefixes.append(prefixes[-1] | set(e["ids"]))
    expected: dict[tuple, list[int]] = {}
    for (s, r), members in initial.items():
        for k, gone in enumerate(prefixes):
            expected.setdefault((s, r, lineage_digest(sorted(members - gone))), []).append(k)
    acks = sorted((a["ack"], position.get(a["request_id"], len(entries) + 1)) for a in rec.acked)
    ack_times, need = [t for t, _ in acks], []
    for _, pos in acks:
        need.append(max(pos, need[-1] if need else 0))
    unexpected, stale, samples = 0, 0, []
    for p in rec.predicts:
        i = bisect.bisect_left(ack_times, p["start"])  # acknowledged strictly before it started
        k_min = need[i - 1] if i else 0
        bad = []
        for shard, got in p["served"].items():
            ks = expected.get((int(shard), got["stage"], got["ids_digest"]))
            if ks is None:
                bad.append(f"shard {shard} stage {got['stage']}: unknown lineage")
            elif max(ks) < k_min:
                bad.append(f"shard {shard} stage {got['stage']}: saw request {max(ks) + 1}..{k_min} ids")
        unexpected += any("unknown" in b for b in bad)
        stale += any("saw" in b for b in bad)
        if bad and len(samples) < 3:
            samples.append({"start": p["start"], "problems": bad})
    return {"violations": unexpected + stale, "unknown_lineage": unexpected, "saw_acknowledged_ids": stale,
            "checked": len(rec.predicts), "samples": samples}


def first_answer(rec: Record, killed: float) -> float | None:
    """Seconds from a kill to the first prediction sent after it that was answered."""
    ends = [p["start"] + p["latency"] for p in rec.predicts if p["start"] > killed]
    return min(ends) - killed if ends else None


def forget_rows(rec: Record) -> list[dict]:
    return [{"request_id": a["request_id"], "ids": len(a["ids"]), "sent_s": a["sent"], "ack_s": a["ack"],
             "ack_latency_ms": (a["ack"] - a["sent"]) * 1000, "committed_s": a["committed"],
             "to_commit_s": None if a["committed"] is None else a["committed"] - a["ack"]} for a in rec.acked]


# ---------------------------------------------------------------------------- phases


def phase_a(base: Path, tmp: Path, x, args) -> tuple[Record, dict]:
    root = tmp / "phase-a"
    shutil.copytree(base, root)
    server = Server(root, args.batch_window, tmp / "server-a.log")
    try:
        startup = server.start()
        warm_up(server.client(), x)
        rec = run_load(server, x, args, seed=args.seed + 1)
    finally:
        server.stop()
    return rec, {"startup_s": startup}


def phase_b(base: Path, tmp: Path, x, args, pool: list[int], rng) -> tuple[Record, dict, list[dict]]:
    """The load with forgets, then the single-id requests to the same, idle, server."""
    root = tmp / "phase-b"
    shutil.copytree(base, root)
    server = Server(root, args.batch_window, tmp / "server-b.log")
    batches, at = forget_plan(pool, args.forgets, args.duration, rng)
    try:
        startup = server.start()
        client = server.client()
        warm_up(client, x)
        r0, n0 = metric(client, "sisa_retrain_seconds_total"), metric(client, "sisa_retrains_total")
        rec = run_load(server, x, args, seed=args.seed + 2, batches=batches, forget_at=at)
        retrain = {"retrain_seconds": metric(client, "sisa_retrain_seconds_total") - r0,
                   "retrain_passes": metric(client, "sisa_retrains_total") - n0, "startup_s": startup}
        singles = single_id_requests(client, [pool.pop() for _ in range(args.singles)])
    finally:
        server.stop()
    return rec, retrain, singles


def single_id_requests(client, ids: list[int]) -> list[dict]:
    rows = []
    for i in ids:
        deadline = time.monotonic() + 120
        while metric(client, "sisa_pending_requests") > 0 and time.monotonic() < deadline:
            time.sleep(POLL_S)
        time.sleep(0.3)  # the worker back to waiting for a request
        r0 = metric(client, "sisa_retrain_seconds_total")
        sent = time.monotonic()
        n = client.forget([i], request=f"bench-single-{i}")["request_id"]
        ack = time.monotonic()
        while client.request(n)["state"] != "committed":
            if time.monotonic() > deadline:
                raise SystemExit(f"single-id request #{n} not committed within 120 s")
            time.sleep(POLL_S)
        done = time.monotonic()
        rows.append({"id": i, "request_id": n, "ack_latency_ms": (ack - sent) * 1000, "to_commit_s": done - ack,
                     "server_retrain_s": metric(client, "sisa_retrain_seconds_total") - r0})
    return rows


def in_process_forgets(base: Path, tmp: Path, singles: list[dict], spare: int, repeats: int, store) -> None:
    """Add to each single-id row the median seconds of `sisa.forget` of its id on a fresh copy of
    the trained run (no server), and whether the server's 202 -> committed met the target."""
    import numpy as np

    import sisa

    def once(ids) -> float:
        root = tmp / "in-process"
        shutil.copytree(base, root)
        t0 = time.perf_counter()
        sisa.forget(root, ids, progress=False)
        seconds = time.perf_counter() - t0
        shutil.rmtree(root)
        return seconds

    once([spare])  # programs loaded in this process, not timed
    scale, extra = TARGET_COMMIT
    for row in singles:
        at = int(np.searchsorted(store.ids, row["id"]))
        times = [once([row["id"]]) for _ in range(repeats)]
        work = statistics.median(times)
        row |= {"shard": int(store.shard[at]), "slice": int(store.slice[at]), "in_process_s": work,
                "in_process_runs": times, "ratio": row["to_commit_s"] / work, "bound_s": scale * work + extra,
                "within": row["to_commit_s"] <= scale * work + extra}


def phase_faults(base: Path, tmp: Path, x, args, ds, cfg, pool: list[int], rng) -> tuple[Record, dict]:
    import sisa
    from sisa.verification import compare
    from sisa.workdir import Workdir

    root = tmp / "faults"
    shutil.copytree(base, root)
    server = Server(root, args.batch_window, tmp / "server-faults.log")
    d = args.fault_duration
    batches, at = forget_plan(pool, args.forgets, d, rng)
    kill_at = sorted(rng.uniform(0.1 * d, 0.9 * d, args.kills).tolist())
    try:
        server.start()
        client = server.client()
        warm_up(client, x)
        rec = run_load(server, x, args, seed=args.seed + 3, batches=batches, forget_at=at, kill_at=kill_at,
                       duration=d)
        deadline = time.monotonic() + 300  # cut-off requests that did reach the ledger, too
        while any(e["state"] != "committed" for e in client.ledger()["entries"]) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.stop()

    entries = sisa.ledger(root)["entries"]
    by_ids = {tuple(sorted(e["ids"])): e for e in entries}
    acked_in = [tuple(sorted(a["ids"])) in by_ids and by_ids[tuple(sorted(a["ids"]))]["seq"] == a["request_id"]
                for a in rec.acked]
    cut_off = {tuple(sorted(u["ids"])) for u in rec.unacked}
    strangers = [e["seq"] for e in entries
                 if tuple(sorted(e["ids"])) not in cut_off | {tuple(sorted(a["ids"])) for a in rec.acked}]
    forgotten = sorted({i for e in entries for i in e["ids"]})
    scratch = tmp / "scratch"
    sisa.train(scratch, cfg, dataset=ds.without(forgotten), progress=False)
    same = compare(Workdir.open(root), Workdir.open(scratch))
    out = {"kills": len(rec.kills), "kill_times": rec.kills, "connection_errors": rec.connection_errors,
           "acknowledged": len(rec.acked), "cut_off": len(rec.unacked), "refused": [r["error"] for r in rec.refused],
           "cut_off_in_ledger": sum(tuple(sorted(u["ids"])) in by_ids for u in rec.unacked),
           "acknowledged_in_ledger": all(acked_in), "all_committed": all(e["state"] == "committed" for e in entries),
           "unexplained_ledger_entries": strangers, "ids_forgotten": len(forgotten),
           "identical_to_scratch": same["identical"], "per_shard": same["per_shard"],
           "restart_s": [k["up"] - k["killed"] for k in rec.kills],
           "first_answer_s": [first_answer(rec, k["killed"]) for k in rec.kills]}
    out["ok"] = (out["acknowledged_in_ledger"] and out["all_committed"] and not strangers and not rec.refused
                 and out["identical_to_scratch"])
    return rec, out


# ---------------------------------------------------------------------------- output


def plot(out: dict, records: dict, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("(no plot: matplotlib is not installed)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5))
    for ax, name, title in ((axes[0], "B", "phase B: forgets (202 green, committed red)"),
                            (axes[1], "faults", "faults: forgets and kill -9 (black)")):
        rec = records[name]
        ax.scatter([p["start"] for p in rec.predicts], [p["latency"] * 1000 for p in rec.predicts], s=3, alpha=0.5)
        for a in rec.acked:
            ax.axvline(a["ack"], color="tab:green", lw=0.7, ls="--")
            if a["committed"] is not None:
                ax.axvline(a["committed"], color="tab:red", lw=0.7, ls=":")
        for k in rec.kills:
            ax.axvspan(k["killed"], k["up"], color="black", alpha=0.15)
        ax.set_yscale("log")
        ax.set_ylabel("predict latency, ms")
        ax.set_title(title, fontsize=10)
    axes[1].set_xlabel("seconds since the phase started")
    benchlib.save_figure(fig, path)


def print_table(out: dict) -> None:
    c = out["config"]
    print(f"== sisa serve on loopback: mnist5k, {c['shards']} shards x {c['slices']} slices, {c['clients']} clients x "
          f"{c['rows']} rows, D={c['duration_s']:g} s, batch window {c['batch_window_s']:g} s"
          f"{' (quick)' if c['quick'] else ''}, {c['cpus']} CPUs")
    print(f"{'phase':<24} {'predicts':>8} {'errors':>6} {'conn err':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'violations':>10}")
    for name, label in (("A", "A  no forgets"), ("B", f"B  {c['forgets']} forgets"),
                        ("faults", f"faults  {c['forgets']} f., {c['kills']} kills")):
        p, f = out["phases"][name], out["freshness"][name]
        print(f"{label:<24} {p['predicts']:>8} {p['errors']:>6} {p['connection_errors']:>8} "
              f"{p['throughput_rps']:>7.1f} {p['p50_ms']:>8.1f} {p['p99_ms']:>8.1f} {f['violations']:>10}")
    print(f"p99(B)/p99(A) = {out['p99_ratio']:.2f} (target <= {TARGET_P99_RATIO:g}: "
          f"{'met' if out['p99_ratio'] <= TARGET_P99_RATIO else 'NOT met'}); "
          f"B retrained {out['phases']['B']['retrain_passes']:.0f} times, "
          f"{out['phases']['B']['retrain_seconds']:.1f} s")

    print("\nforget requests in B (seconds since the phase started)")
    print(f"{'#':>4} {'ids':>4} {'sent':>7} {'sent->202 ms':>12} {'committed':>9} {'202->committed s':>16}")
    for r in out["forgets_B"]:
        done = "-" if r["committed_s"] is None else f"{r['committed_s']:.2f}"
        wait = "-" if r["to_commit_s"] is None else f"{r['to_commit_s']:.2f}"
        print(f"{r['request_id']:>4} {r['ids']:>4} {r['sent_s']:>7.2f} {r['ack_latency_ms']:>12.1f} {done:>9} "
              f"{wait:>16}")
    waits = [r["to_commit_s"] for r in out["forgets_B"] if r["to_commit_s"] is not None]
    if waits:
        print(f"202->committed: median {statistics.median(waits):.2f} s, max {max(waits):.2f} s")
    for name in ("A", "B"):
        for e in out["phases"][name]["error_samples"] + out["phases"][name]["forgets_refused"]:
            print(f"  error ({name}): {e}")

    scale, extra = TARGET_COMMIT
    print(f"\nsingle-id requests to the idle server vs in-process sisa.forget of the same id "
          f"(median of {c['repeats']}); target 202->committed <= {scale:g}x + {extra:g} s")
    print(f"{'id':>5} {'shard':>5} {'slice':>5} {'202->commit s':>13} {'- window':>8} {'server retrain s':>16} "
          f"{'in-process s':>12} {'ratio':>6} {'bound s':>7}  within")
    for r in out["single_id"]:
        print(f"{r['id']:>5} {r['shard']:>5} {r['slice']:>5} {r['to_commit_s']:>13.3f} "
              f"{r['to_commit_s'] - c['batch_window_s']:>8.3f} {r['server_retrain_s']:>16.3f} "
              f"{r['in_process_s']:>12.3f} {r['ratio']:>6.2f} {r['bound_s']:>7.3f}  {'yes' if r['within'] else 'NO'}")

    f, fz = out["faults"], out["freshness"]["faults"]
    print(f"\nfaults: {f['kills']} kill -9 + restart in {c['fault_duration_s']:g} s of load "
          f"(kill -> /healthz {', '.join(f'{s:.1f}' for s in f['restart_s'])} s; kill -> next prediction answered "
          f"{', '.join('-' if s is None else f'{s:.1f}' for s in f['first_answer_s'])} s); "
          f"{f['connection_errors']} connection errors; "
          f"{f['acknowledged']} requests acknowledged, {f['cut_off']} cut off ({f['cut_off_in_ledger']} of them in the "
          f"ledger)")
    print(f"  acknowledged all in the ledger: {f['acknowledged_in_ledger']}; all committed: {f['all_committed']}; "
          f"unexplained ledger entries: {f['unexplained_ledger_entries'] or 'none'}; identical to training without "
          f"the {f['ids_forgotten']} ids: {f['identical_to_scratch']}; freshness violations: {fz['violations']} "
          f"of {fz['checked']} predictions")
    for e in f["refused"] + out["phases"]["faults"]["error_samples"]:
        print(f"  error (faults): {e}")
    for name, fr in out["freshness"].items():
        for s in fr["samples"]:
            print(f"  violation ({name}): {s}")
    verdict = {name: "met" if ok else "NOT met" for name, ok in out["targets"].items()}
    print(f"\ntargets: p99 ratio {verdict['p99_ratio']}; single-id commit {verdict['single_id_commit']}; "
          f"freshness {verdict['freshness']}; faults {verdict['faults']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load in phases A and B (default: 60)")
    ap.add_argument("--forgets", type=int, default=30, help="forget requests in phase B and the fault phase")
    ap.add_argument("--clients", type=int, default=8, help="prediction threads (default: 8)")
    ap.add_argument("--rows", type=int, default=32, help="test rows per prediction (default: 32)")
    ap.add_argument("--fault-duration", type=float, default=20.0, help="seconds of load with kills (default: 20)")
    ap.add_argument("--kills", type=int, default=10, help="kill -9 of the server in the fault phase (default: 10)")
    ap.add_argument("--singles", type=int, default=5, help="single-id requests to the idle server (default: 5)")
    ap.add_argument("--repeats", type=int, default=3, help="in-process forgets per single id (median; default: 3)")
    ap.add_argument("--batch-window", type=float, default=0.5, help="the server's --batch-window (default: 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="D=15 s, 8 forgets, faults 10 s with 3 kills (~1-2 min)")
    benchlib.output_flags(ap, "write a PNG of prediction latency over time (phase B and faults) here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.forgets, args.fault_duration, args.kills = 15.0, 8, 10.0, 3

    with tempfile.TemporaryDirectory(prefix="sisa-bench-service-") as tmp:
        out, records = run(args, Path(tmp))
    if benchlib.finish(out, args, lambda path: plot(out, records, path)):
        return 0
    print_table(out)
    return 0


def run(args, tmp: Path) -> tuple[dict, dict]:
    import numpy as np

    import sisa
    from sisa.data import datasets
    from sisa.workdir import Workdir

    ds, cfg = datasets.load("mnist5k"), sisa.Config()
    base = tmp / "trained"
    print("training mnist5k into a temporary directory ...", file=sys.stderr)
    sisa.train(base, cfg, dataset=ds, progress=False)
    wd = Workdir.open(base)
    store, x = wd.store(), wd.test_split()[0]
    initial = original_lineages(store, cfg.partition.slices)
    rng = np.random.default_rng(args.seed)
    pool = rng.permutation(store.ids).tolist()  # never forgotten before, in this run's copies

    print(f"phase A: {args.duration:g} s of predictions ...", file=sys.stderr)
    rec_a, info_a = phase_a(base, tmp, x, args)
    print(f"phase B: {args.duration:g} s of predictions and {args.forgets} forgets, then {args.singles} single ids ...",
          file=sys.stderr)
    rec_b, retrain_b, singles = phase_b(base, tmp, x, args, pool, rng)
    in_process_forgets(base, tmp, singles, pool.pop(), args.repeats, store)
    print(f"faults: {args.fault_duration:g} s of load with {args.kills} kills, then training from scratch ...",
          file=sys.stderr)
    fault_pool = rng.permutation(store.ids).tolist()
    rec_f, faults = phase_faults(base, tmp, x, args, ds, cfg, fault_pool, rng)

    phases = {"A": latency_summary(rec_a) | info_a, "B": latency_summary(rec_b) | retrain_b,
              "faults": latency_summary(rec_f)}
    freshness_ = {"A": freshness(rec_a, initial, []),
                  "B": freshness(rec_b, initial, sisa.ledger(tmp / "phase-b")["entries"]),
                  "faults": freshness(rec_f, initial, sisa.ledger(tmp / "faults")["entries"])}
    ratio = phases["B"]["p99_ms"] / phases["A"]["p99_ms"]
    out = {"config": {"dataset": "mnist5k", "shards": cfg.partition.shards, "slices": cfg.partition.slices,
                      "clients": args.clients, "rows": args.rows, "duration_s": args.duration,
                      "forgets": args.forgets, "fault_duration_s": args.fault_duration, "kills": args.kills,
                      "singles": args.singles, "repeats": args.repeats, "batch_window_s": args.batch_window,
                      "seed": args.seed, "quick": args.quick, "cpus": os.cpu_count(),
                      "python": sys.version.split()[0]},
           "phases": phases, "p99_ratio": ratio, "freshness": freshness_, "forgets_B": forget_rows(rec_b),
           "single_id": singles, "faults": faults, "forgets_faults": forget_rows(rec_f),
           "latency_B": [[round(p["start"], 4), round(p["latency"], 5)] for p in rec_b.predicts],
           "latency_faults": [[round(p["start"], 4), round(p["latency"], 5)] for p in rec_f.predicts]}
    out["targets"] = {"p99_ratio": ratio <= TARGET_P99_RATIO, "single_id_commit": all(r["within"] for r in singles),
                      "freshness": all(f["violations"] == 0 for f in freshness_.values()), "faults": faults["ok"]}
    return out, {"A": rec_a, "B": rec_b, "faults": rec_f}


if __name__ == "__main__":
    sys.exit(main())
