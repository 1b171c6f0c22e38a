"""`sisa serve`: a live model that forgets on request (Starlette on uvicorn).

One server per workdir: it holds the workdir's writer lock for its whole life, so no other
sisa command writes while it runs (readers still may). Three kinds of work share the process:

* predictions, one at a time, from constituents read once and kept while the workdir does
  not change (`serve.version`); a shard whose retraining is pending answers from its newest
  stage that saw none of the forgotten ids (sisa.serve.constituents);
* acknowledgements: a forget request is checked, appended to the ledger (fsync'ed) and only
  then answered 202. The append waits for the prediction in flight and every later prediction
  rereads the workdir, so from the moment the answer leaves, no prediction uses a checkpoint
  that saw the ids. An acknowledged request survives a crash: the next server (or any writing
  sisa command) finishes it;
* one retraining worker: woken by a request, it waits `batch_window` seconds for more, then
  runs the reconciler once for every pending request (one retrain per affected shard for the
  whole batch), writing only through the same ledger (appends are serialised by its lock).

Auth: every endpoint but /healthz and the status page's HTML (which holds no data; its script
reads the token from the page's URL fragment) needs `Authorization: Bearer <token>`, and
/v1/predict too unless `open_predict`. Without a token the server only listens on loopback.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import json
import logging
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from sisa.errors import SisaError

LOOPBACK = ("127.0.0.1", "::1", "localhost")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATUS_FOR_KIND = {"bad_input": 422, "usage": 422, "not_found": 404, "busy": 409, "unavailable": 503, "corrupted": 500,
                   "environment": 500, "os_error": 500, "internal": 500}
log = logging.getLogger("sisa.service")


class Metrics:
    """Counters and latency histograms, in the Prometheus text format."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = collections.Counter()  # (endpoint, status) -> count
        self.latency = collections.defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # endpoint -> bucket counts
        self.latency_sum = collections.Counter()
        self.retrain_seconds = 0.0
        self.retrains = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[endpoint, status] += 1
            buckets = self.latency[endpoint]
            buckets[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
            self.latency_sum[endpoint] += seconds

    def retrained(self, seconds: float) -> None:
        with self._lock:
            self.retrain_seconds += seconds
            self.retrains += 1

    def text(self, pending: int) -> str:
        with self._lock:
            out = ["# HELP sisa_requests_total HTTP requests by endpoint and status.",
                   "# TYPE sisa_requests_total counter"]
            out += [f'sisa_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())]
            out += ["# HELP sisa_request_seconds HTTP request latency.", "# TYPE sisa_request_seconds histogram"]
            for e, buckets in sorted(self.latency.items()):
                total = 0
                for b, n in zip((*LATENCY_BUCKETS, "+Inf"), buckets):
                    total += n
                    out.append(f'sisa_request_seconds_bucket{{endpoint="{e}",le="{b}"}} {total}')
                out += [f'sisa_request_seconds_sum{{endpoint="{e}"}} {self.latency_sum[e]:.6f}',
                        f'sisa_request_seconds_count{{endpoint="{e}"}} {total}']
            out += ["# HELP sisa_retrain_seconds_total Seconds spent retraining for forget requests.",
                    "# TYPE sisa_retrain_seconds_total counter", f"sisa_retrain_seconds_total {self.retrain_seconds:.6f}",
                    "# HELP sisa_retrains_total Retraining passes (each for every request pending then).",
                    "# TYPE sisa_retrains_total counter", f"sisa_retrains_total {self.retrains}",
                    "# HELP sisa_pending_requests Forget requests acknowledged and not yet committed.",
                    "# TYPE sisa_pending_requests gauge", f"sisa_pending_requests {pending}"]
        return "\n".join(out) + "\n"


class FairLock:
    """A lock granted in the order it was asked for: an acknowledgement waiting behind predictions
    is not overtaken by the ones asked for after it (threading.Lock makes no such promise)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._next = self._serving = 0

    def __enter__(self):
        with self._cond:
            ticket, self._next = self._next, self._next + 1
            self._cond.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc):
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class Service:
    """The workdir's writer for as long as the server runs (see the module doc)."""

    def __init__(self, root, *, batch_window: float = 2.0):
        from sisa import runtime
        from sisa.workdir import Workdir

        runtime.setup()
        self.root = Path(root)
        self.wd = Workdir.open(self.root)
        self._held = self.wd.lock()
        self._held.__enter__()  # WorkdirBusy if another writer has it
        self.batch_window = batch_window
        self.metrics = Metrics()
        self.serving = FairLock()  # one prediction at a time; an acknowledgement waits for the one in flight
        self.acknowledging = threading.Lock()  # one request checked and recorded at a time
        self._wake, self._stop = threading.Event(), threading.Event()
        self._cache: tuple | None = None  # (version, reader Workdir, constituents)
        self._restored: dict = {}  # the stage each shard serves, reused while its files stay (serve.constituents)
        self._last_pass = -float("inf")  # when the worker's last pass ended (time.monotonic)
        self.ready = False  # models read and the serving program loaded: /readyz says so
        self._busy = False  # the worker is in a pass
        self.additions: dict[int, dict] = {}  # POST /v1/add's, by number
        self._adds_seen = len(self.wd.ledger().additions())  # numbers go on from the adds before
        self.worker_error: str | None = None
        self.worker = threading.Thread(target=self._work, name="sisa-retrain", daemon=True)

    def start(self) -> None:
        self._wake.set()  # the first pass finishes whatever an earlier server left acknowledged
        self.worker.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.worker.is_alive():
            self.worker.join()
        self._held.__exit__(None, None, None)

    # retraining

    def _work(self) -> None:
        """Retraining passes. A request reaching an idle server (no pass in the last
        `batch_window` seconds) starts one at once; requests arriving during a pass, or within the
        window after it, wait for the window to end and are retrained together in one pass."""
        from sisa import reconcile

        self._warm_up()
        while not self._stop.is_set():
            self._wake.wait()
            wait = self._last_pass + self.batch_window - time.monotonic()
            if self._stop.wait(max(wait, 0.0)):
                return
            self._wake.clear()
            self._busy = True
            t0 = time.perf_counter()
            try:
                self._add_staged()
                done = reconcile.reconcile(self.wd, progress=False, gate=self._turn)
                self.worker_error = None
                if done["trained"]["shards_trained"] or done["committed"]:
                    self.metrics.retrained(time.perf_counter() - t0)
            except Exception as e:  # served on at once from the safe stages; tried again on the next request
                self.worker_error = f"{type(e).__name__}: {e}"
                log.error("retraining failed: %s", self.worker_error)
            finally:
                self._last_pass = time.monotonic()
                self._busy = False

    def _turn(self):
        """Held around each training epoch: predictions queued on the same lock go first, so a
        retraining delays a prediction by at most one epoch, and slows down while they come."""
        return self.serving

    def _warm_up(self) -> None:
        """Read the models and load the serving program before the first prediction needs them."""
        from sisa.training.ensemble import ensemble_for, serving_lanes

        try:
            with self.serving:
                wd, _ = self._reader()
                ensemble_for(wd.trainer).precompile_probabilities(serving_lanes(wd.config.partition.shards))
        except Exception as e:  # the first prediction reports it
            log.error("warming up failed: %s: %s", type(e).__name__, e)
        self.ready = True

    def idle(self) -> bool:
        """No request pending, nothing staged to add, and the worker waiting (its last pass fully done)."""
        return (not self._busy and not self._wake.is_set() and not self.wd.ledger().pending()
                and not self._staged())

    # reads

    def _reader(self):
        """(reader Workdir, constituents) for the workdir as it is now, read again only when it changed."""
        from sisa import serve
        from sisa.workdir import Workdir

        version = serve.version(self.wd, stages=True)
        if self._cache is None or self._cache[0] != version:
            wd = Workdir.open(self.root)
            self._cache = (version, wd, serve.constituents(wd, self._restored))
        return self._cache[1], self._cache[2]

    def predict(self, inputs, aggregation: str | None = None) -> dict:
        from sisa import serve

        with self.serving, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", serve.InputRangeWarning)
            wd, members = self._reader()
            x = inputs if wd.trainer.vocab_size else np.asarray(inputs)
            out = serve.predict(wd, x, aggregation, members)
        # Said in the answer, not in the server's log: e.g. inputs in other units than the training data's.
        return out | {"warnings": [str(w.message) for w in caught if issubclass(w.category, serve.InputRangeWarning)]}

    def served(self) -> dict:
        with self.serving:
            _, members = self._reader()
            return {"served": members.served, "pending": members.pending, "empty": members.empty}

    # writes

    def forget(self, ids=None, group=None, request: str | None = None, reason: str | None = None) -> dict:
        """Check and record a request (ids, or every example of a group); retraining follows in the
        background. Returns its ledger entry once it is durable."""
        from sisa.unlearn import exact

        if (ids is None) == (group is None):
            raise SisaError("give either \"ids\" or \"group\"", kind="bad_input")
        for name, value in (("request", request), ("reason", reason)):
            if value is not None and not isinstance(value, str):
                raise SisaError(f"{name} must be a string", kind="bad_input")
        with self.acknowledging:
            if group is not None:
                if not isinstance(group, (str, int)) or isinstance(group, bool):
                    raise SisaError("group must be a string or an integer", kind="bad_input")
                ids = exact.group_ids(self.wd, group)
            if not isinstance(ids, list):
                raise SisaError("ids must be a list of integers", kind="bad_input")
            ids = exact.parse_ids(ids)
            exact.check_forgettable(self.wd, ids)
            shards = exact.affected(self.wd.store(), ids)
            with self.serving:  # no prediction in flight while the request becomes acknowledged
                entry = self.wd.ledger().request(ids, shards, request=request, reason=reason)
                self._cache = None
        self._wake.set()
        return entry

    def add(self, payload: dict) -> dict:
        """Check new examples, stage them on disk (fsync'ed) and answer; the worker adds them (one
        arrival each) before its next pass. Staged additions survive a crash: the next server adds them."""
        from sisa import adding
        from sisa.fsutil import atomic_save_npz

        with self.acknowledging:
            ds = self._examples(payload)
            adding.check(self.wd, self.wd.store(), ds)
            staged = sorted(self._staged())
            n = max([int(p.stem.split("-")[1]) for p in staged], default=self._adds_seen) + 1
            self._adds_seen = n
            arrays = {"x": ds.x, "y": ds.y, "id": ds.ids} | ({} if ds.groups is None else {"group": ds.groups})
            atomic_save_npz(self.wd.root / "data" / f".add-{n:06d}.npz", **arrays)
            self.additions[n] = {"request_id": n, "state": "staged", "examples": len(ds.ids)}
        self._wake.set()
        return self.additions[n]

    def _staged(self) -> list[Path]:
        return list((self.wd.root / "data").glob(".add-*.npz"))

    def _examples(self, payload: dict):
        """A Dataset of the examples in `payload`: {"ids", "x", "y"[, "group"]}, or for a text run
        {"ids", "text"[, "label"]} (tokenized as the run's data)."""
        unknown = set(payload) - {"ids", "x", "y", "group", "text", "label"}
        if unknown:
            raise SisaError(f"unknown field(s) {sorted(unknown)}", kind="bad_input")
        ids = payload.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise SisaError('"ids" must be a non-empty list of integers', kind="bad_input")
        m = self.wd.manifest["dataset"]
        try:
            if m.get("vocab_size"):
                from sisa.data import text as text_lib

                texts = payload.get("text")
                if not isinstance(texts, list) or len(texts) != len(ids) or not all(isinstance(t, str) for t in texts):
                    raise SisaError('"text" must be a list of strings, one per id', kind="bad_input")
                text_lib.check_documents(texts, ids, "the examples to add")
                tok = text_lib.tokenizer(self.wd.config.data.tokenizer)
                text_lib.check_tokenizer(m["tokenizer"], tok)
                x, _ = text_lib.encode_rows(texts, tok, m["input_shape"][0])
                labels = payload.get("label")
                names = m.get("label_names")
                if m.get("task") == "lm":
                    y = np.zeros(len(ids), np.int32)
                elif names:
                    if not isinstance(labels, list) or any(v not in names for v in labels):
                        raise SisaError(f'"label" must be a list of this run\'s labels {names}', kind="bad_input")
                    y = np.asarray([names.index(v) for v in labels], np.int32)
                else:
                    y = np.asarray(labels, np.int32)
            else:
                x = np.asarray(payload.get("x"), dtype=self.wd.store().x.dtype)
                y = np.asarray(payload.get("y"), dtype=np.int32)
            group = payload.get("group")
            return self._added(x, y, np.asarray(ids, np.int64), None if group is None else np.asarray(group, np.int64))
        except SisaError:
            raise
        except (ValueError, TypeError) as e:
            raise SisaError(f"examples to add do not fit the run's data: {e}", kind="bad_input") from None

    def _added(self, x, y, ids, groups):
        """A Dataset of examples to add, with the run's facts (classes, scale, text settings)."""
        from sisa.data.datasets import Dataset

        m = self.wd.manifest["dataset"]
        ds = Dataset("added", x, y, ids, x[:0], y[:0], m["num_classes"], groups=groups, scale=m["scale"])
        return dataclasses.replace(ds, vocab_size=m.get("vocab_size"), task=m.get("task", "classify"),
                                   tokenizer=m.get("tokenizer"))

    def _add_staged(self) -> None:
        """Add every staged batch, oldest first (the worker's, before its pass)."""
        from sisa import adding
        from sisa.data.store import read_arrays

        for path in sorted(self._staged()):
            n = int(path.stem.split("-")[1])
            a = read_arrays(path, ["x", "y", "id", "group"], "staged examples", optional=("group",))
            ds = self._added(a["x"], a["y"], a["id"], a.get("group"))
            entry = self.additions.setdefault(n, {"request_id": n, "examples": len(ds.ids)})
            try:
                out = adding.add(self.wd, ds, progress=False, gate=self._turn)
                entry.update(state="added", arrival=out["arrival"], stage=out["stage"])
            except SisaError as e:  # e.g. an id forgotten or added meanwhile: refused, said in its state
                entry.update(state="refused", error=str(e))
            path.unlink()

    def request(self, seq: int) -> dict:
        entry = next((e for e in self.wd.ledger().entries() if e["seq"] == seq), None)
        if entry is None:
            raise SisaError(f"no request #{seq}", kind="not_found")
        return {"request_id": seq, "state": entry["state"], "affected_shards": sorted(int(s) for s in entry["affected"]),
                "ids": len(entry["ids"]), "request": entry["request"], "reason": entry["reason"],
                "times": entry["times"], "hash": entry["hash"]}

    def status(self) -> dict:
        from sisa import api

        from sisa.workdir import Workdir

        out = api.status(self.root)
        out["serving"] = self.served()
        out["stages_on_disk"] = {c.shard: c.stages() for c in Workdir.open(self.root).checkpoints}
        out["pending_request_states"] = [self.request(seq) for seq in out["pending_requests"]]
        out["worker"] = {"error": self.worker_error, "idle": self.idle()}
        out["ledger_head"] = api.ledger(self.root)["anchor"]
        return out


# HTTP

def app(service: Service, *, token: str | None = None, open_predict: bool = False, max_body: int = 16 << 20,
        body_timeout: float = 10.0):
    """The Starlette application around `service`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from sisa.cli import _jsonable

    public = {"/healthz", "/readyz", "/"} | ({"/v1/predict"} if open_predict else set())

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": message, "kind": kind}, status_code=status)

    async def body(request) -> dict:
        """The request's JSON object, read within `body_timeout` seconds and `max_body` bytes."""
        if int(request.headers.get("content-length") or 0) > max_body:
            raise _HTTPError(413, f"body larger than {max_body} bytes", "bad_input")
        chunks, size = [], 0

        async def read():
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body:
                    raise _HTTPError(413, f"body larger than {max_body} bytes", "bad_input")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), body_timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(408, f"body not received within {body_timeout} s", "bad_input") from None
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise _HTTPError(400, f"body is not JSON: {e}", "bad_input") from None
        if not isinstance(data, dict):
            raise _HTTPError(400, "body must be a JSON object", "bad_input")
        return data

    def endpoint(name: str, fn):
        async def handle(request):
            t0 = time.perf_counter()
            try:
                if request.url.path not in public and not _authorized(request, token):
                    response = error(401, "missing or wrong bearer token", "usage")
                else:
                    response = await fn(request)
            except _HTTPError as e:
                response = error(e.status, e.message, e.kind)
            except SisaError as e:
                kind = getattr(e, "kind", None) or "bad_input"
                response = error(STATUS_FOR_KIND.get(kind, 422), str(e), kind)
            except Exception as e:  # a bug: the server keeps serving
                log.exception("internal error on %s", name)
                response = error(500, f"internal error: {type(e).__name__}", "internal")
            service.metrics.observe(name, response.status_code, time.perf_counter() - t0)
            return response
        return handle

    class JSON(JSONResponse):
        def render(self, content) -> bytes:  # numpy values too, as the CLI's --json prints them
            return json.dumps(content, default=_jsonable, separators=(",", ":")).encode()

    def as_json(obj, status: int = 200) -> JSONResponse:
        return JSON(obj, status_code=status)

    async def predict(request):
        data = await body(request)
        if "inputs" not in data:
            raise _HTTPError(422, 'body needs "inputs": a list of examples', "bad_input")
        inputs = data["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise _HTTPError(422, '"inputs" must be a non-empty list', "bad_input")
        aggregation = data.get("aggregation")
        try:
            out = await run_in_threadpool(service.predict, inputs, aggregation)
        except (ValueError, TypeError) as e:  # ragged or non-numeric nested lists
            raise _HTTPError(422, f"inputs are not an array of the model's input shape: {e}", "bad_input") from None
        return as_json(out)

    async def forget(request):
        data = await body(request)
        unknown = set(data) - {"ids", "group", "request", "reason"}
        if unknown:
            raise _HTTPError(422, f"unknown field(s) {sorted(unknown)}", "bad_input")
        entry = await run_in_threadpool(service.forget, data.get("ids"), data.get("group"), data.get("request"),
                                        data.get("reason"))
        return as_json({"request_id": entry["seq"], "state": entry["state"],
                        "affected_shards": sorted(int(s) for s in entry["affected"]), "ids": len(entry["ids"])}, 202)

    async def add(request):
        data = await body(request)
        return as_json(await run_in_threadpool(service.add, data), 202)

    async def add_state(request):
        try:
            entry = service.additions[int(request.path_params["n"])]
        except (ValueError, KeyError):
            raise _HTTPError(404, "no such addition", "not_found") from None
        return as_json(entry)

    async def request_state(request):
        try:
            seq = int(request.path_params["seq"])
        except ValueError:
            raise _HTTPError(404, "request ids are integers", "not_found") from None
        return as_json(await run_in_threadpool(service.request, seq))

    async def status(request):
        return as_json(await run_in_threadpool(service.status))

    async def ledger(request):
        from sisa import api

        return as_json(await run_in_threadpool(api.ledger, service.root))

    async def certificate(request):
        from sisa import api

        shards = request.query_params.get("shards")
        chosen = None if not shards else [int(s) for s in shards.split(",") if s.strip().isdigit()]
        return as_json(await run_in_threadpool(lambda: api.verify(service.root, chosen, progress=False)))

    async def healthz(request):
        return as_json({"ok": True, "ready": service.ready, "worker_error": service.worker_error})

    async def readyz(request):  # for a load balancer: 503 until the models are read
        return as_json({"ready": service.ready}, 200 if service.ready else 503)

    async def metrics(request):
        pending = len(service.wd.ledger().pending())
        return PlainTextResponse(service.metrics.text(pending), media_type="text/plain; version=0.0.4")

    async def page(request):
        return HTMLResponse(STATUS_PAGE)

    routes = [
        Route("/v1/predict", endpoint("predict", predict), methods=["POST"]),
        Route("/v1/forget", endpoint("forget", forget), methods=["POST"]),
        Route("/v1/requests/{seq}", endpoint("requests", request_state), methods=["GET"]),
        Route("/v1/add", endpoint("add", add), methods=["POST"]),
        Route("/v1/adds/{n}", endpoint("adds", add_state), methods=["GET"]),
        Route("/v1/status", endpoint("status", status), methods=["GET"]),
        Route("/v1/ledger", endpoint("ledger", ledger), methods=["GET"]),
        Route("/v1/certificate", endpoint("certificate", certificate), methods=["GET"]),
        Route("/healthz", endpoint("healthz", healthz), methods=["GET"]),
        Route("/readyz", endpoint("readyz", readyz), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics), methods=["GET"]),
        Route("/", endpoint("page", page), methods=["GET"]),
    ]
    return Starlette(routes=routes)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _authorized(request, token: str | None) -> bool:
    if token is None:
        return True  # loopback only (see `serve`)
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def read_token(token_file: str | None, environ: dict) -> str | None:
    """The bearer token from `token_file` (first line) or SISA_TOKEN; None when neither is set."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise SisaError(f"cannot read token file {token_file}: {e.strerror or e}", kind="bad_input") from None
        if not token:
            raise SisaError(f"token file {token_file} is empty", kind="bad_input")
        return token
    return environ.get("SISA_TOKEN") or None


def serve(root, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, batch_window: float = 2.0,
          open_predict: bool = False, max_body: int = 16 << 20) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM)."""
    import uvicorn

    if token is None and host not in LOOPBACK:
        raise SisaError(f"refusing to listen on {host} without a token: give --token-file or SISA_TOKEN, or listen "
                        "on 127.0.0.1", kind="usage")
    service = Service(root, batch_window=batch_window)
    service.start()
    try:
        uvicorn.run(app(service, token=token, open_predict=open_predict, max_body=max_body), host=host, port=port,
                    log_level="warning", timeout_keep_alive=5, timeout_graceful_shutdown=5)
    finally:
        service.close()


STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sisa serve</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 2em; color: #222 }
 table { border-collapse: collapse } td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: center }
 td.served { background: #4caf50; color: white } td.clean { background: #c8e6c9 }
 td.missing { background: #ffe0b2 } .mono { font-family: monospace }
</style></head>
<body>
<h1>sisa serve</h1>
<p id="summary">loading...</p>
<table id="shards"></table>
<h2>Pending requests</h2><ul id="pending"></ul>
<p>Ledger head: <span id="head" class="mono"></span></p>
<p id="error" style="color: #b00"></p>
<script>
// The token comes from the URL fragment (#token=...), never sent to the server as part of the URL.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
async function refresh() {
  try {
    const r = await fetch("/v1/status", {headers});
    if (!r.ok) throw new Error((await r.json()).error);
    const s = await r.json();
    document.getElementById("summary").textContent =
      `${s.shards} shards x ${s.slices} slices, ${s.examples} examples, ${s.requests} requests, ${s.deleted} ids forgotten`;
    const table = document.getElementById("shards");
    table.replaceChildren();
    const head = table.insertRow();
    head.insertCell().textContent = "shard";
    for (let r = 0; r < s.stages; r++) head.insertCell().textContent = "stage " + r;
    for (let k = 0; k < s.shards; k++) {
      const row = table.insertRow();
      row.id = "shard-" + k;
      row.insertCell().textContent = k;
      const onDisk = new Set(s.stages_on_disk[k]);
      const served = s.serving.served[k];
      for (let r = 0; r < s.stages; r++) {
        const cell = row.insertCell();
        const state = served && served.stage === r ? "served" : onDisk.has(r) ? "clean" : "missing";
        cell.className = state;
        cell.textContent = state === "missing" ? "retraining" : state;
      }
    }
    const list = document.getElementById("pending");
    list.replaceChildren(...s.pending_request_states.map(p => {
      const li = document.createElement("li");
      li.textContent = `#${p.request_id}: ${p.state}, shards ${p.affected_shards.join(", ")}`;
      return li;
    }));
    document.getElementById("head").textContent = s.ledger_head;
    document.getElementById("error").textContent = s.worker.error || "";
  } catch (e) {
    document.getElementById("error").textContent = String(e);
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"""
