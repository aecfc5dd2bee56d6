"""Write benchmarks/results/SUMMARY.md from the committed result files (tables; the plots beside them).

    python -m benchmarks.summary
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _header(r: dict) -> list[str]:
    m = r["machine"]
    return [f"`{r['command']}` at {r['commit']} on {r['date']}; {m['cores']} vCPUs {m['cpu']} "
            f"({', '.join(m['isa'])}), load average before the run {m.get('loadavg', 'n/a')}.", ""]


def stages(r: dict) -> list[str]:
    p = r["matmul_peak"]
    out = ["## Stages: ours vs the naive baseline", "", *_header(r),
           f"Matmul peak measured in the same run: fp32 {p['fp32_gflops']} GFLOP/s, bf16 {p['bf16_gflops']} GFLOP/s, "
           f"int8 {p['int8_gops']} GOP/s. {r['core_split']}.", "", "![stages](stages.png)", ""]
    for name, e in r["stages"].items():
        o, b, ratio = e["ours"], e["baseline"], e["ratio"]
        out += [f"### {name} (`{e['route']}`)", "",
                f"Tokens per sequence p5/p50/p95/max {e['tokens']['per_sequence_p5_p50_p95_max']}, "
                f"{e['tokens']['sequences_per_request']} sequences per request, {e['useful_gflop_per_request']} GFLOP per request. "
                f"Parity: {e['parity']}.", "",
                "| concurrency | ours req/s | ours p50 / p99 ms | baseline req/s | baseline p50 / p99 ms | throughput ratio |",
                "|---|---|---|---|---|---|"]
        for c in o["closed_loop"]:
            x, y = o["closed_loop"][c], b["closed_loop"][c]
            out.append(f"| {c} | {x['throughput_rps']} | {x['p50_ms']} / {x['p99_ms']} | {y['throughput_rps']} | "
                       f"{y['p50_ms']} / {y['p99_ms']} | {ratio['per_concurrency_throughput'][c]}x |")
        out += ["", "| open loop (of each max) | ours rate → p50 / p99 ms (errors) | baseline rate → p50 / p99 ms (errors) |",
                "|---|---|---|"]
        for f in o["open_loop"]:
            x, y = o["open_loop"][f], b["open_loop"][f]
            out.append(f"| {f} | {x['rate_rps']}/s → {x['p50_ms']} / {x['p99_ms']} ({x['errors']}) | "
                       f"{y['rate_rps']}/s → {y['p50_ms']} / {y['p99_ms']} ({y['errors']}) |")
        out += ["", f"Peak throughput **{ratio['max_throughput']}x** the baseline; fraction of the FLOP bound at peak: ours "
                f"{o['fraction_of_int8_peak']:.1%} of int8 peak ({o['fraction_of_fp32_peak']:.1%} of fp32), baseline "
                f"{b['fraction_of_fp32_peak']:.1%} of fp32 peak.", ""]
    return out


def chat(r: dict) -> list[str]:
    out = ["## /v1/chat end to end", "", *_header(r), "![chat](chat.png)", "",
           "| concurrency | answers/s | p50 / p90 / p99 ms | per-stage p50 ms |", "|---|---|---|---|"]
    for c, x in r["concurrency"].items():
        stages = ", ".join(f"{k} {v['p50_ms']}" for k, v in x["stages"].items())
        out.append(f"| {c} | {x['throughput_rps']} | {x['p50_ms']} / {x['p90_ms']} / {x['p99_ms']} | {stages} |")
    if "ray_serve_hops" in r:
        h = r["ray_serve_hops"]
        out += ["", "Ray Serve hops (no-op deployments, c=1, p50): " +
                ", ".join(f"{k.replace('_', ' ')} {v['p50_ms']} ms" for k, v in h.items() if isinstance(v, dict)) +
                f"; **{h['per_hop_p50_ms']} ms per DeploymentHandle hop**."]
        peaks = {k: v["c16_throughput_rps"] for k, v in h.items() if isinstance(v, dict) and "c16_throughput_rps" in v}
        if peaks:
            out.append("Throughput of the same no-op chains at c=16 (what Ray Serve itself carries on this machine): " +
                       ", ".join(f"{k.replace('_', ' ')} {v} req/s" for k, v in peaks.items()) + ".")
    return out + [""]


def _retrieval_rows(runs: list[dict], note: str = "") -> list[str]:
    out = []
    for run in runs:
        sampled = f" ({run['sampled']:,} sampled)" if run.get("sampled") else ""
        for kind, param in (("hnsw", "ef_search"), ("ivf", "nprobe"), ("ivfpq", "nprobe")):
            if kind not in run:
                continue
            x, spec = run[kind], run[kind]["spec"]
            name = {"hnsw": f"HNSW M{spec['m']}, efC {spec['ef_construction']}",
                    "ivf": f"IVF{spec['nlist']}-Flat, HNSW{spec['m']} quantizer",
                    "ivfpq": f"IVF{spec['nlist']}, PQ{spec['pq_m']}x4 fast-scan, exact re-rank of {spec['rerank']}"}[kind]
            sweep = "; ".join(f"{s[param]} → {s['recall@10']} ({s['id_recall@10']}), {s['p50_ms']} / {s['p99_ms']} "
                              f"(cpu {s['cpu_p50_ms']})" for s in x["sweep"])
            built = f"{x['build_s']}{' (earlier run)' if x.get('built_by_an_earlier_run') else ''}"
            out.append(f"| {run['products']:,}{sampled}{note} | {name} | {built} | {x['index_memory_mb']} | {sweep} |")
    return out


def retrieval(r: dict) -> list[str]:
    served = r["served"]
    out = ["## Retrieval at scale (FAISS HNSW and IVF-PQ)", "", *_header(r), "![retrieval](retrieval.png)", "",
           f"{r['queries']} shopper queries; recall@10 against exact inner-product search over the same vectors "
           f"(tie-aware, ann-benchmarks' convention; id recall in brackets); latency of one query on one thread (what a "
           f"Retriever replica does), wall p50 / p99 and the thread's CPU p50; served: hnsw efSearch "
           f"{served['hnsw']['ef_search']}, ivfpq nprobe {served['ivfpq']['nprobe']} with {served['ivfpq']['rerank']} "
           f"re-ranked. {r['embedded_products']:,} products embedded; beyond them, vectors sampled from a Gaussian "
           f"mixture fitted to them. Build: 2 threads.", "",
           "| products | index | build s | index MB | efSearch or nprobe → recall@10 (id recall), p50 / p99 ms (cpu p50) |",
           "|---|---|---|---|---|"]
    out += _retrieval_rows(r["runs"]) + _retrieval_rows(r.get("real_only_runs", []), ", embedded only")
    for run in r["runs"]:
        if "truth_share_sampled" in run:
            out += ["", f"At {run['products']:,}: {run['truth_share_sampled']:.1%} of the exact top 10 are sampled vectors."]
    return out + [""]


def coldstart(r: dict) -> list[str]:
    out = ["## Cold start", "", *_header(r)]
    out += ["- restart to first answer (models and indexes built): " +
            ", ".join(f"{x['first_answer_s']} s" for x in r["restart"])]
    if "fresh_clone" in r:
        f = r["fresh_clone"]
        out += [f"- fresh clone to first answer (`git clone` + `make run`, empty MANGAASSIST_HOME): {f['first_answer_s']} s"]
    return out + [""]


def main() -> int:
    lines = ["# Benchmark results", "", "Generated by `python -m benchmarks.summary` from the JSON files here; "
             "each section names the command that produced it.", ""]
    for name, fn in (("stages", stages), ("chat", chat), ("retrieval", retrieval), ("coldstart", coldstart)):
        r = _load(name)
        if r:
            lines += fn(r)
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
