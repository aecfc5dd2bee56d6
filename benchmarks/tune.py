"""Tuning runs: the same three probes under different settings, one fresh application each.

    python -m benchmarks.tune [--only NAME,...] [--out benchmarks/results]

Probes: /v1/classify throughput at concurrency 16 (one text per request), /v1/rerank p50 at
concurrency 1 (a query with 20 catalog candidates), /v1/chat p50 at concurrency 1 (the golden
queries). The winners became the defaults in serve/config/local.yaml (see the tuning guide in
benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from serve.index import corpus

from .chat import chat_requests, stage_breakdown
from .loadgen import closed_loop
from .report import machine, save_result
from .servers import ours
from .stages import intent_requests

UNTUNED = {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},  # the settings before tuning (a97bdb1 and earlier)
           "args": {"retrieve_k": 30, "reranker": {"threads": None, "max_length": None},
                    **{b: {"batch_wait_timeout_s": 0.005} for b in ("intent_batching", "embedder_batching", "reranker_batching")}}}
TOP20 = {"retrieve_k": 20, "reranker": {"threads": 2}}
CONFIGS: dict[str, dict] = {
    "untuned": UNTUNED,
    # serve/config/local.yaml without throughput mode (the defaults while it was opt-in; start_ray turns it on)
    "defaults": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}},
    "throughput_optimized": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}},
    "top20_2_threads": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, "args": TOP20},
    "top20_len96": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                    "args": {**TOP20, "reranker": {"threads": 2, "max_length": 96}}},
    "top20_len64": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                    "args": {**TOP20, "reranker": {"threads": 2, "max_length": 64}}},
    "top20_len64_wait1ms": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                            "args": {**TOP20, "reranker": {"threads": 2, "max_length": 64},
                                     **{b: {"batch_wait_timeout_s": 0.001} for b in
                                        ("intent_batching", "embedder_batching", "reranker_batching")}}},
}


def rerank_probe(n: int = 30) -> list[dict]:
    rng = random.Random(3)
    docs = [d.text for d in corpus("catalog")]
    return [{"query": q["query"], "documents": rng.sample(docs, 20)} for q in chat_requests()[:n]]


QUALITY = ("chat.ndcg_at_5", "rerank.ndcg_at_10", "search.ndcg_at_10", "chat.context_precision", "answer.fact_coverage",
           "assertions.pass_rate", "rerank_injection.pass_rate", "intent.accuracy")


def quality(url: str) -> dict:
    """The golden-set evaluation of what shoppers get (models/graph_eval.py), headline metrics."""
    from models.graph_eval import evaluate_graph

    metrics = evaluate_graph(url, track=False, with_bertscore=False, out=Path("/tmp/mangaassist-tune-eval"),
                             log=lambda *_: None).metrics
    return {k: round(v, 4) for k, v in metrics.items() if k in QUALITY}


def probe(name: str, config: dict, with_quality: bool = False) -> dict:
    saved = {k: os.environ.get(k) for k in config.get("env", {})}
    os.environ.update(config.get("env", {}))
    try:
        with ours(args=config.get("args"), deployments=config.get("deployments")) as (url, ready_s):
            closed_loop(f"{url}/v1/chat", chat_requests(), 2, 5.0)  # warm up
            classify = closed_loop(f"{url}/v1/classify", intent_requests(400, 0), 16, 8.0).summary()
            rerank = closed_loop(f"{url}/v1/rerank", rerank_probe(), 1, 60.0, 30).summary()
            chat_run = closed_loop(f"{url}/v1/chat", chat_requests(), 1, 90.0, 60, keep=True)
            chat = {**chat_run.summary(), "stages": stage_breakdown(chat_run.bodies)}
            golden = quality(url) if with_quality else None
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    row = {"config": config, "ready_s": round(ready_s, 1), "classify_c16_rps": classify["throughput_rps"],
           "classify_c16_p99_ms": classify["p99_ms"], "rerank20_c1_p50_ms": rerank["p50_ms"],
           "chat_c1_p50_ms": chat["p50_ms"], "chat_c1_p90_ms": chat["p90_ms"], "chat_stages": chat["stages"],
           "errors": classify["errors"] + rerank["errors"] + chat["errors"], "quality": golden}
    print(f"{name}: classify {row['classify_c16_rps']} req/s, rerank20 p50 {row['rerank20_c1_p50_ms']} ms, "
          f"chat p50 {row['chat_c1_p50_ms']} ms, quality {golden}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="tuning")
    parser.add_argument("--quality", action="store_true", help="also run the golden-set evaluation (~3 min each)")
    args = parser.parse_args(argv)
    rows = {name: probe(name, CONFIGS[name], args.quality) for name in args.only.split(",")}
    save_result(args.out, args.tag, {"machine": machine(), "runs": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
