"""`sisa serve`: forgets take effect at once, are durable once acknowledged, end bit for bit where
training without the ids ends; bad requests get the right 4xx and change nothing."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from sisa import api, service
from sisa.errors import SisaError
from sisa.verification import compare
from sisa.workdir import Workdir
from tests.conftest import assert_served_clean, file_digests

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cfg, tiny_ds):
    root = tmp_path_factory.mktemp("served") / "base"
    api.train(str(root), tiny_cfg, dataset=tiny_ds, progress=False)
    return root


@pytest.fixture
def run(trained, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained, root)
    return root


def server(root, batch_window=0.05, **kw):
    svc = service.Service(root, batch_window=batch_window)
    svc.start()
    return svc, TestClient(service.app(svc, token=TOKEN, **kw))


def settle(svc, timeout=120):
    deadline = time.monotonic() + timeout
    while not svc.idle():
        assert time.monotonic() < deadline, "requests not committed in time"
        time.sleep(0.05)


def ids_in(root, shard, slice_, n=1):
    store = Workdir.open(root).store()
    return store.ids[(store.shard == shard) & (store.slice == slice_)][:n].tolist()


def test_forgets_end_bit_for_bit_as_training_without_them(run, tmp_path, tiny_cfg, tiny_ds):
    svc, client = server(run)
    try:
        first, second = ids_in(run, 0, 1, 2), ids_in(run, 2, 2)
        answers = [client.post("/v1/forget", json={"ids": ids, "request": f"r{i}"}, headers=AUTH)
                   for i, ids in enumerate((first, second))]
        assert [a.status_code for a in answers] == [202, 202]
        assert answers[0].json()["state"] == "requested" and answers[0].json()["affected_shards"] == [0]
        settle(svc)
        states = [client.get(f"/v1/requests/{a.json()['request_id']}", headers=AUTH).json()["state"] for a in answers]
        assert states == ["committed", "committed"]
        x = tiny_ds.x_test[:7].tolist()
        served = client.post("/v1/predict", json={"inputs": x}, headers=AUTH).json()
    finally:
        svc.close()
    api.train(str(tmp_path / "scratch"), tiny_cfg, dataset=tiny_ds.without(first + second), progress=False)
    assert compare(Workdir.open(run), Workdir.open(tmp_path / "scratch"))["identical"]
    assert served["probabilities"] == api.predict(str(tmp_path / "scratch"), np.asarray(x))["probabilities"]


def test_a_forget_takes_effect_before_its_retraining(run):
    """With the retraining held back (a long batch window), every prediction after the 202 is
    served by stages that saw none of the ids: the affected shard from its stage before their
    earliest slice, the others from their final stage."""
    svc, client = server(run, batch_window=3600)
    try:
        ids = ids_in(run, 1, 2, 2)
        before = client.post("/v1/predict", json={"inputs": [[0.0] * 8]}, headers=AUTH).json()["served"]
        assert {int(s): v["stage"] for s, v in before.items()} == {0: 2, 1: 2, 2: 2}
        assert client.post("/v1/forget", json={"ids": ids}, headers=AUTH).status_code == 202
        after = client.post("/v1/predict", json={"inputs": [[0.0] * 8]}, headers=AUTH).json()
        served = {int(s): v for s, v in after["served"].items()}
        assert {s: v["stage"] for s, v in served.items()} == {0: 2, 1: 1, 2: 2}
        assert after["left_out"]["pending"] == [1]
        assert_served_clean(run, served, ids)
        status = client.get("/v1/status", headers=AUTH).json()
        assert status["pending_requests"] == [1] and status["serving"]["served"]["1"]["stage"] == 1
        # What the status page's script reads (it holds no data itself: served without the token).
        assert status["stages"] == 3 and status["stages_on_disk"]["1"] == [0, 1, 2]
        assert [p["request_id"] for p in status["pending_request_states"]] == [1]
        assert status["ledger_head"].startswith("1:")
        page = client.get("/").text
        for field in ("s.stages_on_disk", "s.serving.served", "s.pending_request_states", "s.ledger_head",
                      "location.hash"):
            assert field in page, field
    finally:
        svc.close()


def test_requests_within_the_window_retrain_together(run):
    """The first request on an idle server retrains at once; those arriving during its pass or
    within the window after it are retrained together in one more pass."""
    svc, client = server(run, batch_window=2.0)
    try:
        settle(svc)
        time.sleep(2.1)  # idle for a whole window
        t0 = time.monotonic()
        first = client.post("/v1/forget", json={"ids": ids_in(run, 0, 2)}, headers=AUTH).json()["request_id"]
        while client.get(f"/v1/requests/{first}", headers=AUTH).json()["state"] != "committed":
            time.sleep(0.01)
        assert time.monotonic() - t0 < 2.0  # not held for the window
        for ids in (ids_in(run, 1, 2), ids_in(run, 0, 1), ids_in(run, 2, 1)):  # within the window after it
            assert client.post("/v1/forget", json={"ids": ids}, headers=AUTH).status_code == 202
        settle(svc)
        assert svc.metrics.retrains == 2
        assert "sisa_retrains_total 2" in client.get("/metrics", headers=AUTH).text
        assert client.get("/readyz").json() == {"ready": True}
    finally:
        svc.close()


def test_forget_a_group(tmp_path, tiny_cfg):
    from tests.conftest import blobs

    ds = blobs()
    import dataclasses

    ds = dataclasses.replace(ds, groups=(ds.ids % 7).astype(np.int64))
    root = tmp_path / "g"
    api.train(str(root), tiny_cfg, dataset=ds, progress=False)
    svc, client = server(root)
    try:
        r = client.post("/v1/forget", json={"group": 3}, headers=AUTH)
        assert r.status_code == 202 and r.json()["ids"] == int((ds.ids % 7 == 3).sum())
        settle(svc)
        again = client.post("/v1/forget", json={"group": 3}, headers=AUTH)
        assert again.status_code == 422 and "no example left" in again.json()["error"]
    finally:
        svc.close()


def test_auth_is_required_and_the_token_is_never_logged(run, caplog):
    svc, client = server(run)
    caplog.set_level(logging.DEBUG)
    try:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200 and "sisa serve" in client.get("/").text
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in (("GET", "/v1/status"), ("POST", "/v1/forget"), ("POST", "/v1/predict"),
                                 ("GET", "/v1/ledger"), ("GET", "/metrics")):
                r = client.request(method, path, headers=headers, json={"ids": [5]})
                assert r.status_code == 401, (method, path, headers)
        assert client.get("/v1/status", headers=AUTH).status_code == 200
        assert not (run / "ledger.jsonl").exists()
    finally:
        svc.close()
    assert TOKEN not in caplog.text


def test_open_predict_needs_no_token_but_forget_does(run):
    svc, client = server(run, open_predict=True)
    try:
        assert client.post("/v1/predict", json={"inputs": [[0.0] * 8]}).status_code == 200
        assert client.post("/v1/forget", json={"ids": [5]}).status_code == 401
    finally:
        svc.close()


@pytest.mark.parametrize("body, status, phrase", [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"ids": [5, 5]}', 422, "twice"),
    (b'{"ids": [999999]}', 422, "unknown id"),
    (b'{"ids": ["5"]}', 422, "integers"),
    (b'{"ids": 5}', 422, "list of integers"),
    (b'{"ids": [5], "group": 1}', 422, "either"),
    (b'{"ids": [5], "extra": 1}', 422, "unknown field"),
    (b'{"ids": [5], "request": 7}', 422, "request must be a string"),
    (b"{" + b'"ids": [' + b"5," * 3000 + b"5]}", 413, "larger than"),
])
def test_bad_forget_requests_get_4xx_and_change_nothing(run, body, status, phrase):
    before = file_digests(run)
    svc, client = server(run, max_body=4096)
    try:
        r = client.post("/v1/forget", content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == status and phrase in r.json()["error"], r.text
        assert client.post("/v1/predict", json={"inputs": [[0.0] * 8]}, headers=AUTH).status_code == 200
    finally:
        svc.close()
    assert file_digests(run) == before


@pytest.mark.parametrize("inputs, phrase", [
    ("[[0.0, 0.0]]", "shape"),
    ("[[0.0, 1.0], [2.0]]", "input shape"),
    ('[["a", "b", "c", "d", "e", "f", "g", "h"]]', "numbers"),
    ("[[NaN, 0, 0, 0, 0, 0, 0, 0]]", "NaN"),
    ('"nope"', "non-empty list"),
    ("[]", "non-empty list"),
])
def test_bad_predict_requests_get_422(run, inputs, phrase):
    svc, client = server(run)
    try:
        r = client.post("/v1/predict", content=b'{"inputs": ' + inputs.encode() + b"}", headers=AUTH)
        assert r.status_code == 422 and phrase in r.json()["error"], r.text
        assert client.post("/v1/predict", json={"inputs": [[0.0] * 8]}, headers=AUTH).status_code == 200
    finally:
        svc.close()


def test_a_second_server_or_writer_is_refused_while_one_runs(run):
    from sisa.workdir import WorkdirBusy

    svc, _ = server(run)
    try:
        with pytest.raises(WorkdirBusy):
            service.Service(run)
        with pytest.raises(WorkdirBusy):
            api.forget(str(run), [5], progress=False)
    finally:
        svc.close()


def test_no_token_means_loopback_only(run):
    with pytest.raises(SisaError, match="without a token"):
        service.serve(run, host="0.0.0.0", token=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root, port, batch_window):
    env = {**os.environ, "SISA_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "sisa.cli", "serve", "--workdir", str(root), "--port", str(port),
                             "--batch-window", str(batch_window)], env=env, stderr=subprocess.PIPE)
    client = api_client(port)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.healthz()
            return proc, client
        except SisaError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)


def api_client(port):
    import sisa

    return sisa.Client(f"http://127.0.0.1:{port}", TOKEN, timeout=30)


def test_an_acknowledged_request_survives_kill_9_and_a_restart_finishes_it(run, tmp_path, tiny_cfg, tiny_ds):
    port = free_port()
    proc, client = start_server(run, port, batch_window=3600)  # acknowledged, never retrained before the kill
    ids = ids_in(run, 2, 1, 3)
    try:
        n = client.forget(ids, request="gdpr-1")["request_id"]
        assert client.request(n)["state"] == "requested"
        # A slow body, a huge declared body: 4xx, and the server keeps serving.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/forget HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                      + b"\r\nContent-Length: 1000000000\r\n\r\n")
            assert b" 413 " in s.recv(4096)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc, client = start_server(run, port, batch_window=0.05)
    try:
        assert client.wait(n, timeout=120)["state"] == "committed"
        certificate = client.certificate([2])
        assert certificate["verdict"] == "verified"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    api.train(str(tmp_path / "scratch"), tiny_cfg, dataset=tiny_ds.without(ids), progress=False)
    assert compare(Workdir.open(run), Workdir.open(tmp_path / "scratch"))["identical"]
    assert [e["request"] for e in json.loads(json.dumps(api.ledger(str(run))["entries"]))] == ["gdpr-1"]


def test_the_cli_forgets_a_group_and_refuses_ids_with_it(tmp_path, tiny_cfg):
    import dataclasses

    from tests.conftest import blobs

    ds = blobs()
    names = np.asarray([f"user-{i % 5}" for i in range(len(ds.ids))], dtype=object)
    from sisa.data.datasets import _group_numbers

    ds = dataclasses.replace(ds, groups=_group_numbers(names))
    root = tmp_path / "g"
    api.train(str(root), tiny_cfg, dataset=ds, progress=False)
    cli = [sys.executable, "-m", "sisa.cli", "forget", "--workdir", str(root)]
    both = subprocess.run([*cli, "--group", "user-2", "5"], check=False, capture_output=True, text=True)
    assert both.returncode != 0 and "not both" in both.stderr
    out = subprocess.run([*cli, "--group", "user-2", "--json"], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    [entry] = api.ledger(str(root))["entries"]
    assert entry["ids"] == sorted(ds.ids[names == "user-2"].tolist()) and entry["state"] == "committed"


def trained_lm(tmp_path):
    """A small sharded language model on a generated .txt corpus (tests/test_framework.py's)."""
    from tests.test_framework import corpus, text_cfg

    root = tmp_path / "lm"
    api.train(str(root), text_cfg("transformer_lm", corpus(tmp_path / "docs.txt", labels=False)), progress=False)
    return root


def test_a_language_model_is_served_and_forgets_documents(tmp_path):
    root = trained_lm(tmp_path)
    svc, client = server(root)
    try:
        body = {"inputs": ["the film", {"text": "the plot", "continuation": " good"}]}
        before = client.post("/v1/predict", json=body, headers=AUTH).json()
        assert before["tokens"] == [8, 5] and len(before["next"]) == 2
        ids = ids_in(root, 0, 1, 2)
        assert client.post("/v1/forget", json={"ids": ids}, headers=AUTH).status_code == 202
        settle(svc)
        after = client.post("/v1/predict", json=body, headers=AUTH).json()
        assert after["served"]["0"]["stage"] == 1 and after["scores"] != before["scores"]
        bad = client.post("/v1/predict", json={"inputs": [7]}, headers=AUTH)
        assert bad.status_code == 422 and "not a text" in bad.json()["error"]
    finally:
        svc.close()


def test_added_examples_are_staged_durably_then_trained_exactly(run, tmp_path, tiny_cfg, tiny_ds):
    """POST /v1/add answers once the examples are on disk; a kill -9 before they are added loses
    nothing (the next server adds them); the result equals adding them with `sisa add`."""
    from tests.conftest import blobs

    extra = blobs(n_train=340)
    new = {"ids": (extra.ids[300:320] + 10_000).tolist(), "x": extra.x[300:320].tolist(),
           "y": extra.y[300:320].tolist()}
    svc, client = server(run, batch_window=3600)  # staged, not yet added
    try:
        svc._last_pass = time.monotonic()  # hold the worker for the window
        r = client.post("/v1/add", json=new, headers=AUTH)
        assert r.status_code == 202 and r.json()["state"] == "staged", r.text
        bad = client.post("/v1/add", json={**new, "ids": new["ids"][:1] * 20}, headers=AUTH)
        assert bad.status_code == 422
        assert client.post("/v1/add", json={**new, "x": [[0.0] * 3] * 20}, headers=AUTH).status_code == 422
    finally:
        svc.close()  # as a crash would leave it: staged, not added
    assert len(list((run / "data").glob(".add-*.npz"))) == 1
    svc, client = server(run)
    try:
        settle(svc)
        assert client.get(f"/v1/adds/{r.json()['request_id']}", headers=AUTH).json()["state"] == "added"
    finally:
        svc.close()
    import dataclasses

    expected = tmp_path / "expected"
    api.train(str(expected), tiny_cfg, dataset=tiny_ds, progress=False)
    added = dataclasses.replace(tiny_ds, x=np.asarray(new["x"], np.float32), y=np.asarray(new["y"], np.int32),
                                ids=np.asarray(new["ids"], np.int64))
    api.add(str(expected), added, progress=False)
    assert compare(Workdir.open(run), Workdir.open(expected))["identical"]


def test_nothing_to_serve_until_retrained_is_503(run):
    """Ids in slice 0 of every shard, retraining held back: no stage is safe to serve."""
    svc, client = server(run, batch_window=3600)
    try:
        svc._last_pass = time.monotonic()
        ids = [i for s in range(3) for i in ids_in(run, s, 0)]
        assert client.post("/v1/forget", json={"ids": ids}, headers=AUTH).status_code == 202
        r = client.post("/v1/predict", json={"inputs": [[0.0] * 8]}, headers=AUTH)
        assert r.status_code == 503 and r.json()["kind"] == "unavailable", r.text
    finally:
        svc.close()


def test_a_language_model_takes_added_documents_over_http(tmp_path):
    root = trained_lm(tmp_path)
    svc, client = server(root)
    try:
        docs = ["the plot was good", "a very fine film", "the cast was grim"]
        r = client.post("/v1/add", json={"ids": [1000, 1001, 1002], "text": docs}, headers=AUTH)
        assert r.status_code == 202, r.text
        empty = client.post("/v1/add", json={"ids": [1003], "text": [""]}, headers=AUTH)
        assert empty.status_code == 422 and "empty" in empty.json()["error"]
        settle(svc)
        assert client.get(f"/v1/adds/{r.json()['request_id']}", headers=AUTH).json()["state"] == "added"
    finally:
        svc.close()
    wd = Workdir.open(root)
    assert wd.stages() == 3 and wd.store().contains([1000, 1001, 1002]).all()
