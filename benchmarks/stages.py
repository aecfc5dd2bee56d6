"""Stage benchmarks: the intent classifier and the reranker, ours against the naive baseline.

    python -m benchmarks.stages [--quick] [--out benchmarks/results]

Ours: the MangaAssist application from serve/config/local.yaml (/v1/classify, /v1/rerank: proxy ->
Gateway -> the model deployment, with dynamic batching and ONNX Runtime int8). Baseline:
benchmarks/baseline_app.py (one FastAPI process, per-request torch fp32 via transformers'
pipeline and sentence-transformers' CrossEncoder), same weights, same seeded requests. Outputs
are checked for parity first; then closed loops at concurrency 1-32 and open loops with Poisson
arrivals at 25/50/75/90% of each system's measured maximum. Throughput is also given as a
fraction of the machine's FLOP bound, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import yaml

from models.datasets import load_intents
from models.runtime import TextModel
from serve.cli import CONFIG
from serve.index import corpus
from serve.loading import resolve_model
from serve.routing import index_for

from .flops import forward_flops, matmul_peak
from .loadgen import calibrate, closed_loop, open_loop
from .report import machine, save_result
from .servers import baseline, ours

CONCURRENCY = (1, 2, 4, 8, 16, 32)
LOAD_FRACTIONS = (0.25, 0.5, 0.75, 0.9)


def served_max_length(model: str) -> int:
    """What the served config truncates to: its `max_length`, else the model card's (the baseline gets the same)."""
    args = yaml.safe_load(Path(CONFIG).read_text())["applications"][0]["args"]
    card = json.loads((resolve_model(model) / "model_card.json").read_text())
    return args.get(model, {}).get("max_length") or card["max_length"]


def intent_requests(n: int, seed: int) -> list[dict]:
    texts = [ex.text for ex in load_intents("test")]
    random.Random(seed).shuffle(texts)
    return [{"texts": [t]} for t in texts[:n]]


def rerank_requests(n: int, seed: int) -> list[dict]:
    """A shopper's question with 20-50 candidates drawn from the real catalog and policy documents."""
    rng = random.Random(seed)
    queries = [ex.text for ex in load_intents("test") if index_for(ex.label) == "catalog" or ex.label == "shipping"]
    docs = [d.text for d in corpus("catalog")] + [d.text for d in corpus("policy")]
    return [{"query": rng.choice(queries), "documents": rng.sample(docs, rng.randint(20, 50))} for _ in range(n)]


def useful_flops(stage: str, payloads: list[dict]) -> tuple[float, dict]:
    """Mean FLOPs per request over real (unpadded, truncated as served) tokens, and the token histogram."""
    model = TextModel(resolve_model(stage), "onnx", "int8", threads=1)
    if stage == "reranker":
        model.max_length = served_max_length("reranker")
        lengths = [model.token_counts([p["query"]] * len(p["documents"]), p["documents"]) for p in payloads]
    else:
        lengths = [model.token_counts(p["texts"]) for p in payloads]
    flat = np.concatenate(lengths)
    hist = {"per_sequence_p5_p50_p95_max": [int(np.percentile(flat, q)) for q in (5, 50, 95)] + [int(flat.max())],
            "sequences_per_request": round(float(np.mean([len(x) for x in lengths])), 1)}
    return float(np.mean([sum(forward_flops(t) for t in x) for x in lengths])), hist


def parity(stage: str, ours_bodies: list, base_bodies: list) -> dict:
    if stage == "intent":
        a = [b["predictions"][0]["label"] for b, _ in ours_bodies]
        c = [b["predictions"][0]["label"] for b, _ in base_bodies]
        return {"top_label_agreement": round(float(np.mean([x == y for x, y in zip(a, c)])), 4), "requests": len(a)}
    from scipy.stats import spearmanr

    rho, top1, diff = [], [], []
    for (x, _), (y, _) in zip(ours_bodies, base_bodies):
        sx = {r["index"]: r["score"] for r in x["results"]}
        sy = {r["index"]: r["score"] for r in y["results"]}
        keys = sorted(sx)
        rho.append(spearmanr([sx[k] for k in keys], [sy[k] for k in keys])[0])
        top1.append(x["results"][0]["index"] == y["results"][0]["index"])
        diff.append(max(abs(sx[k] - sy[k]) for k in keys))
    return {"mean_spearman": round(float(np.mean(rho)), 4), "top1_agreement": round(float(np.mean(top1)), 4),
            "max_abs_score_diff": round(float(max(diff)), 4), "requests": len(rho)}


