"""A small client of `sisa serve`, with the same operations (standard library only).

    client = sisa.Client("http://127.0.0.1:8080", token)
    client.predict(x)["labels"]
    n = client.forget([17, 42], request="erasure-2026-0042")["request_id"]
    client.wait(n)["state"]   # "committed"
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np

from sisa.errors import SisaError


class Client:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())
            except ValueError:
                err = {"error": e.reason, "kind": "internal"}
            raise SisaError(f"{method} {path}: {e.code} {err.get('error')}", kind=err.get("kind")) from None
        except (urllib.error.URLError, OSError) as e:
            raise SisaError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}", kind="os_error") from None
        return json.loads(raw) if raw.startswith((b"{", b"[")) else {"text": raw.decode()}

    def predict(self, inputs, aggregation: str | None = None) -> dict:
        """Inputs: an array (sent as nested lists) or a list of texts."""
        inputs = np.asarray(inputs).tolist() if isinstance(inputs, np.ndarray) else list(inputs)
        body = {"inputs": inputs} | ({"aggregation": aggregation} if aggregation else {})
        return self._call("POST", "/v1/predict", body)

    def forget(self, ids=None, *, group=None, request: str | None = None, reason: str | None = None) -> dict:
        body = {"ids": None if ids is None else [int(i) for i in ids], "group": group, "request": request,
                "reason": reason}
        return self._call("POST", "/v1/forget", {k: v for k, v in body.items() if v is not None})

    def request(self, request_id: int) -> dict:
        return self._call("GET", f"/v1/requests/{int(request_id)}")

    def wait(self, request_id: int, *, timeout: float = 600.0, poll: float = 0.05) -> dict:
        """The request's state once it is committed (SisaError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while (r := self.request(request_id))["state"] != "committed":
            if time.monotonic() > deadline:
                raise SisaError(f"request #{request_id} not committed within {timeout} s (state {r['state']})")
            time.sleep(poll)
        return r

    def status(self) -> dict:
        return self._call("GET", "/v1/status")

    def ledger(self) -> dict:
        return self._call("GET", "/v1/ledger")

    def certificate(self, shards=None) -> dict:
        query = "" if shards is None else "?shards=" + ",".join(str(int(s)) for s in shards)
        return self._call("GET", "/v1/certificate" + query)

    def healthz(self) -> dict:
        return self._call("GET", "/healthz")

    def metrics(self) -> str:
        return self._call("GET", "/metrics")["text"]
