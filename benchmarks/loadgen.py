"""The load generator: closed loop (N clients back to back) and open loop (Poisson arrivals).

Open-loop latency is taken from each request's *scheduled* send time, so a server that falls behind
is charged for the queueing it causes (no coordinated omission). Every loop is bounded in requests
and seconds. The generator runs in this process on the same cores as the server under test (a
2-vCPU machine has none to spare): `calibrate` measures what it costs per request against a no-op
endpoint so that the results can say how much of the machine it took.
"""
from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from monitoring.local_stack import free_port


@dataclass
class Run:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the load generator's own CPU time
    bodies: list = field(default_factory=list)

    def summary(self) -> dict:
        lat = np.array(self.latencies_s) * 1000 if self.latencies_s else np.array([np.nan])
        ok = self.statuses.get(200, 0)
        return {"requests": sum(self.statuses.values()) + self.errors, "ok": ok,
                "errors": self.errors + sum(n for s, n in self.statuses.items() if s != 200),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "throughput_rps": round(ok / self.wall_s, 2) if self.wall_s else 0.0,
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p90_ms": round(float(np.percentile(lat, 90)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2), "wall_s": round(self.wall_s, 2),
                "loadgen_cpu_ms_per_request": round(1000 * self.cpu_s / max(1, len(self.latencies_s)), 3)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _send(session: aiohttp.ClientSession, url: str, body: dict, run: Run, t_start: float, keep: bool,
                timeout: float) -> None:
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            data = await resp.read()
            run.statuses[resp.status] = run.statuses.get(resp.status, 0) + 1
            if resp.status == 200:
                run.latencies_s.append(time.perf_counter() - t_start)
                if keep:
                    run.bodies.append((json.loads(data), dict(resp.headers)))
    except (aiohttp.ClientError, asyncio.TimeoutError):
        run.errors += 1


def closed_loop(url: str, payloads: list[dict], concurrency: int, duration_s: float, max_requests: int = 100_000,
                keep: bool = False, timeout: float = 60.0) -> Run:
    """`concurrency` clients, each sending the next payload as soon as its last answer came back."""

    async def main() -> Run:
        run, counter = Run(), iter(range(max_requests))
        deadline = time.perf_counter() + duration_s
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            async def client():
                for i in counter:
                    if time.perf_counter() > deadline:
                        return
                    await _send(session, url, payloads[i % len(payloads)], run, time.perf_counter(), keep, timeout)
            cpu0, t0 = _cpu(), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            run.wall_s, run.cpu_s = time.perf_counter() - t0, _cpu() - cpu0
        return run

    return asyncio.run(main())


def open_loop(url: str, payloads: list[dict], rate: float, n_requests: int, seed: int = 0, timeout: float = 60.0) -> Run:
    """Poisson arrivals at `rate` per second; latency from each request's scheduled send time."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n_requests)
    schedule = np.cumsum(gaps)

    async def main() -> Run:
        run = Run()
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            cpu0, t0 = _cpu(), time.perf_counter()
            tasks = []
            for i, at in enumerate(schedule):
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(_send(session, url, payloads[i % len(payloads)], run, t0 + at, False, timeout)))
            await asyncio.gather(*tasks)
            run.wall_s, run.cpu_s = time.perf_counter() - t0, _cpu() - cpu0
        return run

    return asyncio.run(main())


NOOP_SERVER = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.json_response({"ok": True})
app = web.Application()
app.router.add_post("/noop", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def calibrate(payload: dict, concurrency: int = 16, duration_s: float = 5.0) -> dict:
    """What the generator can drive against a no-op endpoint, and its CPU cost per request."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", NOOP_SERVER, str(port)])
    try:
        wait_port(port)
        closed_loop(f"http://127.0.0.1:{port}/noop", [payload], 4, 1.0)  # warm up
        result = {f"c={c}": closed_loop(f"http://127.0.0.1:{port}/noop", [payload], c, duration_s).summary()
                  for c in (1, concurrency)}
    finally:
        proc.terminate()
        proc.wait(10)
    return result
