"""Serving throughput and latency: `peso serve` (batched trie beam search, dynamic batching on and off)
against the server a user would otherwise write: the same FastAPI app calling
`model.generate(num_beams=50, num_return_sequences=10, prefix_allowed_tokens_fn=...)` once per request
(`--engine generate`).

Setup: the CDs release catalogue (~39k items, 4-token IDs, beam 50, the `tiny` model of configs/cds.yaml,
trained briefly: speed does not depend on quality), the server on one process, clients on the same machine.
Per point: recommendations/s and p50 / p95 / p99 latency at each concurrency, clients sending the histories
of the store's users for `--seconds`. `identical`: our top-10 lists equal the anchor's for `--check` users.
Then how latency grows with the beam width, and with the catalogue (`peso simulate`, `--catalogues`).

    OMP_NUM_THREADS=1 python benchmarks/serve.py --json benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from peso.io import write_text

ROOT = Path(__file__).resolve().parents[1]


def peso(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "peso.cli", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class Server:
    def __init__(self, store: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "peso.cli", "serve", str(store), "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(1200):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)


async def measure(url: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal errors
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            n = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await c.post("/recommend", json=bodies[n % len(bodies)])
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1
                n += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "recommendations_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
    }


def lists(url: str, bodies: list[dict]) -> list[list[str]]:
    return [
        [i["item"] for i in httpx.post(f"{url}/recommend", json=b, timeout=600).json()["items"]]
        for b in bodies
    ]


def bodies_of(store: Path, n: int, window: int) -> list[dict]:
    from peso.store import Store

    s = Store(store)
    df = s.interactions(s.current()).group_by("user", maintain_order=True).agg("item")
    rng = np.random.default_rng(0)
    rows = df.sample(min(n, df.height), seed=0)["item"].to_list()
    rng.shuffle(rows)
    return [{"history": h[-window:]} for h in rows]


def sweep(store: Path, bodies: list[dict], seconds: float, tag: dict) -> list[dict]:
    """Points at concurrency 1 and 32 against a fresh server on `store`, each tagged."""
    server, points = Server(store), []
    try:
        for c in (1, 32):
            points.append(asyncio.run(measure(server.url, bodies, c, seconds)) | tag)
            print(points[-1], flush=True)
    finally:
        server.close()
    return points


def make_store(tmp: Path, data: Path, beam: int, name: str, extra: list[str]) -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"data: {{path: {data}, history: 20, max_users: 200}}\n"
        "model: {name: tiny, tiny: {hidden: 64, layers: 2, heads: 4, intermediate: 256}, lora: {r: 8, alpha: 16, dropout: 0.0}}\n"
        "train: {lr: 3.0e-3, epochs: 1, continual_epochs: 1, batch_size: 128, warmup_steps: 20}\n"
        f"decode: {{beam: {beam}, top_k: 10, batch_size: 64}}\nmethods: [peso]\nthreads: 1\n"
    )
    peso("run", "--config", str(config), "--out", str(tmp / f"run-{name}"), *extra)
    peso("deploy", str(tmp / f"run-{name}"), "--method", "peso", "--out", str(tmp / f"store-{name}"))
    return tmp / f"store-{name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/peso-release/CDs_and_Vinyl_cl_0.6_0_5_3_0"
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--anchor-seconds", type=float, default=30.0)
    ap.add_argument("--check", type=int, default=40, help="users whose top-10 are compared with the anchor's")
    ap.add_argument("--beams", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--catalogues", type=int, nargs="*", default=[10000, 40000, 200000])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {"cores": os.cpu_count(), "points": [], "beams": [], "catalogues": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = make_store(tmp, args.data, 50, "cds", [])
        from peso.store import Store

        out["items_in_catalogue"] = int(Store(store).interactions(1)["item"].n_unique())
        bodies = bodies_of(store, 2000, 20)
        ours: list[list[str]] = []
        for engine, batching in (("beam", True), ("beam", False), ("generate", False)):
            extra = ["--engine", engine] + ([] if batching else ["--max-batch", "1"])
            server = Server(store, *extra)
            try:
                if engine == "generate":
                    out["identical"] = lists(server.url, bodies[: args.check]) == ours
                elif batching:
                    ours = lists(server.url, bodies[: args.check])
                for c in (
                    args.concurrency if engine != "generate" else [c for c in args.concurrency if c <= 32]
                ):
                    seconds = args.anchor_seconds if engine == "generate" else args.seconds
                    point = asyncio.run(measure(server.url, bodies, c, seconds))
                    point |= {"engine": engine, "batching": batching}
                    out["points"].append(point)
                    print(point, flush=True)
            finally:
                server.close()
        by = {(p["engine"], p["batching"], p["concurrency"]): p for p in out["points"]}
        ours32, anchor32 = by[("beam", True, 32)], by.get(("generate", False, 32))
        if anchor32 and anchor32["recommendations_per_s"]:
            out["speedup_c32"] = round(ours32["recommendations_per_s"] / anchor32["recommendations_per_s"], 1)
        out["p99_ms_c32"] = ours32["p99_ms"]
        for beam in args.beams:  # latency against the beam width: the same store, decode.beam changed
            s2 = tmp / f"store-beam{beam}"
            shutil.copytree(store, s2)
            info = json.loads((s2 / "store.json").read_text())
            info["config"]["decode"]["beam"] = beam
            (s2 / "store.json").write_text(json.dumps(info))
            out["beams"] += sweep(s2, bodies, args.seconds, {"beam": beam})
        for items in args.catalogues:  # latency against the catalogue's size (simulated, 2-level IDs)
            world = tmp / f"world{items}"
            peso(
                "simulate",
                "--out",
                str(world),
                "--users",
                "600",
                "--items",
                str(items),
                "--clusters",
                "50",
                "--new-items-per-block",
                "0.0",
                "--tokens",
                "latent",
            )
            s3 = make_store(tmp, world, 50, f"sim{items}", [])
            out["catalogues"] += sweep(s3, bodies_of(s3, 500, 20), args.seconds, {"items": items})
    if args.json:
        write_text(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
