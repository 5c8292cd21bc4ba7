"""`peso serve STORE`: the store's current version behind an HTTP API (FastAPI + uvicorn).

- Concurrent requests are gathered into one batched trie beam search (`max_batch`, `max_wait_ms`); the model
  runs in a worker thread, so the event loop keeps answering (health checks, metrics) while a batch decodes.
- When `CURRENT` moves (an update, a rollback, `POST /admin/reload`), the new version loads in the background
  and takes over between two batches: no request fails or waits for the load, and every response names the
  version that produced it. A version that fails to load leaves the old one serving; `/healthz` reports it.
- Replicas (`--workers N`, or processes behind any load balancer) share one read-only store; each watches
  `CURRENT` and swaps on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from peso.decode import beam_search_batch, generate_reference, prefix_table
from peso.live import Loaded, load_version
from peso.model import merged
from peso.store import Store

log = logging.getLogger("peso.serve")


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str
    max_batch: int = Field(64, ge=1, description="requests decoded together at most")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests")
    poll_ms: float = Field(500.0, gt=0, description="how often CURRENT is checked for a new version")
    cold_start: bool = Field(False, description="answer unknown users from the empty history (else 404)")
    max_history: int = Field(10_000, ge=1, description="longest history a request may send")
    max_body_bytes: int = Field(1_000_000, ge=1_000, description="largest request body")
    threads: int | str | None = Field("auto", description="torch threads of the decoding worker")
    engine: Literal["beam", "generate"] = Field(
        "beam",
        description="beam: peso's batched trie beam search; generate: `model.generate(prefix_allowed_tokens_fn=...)`"
        " one request at a time, the server one would otherwise write (the benchmark's anchor)",
    )


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # strict types: "3" is not a k, "yes" not a flag; ids may be strings or integers
    user: StrictStr | StrictInt | None = Field(
        None, description="a user the store has seen (its whole history)"
    )
    history: list[StrictStr | StrictInt] | None = Field(
        None, description="item ids, oldest first (may be empty)"
    )
    k: StrictInt | None = Field(
        None, description="items to return (1 to the store's decode.top_k; default all)"
    )
    exclude_history: StrictBool = Field(False, description="leave out items of the history")
    cold_start: StrictBool = Field(False, description="an unknown user gets the empty-history list, not 404")

    @model_validator(mode="after")
    def _one_of(self) -> RecommendRequest:
        if (self.user is None) == (self.history is None):
            raise ValueError("give exactly one of 'user' and 'history'")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(max_length=1024)


class Item(BaseModel):
    item: str
    score: float
    title: str | None = None


class Recommendation(BaseModel):
    items: list[Item]
    version: int
    cold_start: bool = False


@dataclass
class Active:
    """One loaded version, ready to answer."""

    number: int
    live: Loaded
    trie: object
    ids: dict[str, int]
    groups: dict[int, str]
    titles: dict[int, str | None]
    histories: dict[str, list[str]]
    top_k: int
    beam: int
    window: int
    table: dict | None = None  # the prefix table of `generate` (the anchor engine), built on first use

    @classmethod
    def load(cls, store: Store, n: int) -> Active:
        live = load_version(store, n)
        index = live.index
        members: dict[int, list[str]] = {}
        for item, g in zip(index.items, index.sid.tolist(), strict=True):
            members.setdefault(g, []).append(item)
        names = store.titles(n)
        titles = {
            g: " | ".join(t for t in (names.get(i) for i in items) if t) or None
            for g, items in members.items()
        }
        grouped = live.interactions.group_by("user", maintain_order=True).agg(pl.col("item"))
        histories = dict(zip(grouped["user"].to_list(), grouped["item"].to_list(), strict=True))
        d = live.cfg.decode
        return cls(
            n,
            live,
            live.trie(),
            index.item_ids(),
            {g: "|".join(m) for g, m in members.items()},
            titles,
            histories,
            d.top_k,
            d.beam,
            live.cfg.data.history,
        )

    def decode(self, jobs: list[Job], engine: str = "beam") -> None:
        """One batched beam search for every job (or `generate`, job by job); each gets its list."""
        live, space = self.live, self.live.space
        prompts = [
            space.prompt(np.array([self.ids[i] for i in j.history[-self.window :]], dtype=np.int64))
            for j in jobs
        ]
        top = self.beam if any(j.exclude for j in jobs) else self.top_k
        with merged(live.model) if live.cfg.decode.merge else contextlib.nullcontext():
            if engine == "generate":  # the anchor: one request at a time, scores not kept
                if self.table is None:
                    self.table = prefix_table(self.trie.codes, space)
                rows = [
                    generate_reference(live.model, [p], space, self.trie, self.beam, top, 1, self.table)[0]
                    for p in prompts
                ]
                sids, scores = torch.as_tensor(np.stack(rows)), torch.zeros(len(rows), top)
            else:
                sids, scores = beam_search_batch(live.model, prompts, space, self.trie, self.beam, top)
        for j, row, sc in zip(jobs, sids.tolist(), scores.tolist(), strict=True):
            seen = set(j.history) if j.exclude else set()
            out = []
            for g, s in zip(row, sc, strict=True):
                if g < 0 or (seen and set(self.groups[g].split("|")) & seen):
                    continue
                out.append(Item(item=self.groups[g], score=float(s), title=self.titles[g]))
            j.result = Recommendation(items=out[: j.k], version=self.number, cold_start=j.cold)


@dataclass
class Job:
    history: list[str]
    k: int
    exclude: bool
    cold: bool
    future: asyncio.Future = field(repr=False)
    result: Recommendation | None = None


class Service:
    """The serving state: the active version, the batch queue, the version watcher, the metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.store = Store.open(Path(settings.store))
        self.registry = CollectorRegistry()
        r = self.registry
        self.m_requests = Counter(
            "peso_requests", "requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.m_latency = Histogram(
            "peso_request_seconds",
            "request latency",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.m_batch = Histogram(
            "peso_batch_size",
            "requests per decoded batch",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.m_version = Gauge("peso_version", "the version being served", registry=r)
        self.m_swaps = Counter("peso_swaps", "versions swapped in", registry=r)
        self.m_failed = Counter("peso_failed_loads", "versions that failed to load", registry=r)
        from peso.runner import set_threads

        set_threads(settings.threads)
        self.active = Active.load(self.store, self.store.current())
        self.m_version.set(self.active.number)
        self.load_error: dict | None = None
        self.loading = threading.Lock()
        self.decoder = ThreadPoolExecutor(
            1, thread_name_prefix="peso-decode"
        )  # one model, one batch at a time
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="peso-load")
        self.queue: asyncio.Queue[Job] | None = None

    # --- versions ------------------------------------------------------------------------------------
    def reload(self) -> dict:
        """Load CURRENT if it is not the active version (in the loader thread); the swap is one assignment."""
        if not self.loading.acquire(blocking=False):
            return {"status": "loading"}
        try:
            try:
                target = self.store.current()
            except Exception as e:  # noqa: BLE001 (an unreadable CURRENT must not stop the server)
                return self._failed(None, e)
            if target == self.active.number:
                return {"status": "unchanged", "version": target}
            try:
                fresh = Active.load(self.store, target)
            except Exception as e:  # noqa: BLE001
                return self._failed(target, e)
            old, self.active = self.active.number, fresh  # batches from now on use it
            self.load_error = None
            self.m_swaps.inc()
            self.m_version.set(target)
            log.info("peso serve: swapped version %s -> %s", old, target)
            return {"status": "swapped", "version": target, "previous": old}
        finally:
            self.loading.release()

    def _failed(self, target: int | None, e: Exception) -> dict:
        self.m_failed.inc()
        self.load_error = {
            "version": target,
            "error": f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        }
        log.error(
            "peso serve: version %s failed to load, still serving %s: %s",
            target,
            self.active.number,
            self.load_error["error"],
        )
        return {"status": "failed", **self.load_error}

    async def watch(self) -> None:
        last = None
        while True:
            await asyncio.sleep(self.settings.poll_ms / 1000)
            try:
                seen = (self.store.path / "CURRENT").read_text()
            except OSError:
                continue
            if seen != last:
                last = seen
                await asyncio.get_running_loop().run_in_executor(self.loader, self.reload)

    # --- batching ------------------------------------------------------------------------------------
    async def batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.settings.max_wait_ms / 1000
            while len(jobs) < self.settings.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            active = self.active  # between two batches: the one this batch uses, whatever loads meanwhile
            self.m_batch.observe(len(jobs))
            try:
                await loop.run_in_executor(self.decoder, active.decode, jobs, self.settings.engine)
            except Exception as e:  # noqa: BLE001 (a failed batch fails its requests, not the server)
                log.exception("peso serve: a batch failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j in jobs:
                if not j.future.done():  # a client that went away leaves a cancelled future
                    j.future.set_result(j.result)

    def job(self, req: RecommendRequest) -> Job:
        """Check a request against the active version: 404 for an unknown user, 422 for unknown items or k."""
        a, cold = self.active, False
        k = a.top_k if req.k is None else req.k
        if not 1 <= k <= a.top_k:
            raise HTTPException(422, f"k must be in 1..{a.top_k} (the store's decode.top_k), not {req.k}")
        if req.user is not None:
            user = str(req.user)
            history = a.histories.get(user)
            if history is None:
                if not (req.cold_start or self.settings.cold_start):
                    raise HTTPException(404, f"unknown user '{user}'")
                history, cold = [], True
        else:
            if len(req.history) > self.settings.max_history:
                raise HTTPException(
                    422, f"history of {len(req.history)} items: at most {self.settings.max_history}"
                )
            history = [str(i) for i in req.history]
            unknown = sorted({i for i in history if i not in a.ids})
            if unknown:
                raise HTTPException(422, {"message": "unknown items", "unknown_items": unknown[:100]})
            cold = not history
        return Job(history, k, req.exclude_history, cold, asyncio.get_running_loop().create_future())


def create_app(settings: ServeSettings) -> FastAPI:
    service: Service | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal service
        service = Service(settings)
        app.state.service = service
        service.queue = asyncio.Queue()
        tasks = [asyncio.create_task(service.batcher()), asyncio.create_task(service.watch())]
        yield
        for t in tasks:
            t.cancel()
        service.decoder.shutdown(wait=False, cancel_futures=True)
        service.loader.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="peso", description="Recommendations from a peso model store", lifespan=lifespan)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)

    def count(endpoint: str, status: int, start: float) -> None:
        service.m_requests.labels(endpoint, str(status)).inc()
        service.m_latency.labels(endpoint).observe(time.perf_counter() - start)

    async def answer(reqs: list[RecommendRequest], endpoint: str, start: float) -> list[Recommendation]:
        try:
            jobs = [service.job(r) for r in reqs]
        except HTTPException as e:
            count(endpoint, e.status_code, start)
            raise
        for j in jobs:
            await service.queue.put(j)
        try:
            out = [await j.future for j in jobs]
        except Exception:
            count(endpoint, 500, start)
            raise
        count(endpoint, 200, start)
        return out

    @app.post("/recommend", response_model=Recommendation)
    async def recommend(req: RecommendRequest) -> Recommendation:
        """Top-k items for a known user or a history."""
        return (await answer([req], "recommend", time.perf_counter()))[0]

    @app.post("/recommend/batch", response_model=list[Recommendation])
    async def recommend_batch(req: BatchRequest) -> list[Recommendation]:
        """Many requests at once; one error (404, 422) answers the whole batch."""
        return await answer(req.requests, "batch", time.perf_counter())

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "version": service.active.number,
            "loading": service.loading.locked(),
            "last_load_error": service.load_error,
        }

    @app.get("/version")
    async def version() -> dict:
        v = service.store.version(service.active.number)
        return {
            "version": v["version"],
            "method": v["method"],
            "created": v["created"],
            "data_up_to": v["data_up_to"],
        }

    @app.post("/admin/reload")
    async def reload() -> dict:
        """Load CURRENT now (also done on its own when CURRENT moves)."""
        return await asyncio.get_running_loop().run_in_executor(service.loader, service.reload)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


class BodyGuard:
    """Refuse, before parsing, a body too large (413), not UTF-8 or nested deeper than JSON needs (422):
    none of them may reach the JSON parser, whose recursion would fail the request with a 500."""

    MAX_DEPTH = 32

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _reply(send, 413, f"body larger than {self.max_bytes} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return await _reply(send, 422, "body is not UTF-8")
        if _depth(text) > self.MAX_DEPTH:
            return await _reply(send, 422, f"JSON nested deeper than {self.MAX_DEPTH} levels")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings."""
    depth = best = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def app_from_env() -> FastAPI:
    """The app of `uvicorn --factory peso.serve:app_from_env` (what `peso serve --workers N` starts): its
    settings come from PESO_SERVE (JSON)."""
    return create_app(ServeSettings.model_validate_json(os.environ["PESO_SERVE"]))
