"""Evaluation sets and reports shared by `mangaassist build` (gates) and `mangaassist eval`."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from . import INTENT_LABELS
from .datasets import load_catalog, load_intents, load_policies
from .metrics import classification_report, expected_calibration_error, mrr_at_k, ndcg_at_k
from .pairs import Doc, RankQuery, build_queries, catalog_docs, policy_docs, split_queries
from .paths import DATA_DIR
from .runtime import TextModel, softmax

RERANK_CANDIDATES = 20  # what the graph reranks (args.retrieve_k)
EVAL_QUERIES = 150


def intent_report(logits: np.ndarray, labels: list[str], temperature: float = 1.0) -> dict:
    y = [INTENT_LABELS.index(label) for label in labels]
    report = classification_report(y, logits.argmax(1), INTENT_LABELS)
    report["ece"] = expected_calibration_error(softmax(logits / temperature), y)
    return report


@dataclass
class RerankEvalSet:
    """Held-out queries with the bi-encoder's top-k candidates: the baseline a reranker must beat."""

    queries: list[RankQuery]
    candidates: list[list[str]]
    bi_scores: list[np.ndarray]
    docs: dict[str, Doc]

    @property
    def flat_pairs(self) -> tuple[list[str], list[str]]:
        qs = [q.text for q, cands in zip(self.queries, self.candidates) for _ in cands]
        ds = [self.docs[d].text for cands in self.candidates for d in cands]
        return qs, ds

    def evaluate(self, scores: list[np.ndarray] | np.ndarray) -> dict:
        """scores: per query (list) or flat over `flat_pairs` (array)."""
        if isinstance(scores, np.ndarray):
            bounds = np.cumsum([0] + [len(c) for c in self.candidates])
            scores = [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        ndcg, mrr = [], []
        for q, cands, s in zip(self.queries, self.candidates, scores):
            ranked = [q.relevance.get(cands[j], 0) for j in np.argsort(-np.asarray(s), kind="stable")]
            ndcg.append(ndcg_at_k(ranked, list(q.relevance.values()), 10))
            mrr.append(mrr_at_k(ranked, 10))
        return {"ndcg@10": float(np.mean(ndcg)), "mrr@10": float(np.mean(mrr))}

    def baseline(self) -> dict:
        return self.evaluate(self.bi_scores)

    def score_with(self, model: TextModel, batch: int = 64, desc: str | None = None) -> np.ndarray:
        qs, ds = self.flat_pairs
        return np.concatenate([model.logits(qs[s:s + batch], ds[s:s + batch])[:, 0]
                               for s in tqdm(range(0, len(qs), batch), desc=desc, disable=desc is None, leave=False)])


def reranker_queries(data_dir=DATA_DIR):
    catalog = load_catalog(data_dir / "catalog.jsonl")
    policies = load_policies(data_dir / "policies")
    docs = {d.id: d for d in catalog_docs(catalog) + policy_docs(policies)}
    train_q, eval_q = split_queries(build_queries(catalog, policies))
    return docs, train_q, eval_q


def doc_vectors(docs: dict[str, Doc], embedder: TextModel) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per index, its document ids and their embeddings (computed once for every evaluation set)."""
    index_ids = {ix: [d.id for d in docs.values() if d.index == ix] for ix in ("catalog", "policy")}
    return {ix: (ids, embedder.embed([docs[i].text for i in ids])) for ix, ids in index_ids.items()}


def rerank_eval_set(docs: dict[str, Doc], eval_q: list[RankQuery], embedder: TextModel, seed: int = 7,
                    n_queries: int = EVAL_QUERIES, vectors: dict | None = None) -> RerankEvalSet:
    eval_q = random.Random(seed).sample(eval_q, min(n_queries, len(eval_q)))
    vectors = vectors or doc_vectors(docs, embedder)
    index_ids = {ix: ids for ix, (ids, _) in vectors.items()}
    doc_vecs = {ix: vecs for ix, (_, vecs) in vectors.items()}
    query_vecs = embedder.embed([q.text for q in eval_q])
    candidates, bi_scores = [], []
    for q, vec in zip(eval_q, query_vecs):
        sims = doc_vecs[q.index] @ vec
        top = np.argsort(-sims)[:RERANK_CANDIDATES]
        candidates.append([index_ids[q.index][j] for j in top])
        bi_scores.append(sims[top])
    return RerankEvalSet(eval_q, candidates, bi_scores, docs)


def evaluate(model: str, runtime: str = "onnx", precision: str = "int8", registry=None) -> dict:
    """Evaluate the current registered version of `model` with a serving runtime."""
    from .registry import Registry

    registry = registry or Registry()
    tm = TextModel(registry.resolve(model), runtime, precision)
    result = {"model": model, "version": registry.current(model), "runtime": runtime, "precision": tm.precision}
    if model == "intent":
        rows = load_intents("test")
        report = intent_report(tm.class_scores([r.text for r in rows]), [r.label for r in rows], tm.temperature)
        result.update({k: report[k] for k in ("accuracy", "macro_f1", "ece", "per_class")})
    else:
        docs, _, eval_q = reranker_queries()
        evalset = rerank_eval_set(docs, eval_q, TextModel(registry.resolve("embedder"), "onnx", "fp32"))
        result.update(evalset.evaluate(evalset.score_with(tm, desc="scoring")))
        result["baseline_bi_encoder"] = evalset.baseline()
    return result
