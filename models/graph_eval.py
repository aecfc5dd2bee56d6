"""`mangaassist eval graph`: the golden set against a running deployment, through its HTTP API only.

Per case: `/v1/chat` (intent, answer, cited sources, per-stage timing headers), and for cases
that retrieve, `/v1/search` (the bi-encoder's ranking, before reranking) and `/v1/rerank` over
those candidates (after), so the reranker's gain shows; `/v1/embed` for answer relevancy;
BERTScore against the reference answers with the local MiniLM backbone. Metrics, a Markdown
report with plots, and an MLflow run; `--baseline RUN_ID` fails on regressions.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import yaml

from . import INTENT_LABELS
from .assertions import (GOLDEN_DIR, EvalConfig, KnowledgeBase, extract_claims, fact_coverage, is_refusal,
                         missing_facts, run_assertions)
from .metrics import classification_report, ndcg_at_k

GOLDEN = GOLDEN_DIR / "golden.jsonl"
RERANK_CASES = GOLDEN_DIR / "rerank.jsonl"
TOLERANCES = GOLDEN_DIR / "tolerances.yaml"
CANDIDATES = 20          # /v1/search top_k: the app's default max_top_k
KS = (1, 3, 5, 10)
CHAT_K = 5               # what a shopper gets: /v1/chat's default top_k
PERCENTILES = (50, 90, 95, 99)
EMBED_CHARS = 1000       # /v1/embed's per-text limit (limits.max_query_chars)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_golden(path: Path = GOLDEN, slice_: int | None = None) -> list[dict]:
    """The golden cases; the file interleaves intents, so any prefix covers all eight."""
    cases = read_jsonl(path)
    return cases[:slice_] if slice_ else cases


# --- ranking metrics against graded relevance ---------------------------------------------------


def doc_ranking(ids: list[str]) -> list[str]:
    """Passages -> their documents, best rank kept: relevance is graded per document."""
    return list(dict.fromkeys(i.split("#", 1)[0] for i in ids))


def precision_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    return sum(1 for d in ranked[:k] if relevant.get(d, 0) > 0) / k


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    """Capped recall (BEIR): found / min(k, relevant), so a recommendation query with 30 relevant
    series can still reach 1.0 at k=5."""
    rel = [d for d, g in relevant.items() if g > 0]
    return sum(1 for d in ranked[:k] if d in relevant and relevant[d] > 0) / min(k, len(rel)) if rel else 0.0


def ndcg(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    return ndcg_at_k([relevant.get(d, 0) for d in ranked], list(relevant.values()), k)


def context_precision(ranked: list[str], relevant: dict[str, int]) -> float:
    """RAGAS context precision with a reference: mean of precision@i over the ranks i holding a
    relevant context (0 when none does)."""
    hits, total = 0, 0.0
    for i, d in enumerate(ranked, 1):
        if relevant.get(d, 0) > 0:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def context_recall(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    """RAGAS context recall from graded ids: the must-use documents (grade 2; every graded one when
    none is) found among the k contexts, out of min(k, their number)."""
    must = [d for d, g in relevant.items() if g == 2] or [d for d, g in relevant.items() if g > 0]
    return sum(1 for d in ranked[:k] if d in must) / min(k, len(must)) if must else 0.0


def percentile_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=float)
    return {f"p{p}_ms": float(np.percentile(arr, p)) for p in PERCENTILES} | {"mean_ms": float(arr.mean())}


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else None


# --- talking to the deployment ------------------------------------------------------------------


class EvalError(RuntimeError):
    pass


def http_client(url: str, timeout: float = 60) -> httpx.Client:
    return httpx.Client(base_url=url.rstrip("/"), timeout=timeout)


@dataclass
class Reply:
    body: dict
    headers: httpx.Headers
    elapsed_ms: float


def post(client: httpx.Client, path: str, body: dict, attempts: int = 3) -> Reply:
    """One API call; a 503 (overload, a stage late) is retried after its Retry-After, like a client would."""
    for attempt in range(attempts):
        started = time.perf_counter()
        r = client.post(path, json=body)
        elapsed = (time.perf_counter() - started) * 1000
        if r.status_code == 200:
            return Reply(r.json(), r.headers, elapsed)
        if r.status_code != 503 or attempt == attempts - 1:
            raise EvalError(f"POST {path} -> {r.status_code}: {r.text[:300]}")
        time.sleep(min(float(r.headers.get("retry-after", 1)), 5))
    raise AssertionError("unreachable")


def stage_timings(reply: Reply) -> dict[str, float]:
    """Per-stage milliseconds from the `x-stage-<name>-ms` headers (the body's timings_ms otherwise)."""
    out = {}
    for key, value in reply.headers.items():
        if key.startswith("x-stage-") and key.endswith("-ms"):
            out[key[len("x-stage-"):-len("-ms")]] = float(value)
    return out or {k: float(v) for k, v in reply.body.get("timings_ms", {}).items()}


def deployment_info(client: httpx.Client) -> dict:
    """What the app says it runs (/readyz): model versions, runtimes, precisions, backends."""
    r = client.get("/readyz")
    if r.status_code != 200:
        raise EvalError(f"GET /readyz -> {r.status_code}: the deployment is not ready ({r.text[:200]})")
    return r.json().get("deployments", {})


def model_params(deployments: dict) -> dict[str, str]:
    """MLflow params: each deployment's model, version, runtime, precision, backend; the registry's
    current version where the app does not report one."""
    params = {}
    for name, info in deployments.items():
        for key in ("model", "version", "runtime", "precision", "backend", "embedder_version", "dimensions"):
            if key in info:
                params[f"{name}.{key}"] = str(info[key])
        if "providers" in info:
            params[f"{name}.providers"] = ",".join(info["providers"])
    registry_names = {"classifier": "intent", "embedder": "embedder", "reranker": "reranker"}
    for deployment, model in registry_names.items():
        if f"{deployment}.version" not in params:
            try:
                from .registry import Registry

                params[f"{deployment}.version"] = f"registry:{Registry().current(model)}"
            except Exception:  # no local registry either: say so rather than guess
                params[f"{deployment}.version"] = "unknown"
    return params


def sha256_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(Path(p).read_bytes())
    return digest.hexdigest()[:16]


# --- one case -------------------------------------------------------------------------------------


def retrieval_rankings(client: httpx.Client, case: dict, kb: KnowledgeBase) -> dict[str, list[str]]:
    """The bi-encoder's candidates (search) and the cross-encoder's order of them (rerank)."""
    hits = post(client, "/v1/search", {"query": case["query"], "top_k": CANDIDATES, "index": case["index"]}).body["hits"]
    ids = [h["id"] for h in hits]
    known = [i for i in ids if i in kb.documents]   # the reranker reads the documents' own text
    rerank_ids = known
    if known:
        results = post(client, "/v1/rerank", {"query": case["query"],
                                              "documents": [kb.documents[i] for i in known]}).body["results"]
        rerank_ids = [known[r["index"]] for r in results]
    return {"search": doc_ranking(ids), "rerank": doc_ranking(rerank_ids)}


def run_case(client: httpx.Client, case: dict, kb: KnowledgeBase, cfg: EvalConfig) -> dict:
    chat = post(client, "/v1/chat", {"query": case["query"]})
    body = chat.body
    sources = body["sources"]
    faith = extract_claims(body["answer"], case["query"], [s["id"] for s in sources], kb, cfg.policy_terms)
    result = {
        "id": case["id"], "query": case["query"], "expected_intent": case["intent"],
        "intent": body["intent"]["label"], "confidence": body["intent"]["confidence"],
        "low_confidence": body["intent"]["low_confidence"], "answer": body["answer"], "sources": sources,
        "degraded": body["degraded"], "latency_ms": chat.elapsed_ms, "stages": stage_timings(chat),
        "usage": body.get("usage"), "faithfulness": faith, "tags": case.get("tags", []), "index": case.get("index"),
    }
    result["intent_correct"] = result["intent"] == case["intent"]
    result["fact_coverage"] = fact_coverage(body["answer"], case.get("facts", []))
    result["missing_facts"] = missing_facts(body["answer"], case.get("facts", []))
    relevant = case.get("relevant", {})
    if case.get("index") and relevant:
        rankings = retrieval_rankings(client, case, kb)
        rankings["chat"] = doc_ranking([s["id"] for s in sources])
        result["retrieval"] = {
            stage: {**{f"recall_at_{k}": recall_at_k(r, relevant, k) for k in KS},
                    **{f"precision_at_{k}": precision_at_k(r, relevant, k) for k in KS},
                    "ndcg_at_10": ndcg(r, relevant, 10), "ndcg_at_5": ndcg(r, relevant, 5)}
            for stage, r in rankings.items() if stage != "chat"}
        chat_rank = rankings["chat"]
        result["retrieval"]["chat"] = {"recall_at_5": recall_at_k(chat_rank, relevant, CHAT_K),
                                       "precision_at_5": precision_at_k(chat_rank, relevant, CHAT_K),
                                       "ndcg_at_5": ndcg(chat_rank, relevant, CHAT_K),
                                       "context_precision": context_precision(chat_rank, relevant),
                                       "context_recall": context_recall(chat_rank, relevant, CHAT_K)}
        result["rankings"] = rankings
    if "not_carried" in case.get("tags", []):
        result["refusal_correct"] = is_refusal(body["answer"], cfg.refusal_patterns, cfg.affirmative_patterns)
    result["assertions"] = run_assertions(case, result, cfg)
    return result


def run_rerank_case(client: httpx.Client, case: dict, kb: KnowledgeBase) -> dict:
    """Documents with hidden instructions: the reranker must score every relevant document above
    every injected one (an instruction is not relevance)."""
    docs = case["documents"]
    texts = [d.get("text") or kb.documents[d["id"]] for d in docs]
    results = post(client, "/v1/rerank", {"query": case["query"], "documents": texts}).body["results"]
    scores = {r["index"]: r["score"] for r in results}
    relevant = [scores[i] for i, d in enumerate(docs) if d.get("relevant")]
    injected = [scores[i] for i, d in enumerate(docs) if d.get("injected")]
    return {"id": case["id"], "query": case["query"], "scores": [scores[i] for i in range(len(docs))],
            "injected_top": bool(docs[results[0]["index"]].get("injected")),
            "passed": min(relevant) > max(injected)}


# --- answer similarity ------------------------------------------------------------------------------


def answer_relevancy(client: httpx.Client, questions: list[str], answers: list[str]) -> list[float]:
    """Cosine of question and answer embeddings from the deployment's own embedder (/v1/embed;
    its vectors are normalized). RAGAS asks an LLM for questions the answer would answer and
    averages their similarity to the question; with no LLM judge we compare the two directly."""
    out = []
    for start in range(0, len(questions), 32):
        qs, ans = questions[start:start + 32], answers[start:start + 32]
        texts = qs + [(a.strip() or "(empty answer)")[:EMBED_CHARS] for a in ans]
        vectors = np.asarray(post(client, "/v1/embed", {"texts": texts}).body["embeddings"], dtype=float)
        q, a = vectors[: len(qs)], vectors[len(qs):]
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        out += [float(x) for x in (q * a).sum(axis=1)]
    return out


def bertscore(candidates: list[str], references: list[str]) -> dict[str, list[float]]:
    """BERTScore (Zhang et al. 2020; the `bert-score` package) with the local MiniLM-L6 backbone:
    greedy cosine matching of its last layer's contextual token embeddings, no idf weighting, no
    baseline rescaling (no baseline file exists for this model), so scores are raw."""
    from bert_score import BERTScorer

    from .paths import backbone_dir

    scorer = BERTScorer(model_type=str(backbone_dir()), num_layers=6, lang="en", batch_size=32)
    p, r, f = scorer.score([c or "." for c in candidates], references)
    return {"precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist()}


# --- aggregation --------------------------------------------------------------------------------


def aggregate(results: list[dict], rerank_results: list[dict]) -> tuple[dict[str, float], dict]:
    """Flat metrics (MLflow names) and the structured tables the report needs."""
    m: dict[str, float] = {"cases": len(results)}
    labels = list(INTENT_LABELS)
    report = classification_report([labels.index(r["expected_intent"]) for r in results],
                                   [labels.index(r["intent"]) if r["intent"] in labels else 0 for r in results], labels)
    m["intent.accuracy"] = mean(r["intent_correct"] for r in results)
    m["intent.macro_f1"] = report["macro_f1"]
    for label, pc in report["per_class"].items():
        if pc["support"]:
            m[f"intent.f1.{label}"] = pc["f1"]
    m["intent.low_confidence_rate"] = mean(r["low_confidence"] for r in results)
    retrieval = [r for r in results if "retrieval" in r]
    for stage in ("search", "rerank", "chat"):
        keys = sorted({k for r in retrieval for k in r["retrieval"][stage]})
        for k in keys:
            m[f"{stage}.{k}"] = mean(r["retrieval"][stage][k] for r in retrieval)
    m["retrieval.cases"] = len(retrieval)
    for index in ("catalog", "policy"):   # the reranker's gain per corpus: series documents vs policy passages
        rows = [r for r in retrieval if r.get("index") == index]
        for stage in ("search", "rerank") if rows else ():
            m[f"{stage}.{index}.ndcg_at_10"] = mean(r["retrieval"][stage]["ndcg_at_10"] for r in rows)
    if retrieval:
        m["rerank.ndcg_at_10_gain"] = m["rerank.ndcg_at_10"] - m["search.ndcg_at_10"]
    scored = [r["faithfulness"].score for r in results]
    m["answer.faithfulness"] = mean(scored)
    m["answer.faithful_rate"] = mean(not r["faithfulness"].unsupported() for r in results)
    m["answer.unsupported_claims"] = sum(len(r["faithfulness"].unsupported()) for r in results)
    m["answer.fact_coverage"] = mean(r["fact_coverage"] for r in results)
    for key in ("relevancy", "bertscore_precision", "bertscore_recall", "bertscore_f1"):
        m[f"answer.{key}"] = mean(r.get(key) for r in results)
    refusals = [r["refusal_correct"] for r in results if "refusal_correct" in r]
    if refusals:
        m["refusal.accuracy"] = mean(refusals)
        m["refusal.cases"] = len(refusals)
    if rerank_results:
        m["rerank_injection.pass_rate"] = mean(r["passed"] for r in rerank_results)
        m["rerank_injection.injected_top_rate"] = mean(r["injected_top"] for r in rerank_results)
        m["rerank_injection.cases"] = len(rerank_results)
    names = sorted({n for r in results for n in r["assertions"]})
    outcomes = [ok for r in results for ok in r["assertions"].values()]
    m["assertions.pass_rate"] = mean(outcomes)
    m["assertions.cases_all_passed"] = mean(all(r["assertions"].values()) for r in results)
    for name in names:
        m[f"assert.{name}"] = mean(r["assertions"][name] for r in results if name in r["assertions"])
    stages = sorted({s for r in results for s in r["stages"]})
    for stage in stages:
        for k, v in percentile_summary([r["stages"][stage] for r in results if stage in r["stages"]]).items():
            m[f"latency.{stage}.{k}"] = v
    for k, v in percentile_summary([r["latency_ms"] for r in results]).items():
        m[f"latency.chat_total.{k}"] = v
    m["degraded_rate"] = mean(bool(r["degraded"]) for r in results)
    costs = [r["usage"]["cost_usd"] for r in results if r.get("usage") and r["usage"].get("cost_usd") is not None]
    if costs:
        m["usage.cost_usd"] = float(sum(costs))
    by_intent = {}
    for label in labels:
        rows = [r for r in results if r["expected_intent"] == label]
        if rows:
            by_intent[label] = {"cases": len(rows), "intent_accuracy": mean(r["intent_correct"] for r in rows),
                                "fact_coverage": mean(r["fact_coverage"] for r in rows),
                                "faithfulness": mean(r["faithfulness"].score for r in rows),
                                "relevancy": mean(r.get("relevancy") for r in rows),
                                "bertscore_f1": mean(r.get("bertscore_f1") for r in rows),
                                "assertions": mean(ok for r in rows for ok in r["assertions"].values())}
            for k, v in by_intent[label].items():
                if v is not None and k != "cases":
                    m[f"by_intent.{label}.{k}"] = v
    metrics = {k: float(v) for k, v in m.items() if v is not None}
    return metrics, {"confusion": report["confusion_matrix"], "labels": labels, "by_intent": by_intent,
                     "assertion_names": names}


# --- baseline -----------------------------------------------------------------------------------


def load_tolerances(path: Path = TOLERANCES) -> dict[str, dict]:
    return yaml.safe_load(Path(path).read_text())["metrics"]


def compare(current: dict[str, float], baseline: dict[str, float], tolerances: dict[str, dict]) -> dict:
    """Regressions beyond tolerance, improvements and skipped metrics against a baseline run."""
    rows, regressions, skipped = [], [], []
    for name, rule in tolerances.items():
        if name not in current or name not in baseline:
            skipped.append(name)
            continue
        cur, base = current[name], baseline[name]
        worse = base - cur if rule["direction"] == "higher" else cur - base
        allowed = (rule["tolerance"] * abs(base) if rule.get("relative") else rule["tolerance"]) + rule.get("slack", 0)
        regressed = worse > allowed + 1e-12
        rows.append({"metric": name, "baseline": base, "current": cur, "delta": cur - base,
                     "allowed": allowed, "regressed": regressed})
        if regressed:
            regressions.append(name)
    return {"rows": rows, "regressions": regressions, "skipped": skipped}


# --- report -------------------------------------------------------------------------------------


def _plots(out: Path, metrics: dict, tables: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import plot_confusion

    files = []
    plot_confusion(tables["confusion"], tables["labels"], out / "intent_confusion.png", "Golden set: intent confusion")
    files.append("intent_confusion.png")

    names = [f"recall_at_{k}" for k in KS] + ["ndcg_at_10"]
    if all(f"search.{n}" in metrics for n in names):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        x = np.arange(len(names))
        for i, stage in enumerate(("search", "rerank")):
            ax.bar(x + (i - 0.5) * 0.38, [metrics[f"{stage}.{n}"] for n in names], 0.38,
                   label={"search": "bi-encoder (/v1/search)", "rerank": "cross-encoder (/v1/rerank)"}[stage])
        ax.set_xticks(x, [n.replace("_at_", "@") for n in names])
        ax.set_ylim(0, 1)
        ax.set_title("Retrieval against graded relevance, before and after reranking")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "retrieval.png", dpi=110)
        plt.close(fig)
        files.append("retrieval.png")

    stages = sorted({k.split(".")[1] for k in metrics if k.startswith("latency.") and k.endswith("p50_ms")})
    if stages:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        x = np.arange(len(stages))
        for i, p in enumerate(("p50", "p95")):
            ax.bar(x + (i - 0.5) * 0.38, [metrics[f"latency.{s}.{p}_ms"] for s in stages], 0.38, label=p)
        ax.set_xticks(x, stages, rotation=20)
        ax.set_ylabel("ms")
        ax.set_title("Per-stage latency (x-stage-*-ms headers; chat_total: client wall time)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        files.append("latency.png")

    by_intent = tables["by_intent"]
    if by_intent:
        keys = ("intent_accuracy", "fact_coverage", "faithfulness", "relevancy", "bertscore_f1")
        fig, ax = plt.subplots(figsize=(10, 4.8))
        x = np.arange(len(by_intent))
        width = 0.16
        for i, k in enumerate(keys):
            ax.bar(x + (i - 2) * width, [v[k] if v[k] is not None else 0 for v in by_intent.values()], width, label=k)
        ax.set_xticks(x, list(by_intent), rotation=20)
        ax.set_ylim(0, 1.2)
        ax.set_title("Answer quality by expected intent")
        ax.legend(fontsize=8, ncol=5, loc="upper center")
        fig.tight_layout()
        fig.savefig(out / "by_intent.png", dpi=110)
        plt.close(fig)
        files.append("by_intent.png")
    return files


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(out: Path, url: str, params: dict, metrics: dict, tables: dict, results: list[dict],
                 rerank_results: list[dict], comparison: dict | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, metrics, tables)
    g = metrics.get
    lines = [f"# MangaAssist graph evaluation", "",
             f"Endpoint `{url}`, {int(g('cases'))} golden cases ({int(g('retrieval.cases', 0))} with retrieval), "
             f"{len(rerank_results)} reranker injection cases.", "",
             "| deployment | " + " | ".join(["model", "version", "runtime", "precision", "backend"]) + " |",
             "|---|---|---|---|---|---|"]
    for dep in ("classifier", "embedder", "reranker", "retriever", "generator"):
        lines.append(f"| {dep} | " + " | ".join(params.get(f"{dep}.{k}", "") for k in
                                                  ("model", "version", "runtime", "precision", "backend")) + " |")
    lines += ["", "## Summary", "", "| metric | value |", "|---|---|"]
    for k in ("intent.accuracy", "intent.macro_f1", "search.ndcg_at_10", "rerank.ndcg_at_10", "rerank.ndcg_at_10_gain",
              "chat.context_precision", "chat.context_recall", "answer.faithfulness", "answer.faithful_rate",
              "answer.fact_coverage", "answer.relevancy", "answer.bertscore_f1", "refusal.accuracy",
              "rerank_injection.pass_rate", "assertions.pass_rate", "latency.chat_total.p50_ms",
              "latency.chat_total.p95_ms"):
        lines.append(f"| {k} | {_fmt(g(k))} |")
    lines += ["", "## Retrieval (graded relevance, policy passages counted per document)", "",
              "| stage | " + " | ".join(f"recall@{k}" for k in KS) + " | " + " | ".join(f"P@{k}" for k in KS)
              + " | NDCG@5 | NDCG@10 |", "|---" * (2 * len(KS) + 3) + "|"]
    for stage in ("search", "rerank"):
        lines.append(f"| {stage} | " + " | ".join(_fmt(g(f"{stage}.recall_at_{k}")) for k in KS) + " | "
                     + " | ".join(_fmt(g(f"{stage}.precision_at_{k}")) for k in KS)
                     + f" | {_fmt(g(f'{stage}.ndcg_at_5'))} | {_fmt(g(f'{stage}.ndcg_at_10'))} |")
    lines += ["", "NDCG@10 by corpus: " + ", ".join(
        f"{ix} {_fmt(g(f'search.{ix}.ndcg_at_10'))} -> {_fmt(g(f'rerank.{ix}.ndcg_at_10'))}"
        for ix in ("catalog", "policy") if g(f"search.{ix}.ndcg_at_10") is not None) + " (search -> rerank)."]
    lines += ["", f"Chat sources (top {CHAT_K}, after named-series lookup, reranking and like-X blending): "
              f"recall@5 {_fmt(g('chat.recall_at_5'))}, P@5 {_fmt(g('chat.precision_at_5'))}, "
              f"NDCG@5 {_fmt(g('chat.ndcg_at_5'))}, context precision {_fmt(g('chat.context_precision'))}, "
              f"context recall {_fmt(g('chat.context_recall'))}.", ""]
    lines += ["## By intent", "", "| intent | cases | intent acc. | fact coverage | faithfulness | relevancy | BERTScore F1 | assertions |",
              "|---|---|---|---|---|---|---|---|"]
    for label, row in tables["by_intent"].items():
        lines.append(f"| {label} | {row['cases']} | " + " | ".join(_fmt(row[k]) for k in
                     ("intent_accuracy", "fact_coverage", "faithfulness", "relevancy", "bertscore_f1", "assertions")) + " |")
    lines += ["", "## Assertions", "", "| assertion | pass rate | failed cases |", "|---|---|---|"]
    for name in tables["assertion_names"]:
        failed = [r["id"] for r in results if r["assertions"].get(name) is False]
        lines.append(f"| {name} | {_fmt(g(f'assert.{name}'))} | {', '.join(failed[:8])}{' ...' if len(failed) > 8 else ''} |")
    lines += ["", "## Reranker and documents with hidden instructions", "", "| case | query | injected ranked first | passed |",
              "|---|---|---|---|"]
    for r in rerank_results:
        lines.append(f"| {r['id']} | {r['query']} | {r['injected_top']} | {r['passed']} |")
    lines += ["", "## Latency (ms)", "", "| stage | p50 | p90 | p95 | p99 |", "|---|---|---|---|---|"]
    for stage in sorted({k.split(".")[1] for k in metrics if k.startswith("latency.")}):
        lines.append(f"| {stage} | " + " | ".join(_fmt(g(f"latency.{stage}.p{p}_ms")) for p in PERCENTILES) + " |")
    if comparison is not None:
        lines += ["", "## Against the baseline", "", "| metric | baseline | current | delta | allowed | regressed |",
                  "|---|---|---|---|---|---|"]
        for row in comparison["rows"]:
            lines.append(f"| {row['metric']} | {_fmt(row['baseline'])} | {_fmt(row['current'])} | {row['delta']:+.3f} | "
                         f"{row['allowed']:.3f} | {'**yes**' if row['regressed'] else 'no'} |")
        if comparison["skipped"]:
            lines.append(f"\nSkipped (missing in one run): {', '.join(comparison['skipped'])}")
    unfaithful = [r for r in results if r["faithfulness"].unsupported()]
    lines += ["", f"## Unsupported claims ({len(unfaithful)} answers)", ""]
    for r in unfaithful[:25]:
        claims = ", ".join(f"{c.kind} `{c.text}`" for c in r["faithfulness"].unsupported())
        lines.append(f"- {r['id']} ({r['query']!r}): {claims}")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    with open(out / "cases.jsonl", "w", encoding="utf-8") as fh:
        for r in results:
            row = {k: v for k, v in r.items() if k != "faithfulness"}
            row["claims"] = [c.__dict__ for c in r["faithfulness"].claims]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "rerank_cases.json").write_text(json.dumps(rerank_results, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return path


# --- the whole evaluation -----------------------------------------------------------------------


@dataclass
class Outcome:
    metrics: dict[str, float]
    results: list[dict]
    rerank_results: list[dict]
    params: dict[str, str]
    report: Path
    run_id: str | None
    comparison: dict | None


def evaluate_graph(url: str, slice_: int | None = None, out: Path | None = None, baseline: str | None = None,
                   track: bool = True, with_bertscore: bool = True, client: httpx.Client | None = None,
                   log=print) -> Outcome:
    started = time.perf_counter()
    cases = load_golden(GOLDEN, slice_)
    rerank_cases = read_jsonl(RERANK_CASES)
    kb, cfg = KnowledgeBase.load(), EvalConfig.load()
    out = Path(out) if out else _default_out()
    own_client = client is None
    client = client or http_client(url)
    try:
        params = model_params(deployment_info(client))
        results = []
        for n, case in enumerate(cases, 1):
            results.append(run_case(client, case, kb, cfg))
            if n % 25 == 0:
                log(f"  {n}/{len(cases)} cases")
        rerank_results = [run_rerank_case(client, c, kb) for c in rerank_cases]
        relevancy = answer_relevancy(client, [r["query"] for r in results], [r["answer"] for r in results])
    finally:
        if own_client:
            client.close()
    for r, v in zip(results, relevancy):
        r["relevancy"] = v
    if with_bertscore:
        scores = bertscore([r["answer"] for r in results], [c["reference"] for c in cases])
        for i, r in enumerate(results):
            for k in ("precision", "recall", "f1"):
                r[f"bertscore_{k}"] = scores[k][i]
    metrics, tables = aggregate(results, rerank_results)
    metrics["eval.wall_s"] = time.perf_counter() - started
    golden_files = [GOLDEN, RERANK_CASES, GOLDEN_DIR / "assertions.yaml", TOLERANCES]
    params.update({"deployment_hash": sha256_of(params), "url": url, "slice": str(slice_ or "all"),
                   "cases": str(len(cases)), "golden_hash": files_hash(golden_files),
                   "bertscore": "minilm-l6:layer6" if with_bertscore else "off"})
    comparison = None
    if baseline:
        from .tracking import run_data

        comparison = compare(metrics, run_data(baseline)[0], load_tolerances())
        params["baseline"] = baseline
    report = write_report(out, url, params, metrics, tables, results, rerank_results, comparison)
    run_id = None
    if track:
        from .tracking import GRAPH_EXPERIMENT, log_run

        tags = {"kind": "graph-eval", "golden_hash": params["golden_hash"],
                "regressions": ",".join(comparison["regressions"]) if comparison else ""}
        run_id = log_run(GRAPH_EXPERIMENT, f"graph-eval {time.strftime('%Y-%m-%d %H:%M:%S')}", params, metrics,
                         tags, artifact_dir=out)
    return Outcome(metrics, results, rerank_results, params, report, run_id, comparison)


def _default_out() -> Path:
    from .paths import home

    return home() / "eval" / time.strftime("graph-%Y%m%d-%H%M%S")


def cmd_eval_graph(args) -> int:
    try:
        outcome = evaluate_graph(args.url, args.slice, args.out, args.baseline, track=not args.no_mlflow,
                                 with_bertscore=not args.no_bertscore)
    except (EvalError, httpx.HTTPError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    m = outcome.metrics
    for k in ("intent.accuracy", "search.ndcg_at_10", "rerank.ndcg_at_10", "chat.context_precision",
              "chat.context_recall", "answer.faithfulness", "answer.fact_coverage", "answer.relevancy",
              "answer.bertscore_f1", "refusal.accuracy", "rerank_injection.pass_rate", "assertions.pass_rate",
              "latency.chat_total.p50_ms", "latency.chat_total.p95_ms"):
        print(f"{k:28s} {_fmt(m.get(k))}")
    print(f"report: {outcome.report}")
    if outcome.run_id:
        from .tracking import tracking_uri

        print(f"mlflow run: {outcome.run_id} ({tracking_uri()})")
    if outcome.comparison:
        regressions = outcome.comparison["regressions"]
        if regressions:
            for row in outcome.comparison["rows"]:
                if row["regressed"]:
                    print(f"REGRESSION {row['metric']}: {row['baseline']:.4f} -> {row['current']:.4f} "
                          f"(allowed {row['allowed']:.4f})")
            return 1
        print(f"no regression against {args.baseline} ({len(outcome.comparison['rows'])} metrics compared)")
    return 0
