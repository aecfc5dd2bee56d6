"""End to end: /v1/chat latency per stage (from the x-stage-*-ms headers), at concurrency 1 and
under load, and the cost of each Ray Serve hop (a no-op chain of deployments, same machine).

    python -m benchmarks.chat [--quick] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from monitoring.local_stack import free_port

from .loadgen import closed_loop
from .report import machine, save_result
from .servers import ours

CONCURRENCY = (1, 2, 4, 8, 16)


def chat_requests() -> list[dict]:
    """The golden set's shopper messages (every intent, 8 languages), in a fixed order."""
    from models.graph_eval import load_golden

    return [{"query": case["query"]} for case in load_golden()]


def stage_breakdown(bodies: list) -> dict:
    stages: dict[str, list[float]] = {}
    for body, headers in bodies:
        for name, ms in body["timings_ms"].items():
            stages.setdefault(name, []).append(ms)
    return {name: {"p50_ms": round(float(np.percentile(v, 50)), 2), "p90_ms": round(float(np.percentile(v, 90)), 2),
                   "count": len(v)} for name, v in stages.items()}


def hop_cost(requests: int) -> dict:
    """p50 of a no-op request through the proxy and 0, 1, 2 and 4 DeploymentHandle hops, and the throughput
    of each chain at concurrency 16."""
    import ray
    from fastapi import FastAPI
    from ray import serve

    from serve.cli import start_ray

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Noop:
        def __init__(self, nxt=None):
            self.nxt = nxt

        async def __call__(self) -> int:
            return 0 if self.nxt is None else 1 + await self.nxt.remote()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, nxt=None):
            self.nxt = nxt

        @app.post("/")
        async def root(self) -> dict:
            return {"hops": 0 if self.nxt is None else 1 + await self.nxt.remote()}

    start_ray(metrics_port=free_port())
    out = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": (port := free_port())})
        for depth in (0, 1, 2, 4):
            chain = None
            for i in range(depth):
                chain = Noop.options(name=f"Noop{i}").bind(chain)
            serve.run(Ingress.bind(chain), name=f"d{depth}", route_prefix=f"/d{depth}")
            url = f"http://127.0.0.1:{port}/d{depth}/"
            closed_loop(url, [{}], 1, 1.0)
            r = closed_loop(url, [{}], 1, 10.0, requests).summary()
            # the most requests/s Ray Serve itself carries here: a ceiling for any model behind this route shape
            peak = closed_loop(url, [{}], 16, 5.0).summary()
            out[f"{depth}_hops"] = {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "requests": r["requests"],
                                    "c16_throughput_rps": peak["throughput_rps"]}
            serve.delete(f"d{depth}")
    finally:
        serve.shutdown()
        ray.shutdown()
    base = out["0_hops"]["p50_ms"]
    out["per_hop_p50_ms"] = round((out["4_hops"]["p50_ms"] - base) / 4, 2)
    return out


def run(quick: bool, out: Path, args: dict | None = None, deployments: dict | None = None, tag: str = "chat") -> dict:
    payloads = chat_requests()
    result = {"machine": machine(), "requests_per_point": len(payloads) if not quick else 40,
              "overrides": {"args": args or {}, "deployments": deployments or {}}, "concurrency": {}}
    with ours(args=args, deployments=deployments) as (url, ready_s):
        target = f"{url}/v1/chat"
        closed_loop(target, payloads, 2, 5.0)  # warm up
        for c in CONCURRENCY:
            n = result["requests_per_point"] if c == 1 else result["requests_per_point"] * 2
            run_ = closed_loop(target, payloads, c, 120.0 if not quick else 20.0, n, keep=True)
            result["concurrency"][f"c={c}"] = {**run_.summary(), "stages": stage_breakdown(run_.bodies),
                                               "degraded": sum(bool(b["degraded"]) for b, _ in run_.bodies)}
    if not quick:
        result["ray_serve_hops"] = hop_cost(300)
    save_result(out, tag, result)
    plot(result, out / f"{tag}.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["concurrency"]
    names = [n for n in next(iter(points.values()))["stages"] if n != "total"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    bottom = np.zeros(len(points))
    for name in names:
        vals = np.array([p["stages"].get(name, {}).get("p50_ms", 0.0) for p in points.values()])
        axes[0].bar(list(points), vals, bottom=bottom, label=name)
        bottom += vals
    axes[0].plot(list(points), [p["p50_ms"] for p in points.values()], "k.-", label="client p50 (end to end)")
    axes[0].set(ylabel="ms (p50 per stage, stacked)", title="/v1/chat: where the time goes")
    axes[0].legend(fontsize=8)
    axes[1].plot(list(points), [p["throughput_rps"] for p in points.values()], "o-")
    axes[1].set(ylabel="answers/s", title="/v1/chat throughput (closed loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--args", type=json.loads, default=None, help="AppArgs overrides (JSON), for tuning runs")
    parser.add_argument("--deployments", type=json.loads, default=None, help='e.g. {"Reranker": {"num_replicas": 2}}')
    parser.add_argument("--tag", default="chat")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = parser.parse_args(argv)
    run(a.quick, a.out, a.args, a.deployments, a.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