def measure(url: str, route: str, payloads: list[dict], duration_s: float, quick: bool) -> dict:
    target = f"{url}{route}"
    closed_loop(target, payloads, 4, 2.0)  # warm up every replica and batch path
    closed = {}
    for c in CONCURRENCY:
        closed[c] = closed_loop(target, payloads, c, duration_s).summary()
        print(f"  {route} closed c={c}: {closed[c]['throughput_rps']} req/s, p99 {closed[c]['p99_ms']} ms", flush=True)
    peak = max(r["throughput_rps"] for r in closed.values())
    opened = {}
    for frac in LOAD_FRACTIONS:
        rate = peak * frac
        n = max(20, int(rate * (duration_s if not quick else 3)))
        opened[f"{int(frac * 100)}%"] = r = {"rate_rps": round(rate, 2), **open_loop(target, payloads, rate, n).summary()}
        print(f"  {route} open {frac:.0%} ({rate:.1f}/s): p99 {r['p99_ms']} ms, errors {r['errors']}", flush=True)
    return {"closed_loop": {f"c={c}": r for c, r in closed.items()}, "open_loop": opened, "max_throughput_rps": peak}


def run(quick: bool, out: Path) -> dict:
    peak = matmul_peak()
    stages = {"intent": ("/v1/classify", intent_requests(400, 0), 4.0 if quick else 8.0),
              "reranker": ("/v1/rerank", rerank_requests(120, 1), 5.0 if quick else 12.0)}
    result = {"machine": machine(), "matmul_peak": peak,
              "loadgen_calibration": calibrate({"texts": ["hello"]}, duration_s=2.0),
              "core_split": "server and load generator share the machine's cores (2 vCPUs: none to spare); "
                            "the generator's own CPU per request is in every row", "stages": {}}
    systems: dict[str, dict] = {}
    print("baseline ...", flush=True)
    with baseline(served_max_length("reranker")) as url:
        systems["baseline"] = {name: {"parity_bodies": closed_loop(f"{url}{route}", payloads[:60], 1, 600, 60, keep=True).bodies,
                                      **measure(url, route, payloads, dur, quick)}
                               for name, (route, payloads, dur) in stages.items()}
    print("ours ...", flush=True)
    with ours() as (url, _):
        systems["ours"] = {name: {"parity_bodies": closed_loop(f"{url}{route}", payloads[:60], 1, 600, 60, keep=True).bodies,
                                  **measure(url, route, payloads, dur, quick)}
                           for name, (route, payloads, dur) in stages.items()}
    for name, (route, payloads, _) in stages.items():
        flops, hist = useful_flops(name, payloads)
        entry = {"route": route, "tokens": hist, "useful_gflop_per_request": round(flops / 1e9, 3),
                 "parity": parity(name, systems["ours"][name].pop("parity_bodies"), systems["baseline"][name].pop("parity_bodies"))}
        for system in ("ours", "baseline"):
            r = systems[system][name]
            r["fraction_of_fp32_peak"] = round(r["max_throughput_rps"] * flops / (peak["fp32_gflops"] * 1e9), 4)
            r["fraction_of_int8_peak"] = round(r["max_throughput_rps"] * flops / (peak["int8_gops"] * 1e9), 4)
            entry[system] = r
        o, b = entry["ours"], entry["baseline"]
        best = max(b["closed_loop"], key=lambda c: b["closed_loop"][c]["throughput_rps"])
        entry["ratio"] = {
            "max_throughput": round(o["max_throughput_rps"] / b["max_throughput_rps"], 2),
            "p99_at_baseline_best_concurrency": {"concurrency": best, "ours_ms": o["closed_loop"][best]["p99_ms"],
                                                 "baseline_ms": b["closed_loop"][best]["p99_ms"]},
            "per_concurrency_throughput": {c: round(o["closed_loop"][c]["throughput_rps"] / b["closed_loop"][c]["throughput_rps"], 2)
                                           for c in o["closed_loop"]},
        }
        result["stages"][name] = entry
    save_result(out, "stages", result)
    plot(result, out / "stages.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    for row, (name, entry) in enumerate(result["stages"].items()):
        for system, style in (("ours", "o-"), ("baseline", "s--")):
            closed = entry[system]["closed_loop"]
            cs = [int(c.split("=")[1]) for c in closed]
            axes[row, 0].plot(cs, [r["throughput_rps"] for r in closed.values()], style, label=system)
            axes[row, 1].plot(cs, [r["p99_ms"] for r in closed.values()], style, label=f"{system} p99")
            axes[row, 1].plot(cs, [r["p50_ms"] for r in closed.values()], style, alpha=0.4, label=f"{system} p50")
            opened = entry[system]["open_loop"]
            axes[row, 2].plot([r["rate_rps"] for r in opened.values()], [r["p99_ms"] for r in opened.values()], style,
                              label=f"{system} p99")
        axes[row, 0].set(xscale="log", xlabel="concurrency (closed loop)", ylabel="requests/s",
                         title=f"{name}: throughput ({entry['ratio']['max_throughput']}x at peak)")
        axes[row, 1].set(xscale="log", yscale="log", xlabel="concurrency (closed loop)", ylabel="ms", title=f"{name}: latency")
        axes[row, 2].set(xlabel="offered load, Poisson (requests/s)", ylabel="ms", yscale="log",
                         title=f"{name}: open loop (25-90% of each max)")
        for ax in axes[row]:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loops (a smoke run, not for the record)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    run(args.quick, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
