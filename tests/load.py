"""Bounded HTTP load for the reliability and soak tests: every loop is bounded in count and time,
on 127.0.0.1 only. `burst` fires a fixed number of requests; `Load` keeps a few clients busy in a
thread of its own (so the test can kill things meanwhile) until stopped or out of time."""
from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from dataclasses import dataclass, field

import httpx

QUERIES = ["dark fantasy manga like Berserk?", "do you ship to Canada and how long does it take",
           "how much is One Piece vol 105", "is Monster finished", "where is my order MA-552301",
           "can I return a damaged box set", "hi there!", "something like Frieren but darker",
           "how many volumes does Vagabond have", "do you have Chainsaw Man in a deluxe edition"]


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    seconds: float
    headers: dict = field(default_factory=dict)
    body: str = ""
    attempts: int = 1


async def _post(client: httpx.AsyncClient, url: str, body: dict) -> Outcome:
    t0 = time.perf_counter()
    try:
        r = await client.post(url, json=body)
        return Outcome(r.status_code, time.perf_counter() - t0, dict(r.headers), r.text)
    except httpx.HTTPError as exc:
        return Outcome(None, time.perf_counter() - t0, body=repr(exc))


def burst(url: str, bodies: list[dict], concurrency: int, timeout: float, headers: dict | None = None) -> list[Outcome]:
    """Send every body once, `concurrency` at a time; a client-side timeout bounds each request."""

    async def run():
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=concurrency),
                                     headers=headers) as client:
            async def one(body):
                async with gate:
                    return await _post(client, url, body)
            return await asyncio.gather(*(one(b) for b in bodies))

    return asyncio.run(run())


class Load:
    """`clients` closed-loop clients posting chat queries until `stop()` (or `max_s`), each pausing
    `think_s` between requests. With `retry_s`, a 503 (or no answer) is retried after its Retry-After
    for up to `retry_s`, as a well-behaved client does; `outcomes` holds each request's final answer."""

    def __init__(self, url: str, clients: int, *, think_s: float = 0.0, retry_s: float = 0.0, max_s: float = 120,
                 timeout: float = 30, rate: float | None = None, stream_every: int = 0, headers: dict | None = None):
        self.url, self.clients, self.think_s, self.retry_s, self.max_s = url, clients, think_s, retry_s, max_s
        self.timeout, self.rate, self.stream_every, self.headers = timeout, rate, stream_every, headers
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(self.max_s + self.timeout + self.retry_s + 10)
        assert not self._thread.is_alive(), "the load did not stop"
        return self.outcomes

    async def _request(self, client: httpx.AsyncClient, body: dict) -> Outcome:
        started, attempts = time.perf_counter(), 0
        while True:
            attempts += 1
            outcome = await _post(client, self.url, body)
            outcome.attempts = attempts
            retryable = outcome.status is None or outcome.status == 503
            if not (retryable and self.retry_s and time.perf_counter() - started < self.retry_s):
                outcome.seconds = time.perf_counter() - started
                return outcome
            await asyncio.sleep(min(float(outcome.headers.get("retry-after", 1)), 2) + random.random() * 0.2)

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        numbers = itertools.count()
        # open loop at `rate` requests/s (the soak), else closed loop: each client waits for its answer
        interval = self.clients / self.rate if self.rate else 0.0
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers,
                                     limits=httpx.Limits(max_connections=self.clients * 2)) as client:
            async def worker(i: int):
                await asyncio.sleep(interval * i / self.clients)
                while not self._stop.is_set() and time.monotonic() < deadline:
                    t0 = time.monotonic()
                    n = next(numbers)
                    body = {"query": QUERIES[n % len(QUERIES)],
                            "stream": bool(self.stream_every and n % self.stream_every == 0)}
                    self.outcomes.append(await self._request(client, body))
                    await asyncio.sleep(max(self.think_s, interval - (time.monotonic() - t0)))
            await asyncio.gather(*(worker(i) for i in range(self.clients)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
