"""`peso serve`: a real server on 127.0.0.1 in its own process, real clients (httpx), loops bounded in count
and time. Same answers as `peso recommend` and the run; a swap under load with no failed request; a killed
update under load; a fuzz of hostile bodies; a version that fails to load; two workers."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from peso.cli import main
from peso.store import Store
from tests.conftest import deployed, kill_update_while_training, run_update


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, store: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = store.parent / f"serve-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "peso.cli",
            "serve",
            str(store),
            "--port",
            str(self.port),
            "--poll-ms",
            "100",
            *extra,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        for _ in range(600):  # up to 60 s for the model to load
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not start:\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def post(self, body, path: str = "/recommend") -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30)


@pytest.fixture
def store(runs, tmp_path) -> Path:
    return deployed(runs, tmp_path)


@pytest.fixture
def server(store):
    s = Server(store)
    yield s
    s.close()


def cli_recommend(store: Path, user: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["recommend", str(store), "--user", user, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_same_answers_as_peso_recommend_and_as_the_run(server, store, runs, capsys):
    for user in ("90", "650", "13"):
        got = server.post({"user": user}).json()
        want = cli_recommend(store, user, capsys)
        assert got["version"] == 1 and [i["item"] for i in got["items"]] == want["items"]
        assert all(isinstance(i["score"], float) for i in got["items"])
    # the run's lists of the deployed block: each test user's history before its test target
    history = {}
    for u, items in (
        Store(store).interactions(1).group_by("user", maintain_order=True).agg("item").iter_rows()
    ):
        history[u] = items
    recs = list(
        csv.DictReader((runs / "run4" / "seed_0" / "peso" / "block_3" / "recommendations.csv").open())
    )
    bodies = [{"history": history[r["user"]][:-1]} for r in recs[:12]]
    got = server.post({"requests": bodies}, "/recommend/batch").json()
    assert [[i["item"] for i in g["items"]] for g in got] == [r["recommendations"].split() for r in recs[:12]]
    assert (
        server.post({"user": "90", "k": 3}).json()["items"] == server.post({"user": "90"}).json()["items"][:3]
    )
    hist = history["90"]
    excl = server.post({"user": "90", "exclude_history": True}).json()["items"]
    assert len(excl) == 10 and not {i["item"] for i in excl} & set(hist)


def test_errors_are_4xx_with_a_message(server):
    r = server.post({"user": "no-such-user"})
    assert r.status_code == 404 and "unknown user" in r.json()["detail"]
    r = server.post({"history": ["1", "nope", "also-nope"]})
    assert r.status_code == 422 and r.json()["detail"]["unknown_items"] == ["also-nope", "nope"]
    assert server.post({"user": "90", "k": 11}).status_code == 422
    assert server.post({"user": "90", "k": 0}).status_code == 422
    assert server.post({"user": "90", "history": ["1"]}).status_code == 422
    r = server.post({"user": "no-such-user", "cold_start": True})
    assert r.status_code == 200 and r.json()["cold_start"] and len(r.json()["items"]) == 10
    assert server.post({"history": []}).json()["cold_start"]


def fuzz_bodies() -> list[bytes]:
    """200 malformed or hostile bodies."""
    deep = b"[" * 5000 + b"]" * 5000
    base = [
        b"",
        b"{",
        b"null",
        b"[]",
        b"42",
        b'"x"',
        b"{}",
        b'{"user": null}',
        b'{"user": [1]}',
        b'{"user": {"a": 1}}',
        b'{"history": "1,2"}',
        b'{"history": [[1]]}',
        b'{"history": [null]}',
        b'{"history": [1], "k": "3"}',
        b'{"history": [1], "k": 1e9}',
        b'{"history": [1], "k": -1}',
        b'{"history": [1], "k": 10000000000000000000000}',
        b'{"user": "90", "extra": 1}',
        b'{"user": "90", "exclude_history": "yes"}',
        b"\xff\xfe\x00{",
        b'{"user": "\xc3\x28"}',
        deep,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"history": [' + b",".join([b'"1"'] * 20000) + b"]}",
        b'{"requests": 5}',
        b'{"requests": [{"user": null}]}',
        b'{"requests": [' + b",".join([b'{"user":"90"}'] * 2000) + b"]}",
        b"x" * 2_000_000,
        b'{"user": "' + b"a" * 500_000 + b'"}',
        b'{"history": ["' + b'","'.join([b"nope"] * 100) + b'"]}',
    ]
    out = list(base)
    k = 0
    while len(out) < 200:  # truncations and mutations of a valid body
        valid = json.dumps({"history": ["1", "2", str(k)], "k": 5}).encode()
        out.append(valid[: k % len(valid)] if k % 3 else valid.replace(b"]", b"", 1) + bytes([k % 256]))
        k += 1
    return out[:200]


def test_a_fuzz_of_hostile_bodies_gets_4xx_and_the_server_stays_healthy(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for body in fuzz_bodies():
            for path in ("/recommend", "/recommend/batch"):
                r = client.post(path, content=body, headers={"content-type": "application/json"})
                assert 400 <= r.status_code < 500, (path, body[:80], r.status_code, r.text[:200])
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.post("/recommend", json={"user": "90"}).status_code == 200
    # a client that disconnects mid-request does not break the batch it joined
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            body = json.dumps({"user": "90"}).encode()
            sock.sendall(
                b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # and one that stops mid-body
        sock.sendall(b'POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"user"')
    assert server.post({"user": "650"}).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        "peso_requests_total",
        "peso_request_seconds_bucket",
        "peso_batch_size_bucket",
        "peso_version 1.0",
        "peso_swaps_total",
        "peso_failed_loads_total",
    ):
        assert name in metrics, name


async def load(url: str, users: list[str], stop: asyncio.Event, seen: dict, failures: list) -> None:
    """32 clients, each sending requests until `stop`, recording the versions it sees in order."""

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            n = 0
            while not stop.is_set() and n < 5000:  # bounded in count too
                n += 1
                try:
                    r = await c.post("/recommend", json={"user": users[(k + n) % len(users)]})
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                if r.status_code != 200:
                    failures.append(r.status_code)
                    continue
                seen.setdefault(k, []).append(r.json()["version"])

    await asyncio.gather(*(client(k) for k in range(32)))


def run_under_load(url: str, seconds: float, during) -> tuple[dict, list]:
    """Clients for `seconds`, with `during()` run in a thread meanwhile."""
    seen, failures = {}, []

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load(url, ["90", "650", "13", "7"], stop, seen, failures))
        await asyncio.get_running_loop().run_in_executor(None, during)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        stop.set()
        await task

    t0 = time.monotonic()
    asyncio.run(go())
    return seen, failures


def test_a_swap_under_load_fails_no_request(server, store, runs, capsys):
    def publish() -> None:
        run_update(store, runs / "block4.csv")
        for _ in range(300):  # the server's watcher picks it up
            if httpx.get(f"{server.url}/healthz").json()["version"] == 2:
                return
            time.sleep(0.1)

    seen, failures = run_under_load(server.url, 20, publish)
    assert failures == []
    assert sum(map(len, seen.values())) > 100 and len(seen) == 32
    for versions in seen.values():  # once a client has seen version 2 it never sees version 1 again
        assert versions == sorted(versions)
    assert any(2 in v for v in seen.values())
    for user in ("90", "650"):
        assert [i["item"] for i in server.post({"user": user}).json()["items"]] == cli_recommend(
            store, user, capsys
        )["items"]
    assert "peso_swaps_total 1.0" in httpx.get(f"{server.url}/metrics").text


def test_a_killed_update_under_load_fails_no_request_and_changes_nothing(server, store, runs):
    def kill_an_update() -> None:
        kill_update_while_training(store, runs / "block4.csv", store.parent / "update.log")

    seen, failures = run_under_load(server.url, 8, kill_an_update)
    assert failures == [] and {v for vs in seen.values() for v in vs} == {1}
    assert Store(store).current() == 1 and httpx.get(f"{server.url}/healthz").json()["version"] == 1


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(server, store):
    import shutil

    bad = Store(store).folder(2)
    shutil.copytree(Store(store).folder(1), bad)
    (bad / "state.safetensors").write_bytes(b"broken")
    (store / "CURRENT").write_text("2\n")
    for _ in range(300):
        health = httpx.get(f"{server.url}/healthz").json()
        if health["last_load_error"]:
            break
        time.sleep(0.1)
    assert health["version"] == 1 and health["last_load_error"]["version"] == 2
    assert server.post({"user": "90"}).json()["version"] == 1
    assert "peso_failed_loads_total 1.0" in httpx.get(f"{server.url}/metrics").text
    assert "failed to load" in server.log.read_text()


def test_two_workers_share_the_store_and_each_swaps(store, runs):
    s = Server(store, "--workers", "2")
    try:
        assert all(s.post({"user": "90"}).json()["version"] == 1 for _ in range(20))
        run_update(store, runs / "block4.csv")
        versions = []
        for _ in range(300):  # every answer from either worker is version 2, within a bounded wait
            versions = [s.post({"user": "90"}).json()["version"] for _ in range(10)]
            if set(versions) == {2}:
                break
            time.sleep(0.1)
        assert set(versions) == {2}
    finally:
        s.close()
