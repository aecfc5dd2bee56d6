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
    features: dict[str, np.ndarray]  # one request's (query, document) pairs, tokenized and padded to their longest
    tokens: int  # real tokens (no padding): what the token budget counts


def stack_features(items: list[RerankItem], pad_id: int) -> dict[str, np.ndarray]:
    """One batch from the requests' features, right-padded to the longest pair as the tokenizer pads a list:
    the same arrays as tokenizing every pair of the batch at once."""
    length = max(item.features["input_ids"].shape[1] for item in items)
    out = {}
    for name in items[0].features:
        pad = pad_id if name == "input_ids" else 0
        out[name] = np.concatenate([np.pad(item.features[name], ((0, 0), (0, length - item.features[name].shape[1])),
                                           constant_values=pad) for item in items])
    return out


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
        if not documents:
            return []
        # tokenized once, off the event loop: the token budget counts these tokens and the batch runs them
        features = await off_loop(self.model.pair_features, query, documents)
        return await self.score_batch(RerankItem(features, int(features["attention_mask"].sum())))

    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.005, batch_size_fn=total_tokens)
    async def score_batch(self, items: list[RerankItem]) -> list[list[float]]:
        metric("mangaassist_batch_size").observe(len(items))
        metric("mangaassist_rerank_batch_tokens").observe(total_tokens(items))
        features = stack_features(items, self.model.tokenizer.pad_token_id or 0)
        logits = await off_loop(self.model.backend, features)
        scores = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        out, start = [], 0
        for item in items:
            n = len(item.features["input_ids"])
            out.append(scores[start:start + n].tolist())
            start += n
        return out

    def ready(self) -> dict:
        return self.info
