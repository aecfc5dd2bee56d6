"""Embedder deployment: the local MiniLM bi-encoder (mean pooled, normalized) or Bedrock Titan V2,
with dynamic batching. Titan's 256/512/1024 dimensions can never match a MiniLM (384) index, so a
Bedrock failure is an error here (the gateway answers 503), never a silent switch of vector space."""
from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from .config import Batching, ModelSpec
from monitoring.metrics import metric

from .loading import configure_batching, load_model, model_info_metric, off_loop


@serve.deployment(ray_actor_options={"num_cpus": 0.4}, max_ongoing_requests=64)
class Embedder:
    def __init__(self, spec: ModelSpec, batching: Batching, backend: str = "local", bedrock=None):
        if backend == "bedrock":
            from .backends.bedrock import TitanEmbedder
            from .generator import bedrock_health

            self.model = TitanEmbedder(bedrock)
            self.info = {"model": "bedrock", "version": bedrock.embed_model_id, "runtime": "bedrock",
                         "dimensions": self.model.dimensions}
            bedrock_health("invoke_model", self.model.breaker)  # closed from the start (see Generator)
        else:
            self.model, self.info = load_model(spec)
            self.info["dimensions"] = int(self.model.card["dimensions"])
        configure_batching(self.embed_batch, batching)
        model_info_metric(self.info)

    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack(await asyncio.gather(*(self.embed_batch(t) for t in texts)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        metric("mangaassist_batch_size").observe(len(texts))
        if self.info["runtime"] != "bedrock":
            return list(await off_loop(self.model.embed, texts))
        from .backends.bedrock import BackendUnavailable
        from .generator import bedrock_health

        try:
            vectors = await off_loop(self.model.embed, texts)
        except BackendUnavailable as exc:
            bedrock_health("invoke_model", self.model.breaker, exc.reason)
            raise
        bedrock_health("invoke_model", self.model.breaker)
        return list(vectors)

    def ready(self) -> dict:
        return self.info
