"""Reranker deployment: the cross-encoder over (query, document) pairs, batched by token budget.

A batch is whole requests whose pairs add up to at most `rerank_token_budget` tokens (Ray Serve's
`batch_size_fn`), so one long request cannot blow up a batch's latency and memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ray import serve

from .config import Batching, ModelSpec
from monitoring.metrics import metric

from .loading import configure_batching, load_model, model_info_metric, off_loop


@dataclass
class RerankItem:
    query: str
    documents: list[str]
    tokens: int


def total_tokens(items: list[RerankItem]) -> int:
    return sum(item.tokens for item in items)


@serve.deployment(ray_actor_options={"num_cpus": 0.6}, max_ongoing_requests=32)
class Reranker:
    def __init__(self, spec: ModelSpec, batching: Batching, token_budget: int):
        self.model, self.info = load_model(spec)
        self.info["token_budget"] = token_budget
        model_info_metric(self.info)
        configure_batching(self.score_batch, Batching(max_batch_size=token_budget,
                                                      batch_wait_timeout_s=batching.batch_wait_timeout_s))

    async def rerank(self, query: str, documents: list[str]) -> list[float]:
        """Relevance in [0, 1] per document, in the order given."""
        tokens = sum(self.model.token_counts([query] * len(documents), documents))
        return await self.score_batch(RerankItem(query, documents, tokens))

    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.005, batch_size_fn=total_tokens)
    async def score_batch(self, items: list[RerankItem]) -> list[list[float]]:
        metric("mangaassist_batch_size").observe(len(items))
        metric("mangaassist_rerank_batch_tokens").observe(total_tokens(items))
        queries = [item.query for item in items for _ in item.documents]
        docs = [d for item in items for d in item.documents]
        logits = await off_loop(self.model.logits, queries, docs)
        scores = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        out, start = [], 0
        for item in items:
            out.append(scores[start:start + len(item.documents)].tolist())
            start += len(item.documents)
        return out

    def ready(self) -> dict:
        return self.info
