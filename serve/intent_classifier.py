"""IntentClassifier deployment: the 8-label classifier with dynamic batching and calibrated scores."""
from __future__ import annotations

import asyncio

from ray import serve

from .config import Batching, ModelSpec
from monitoring.metrics import metric

from .loading import configure_batching, load_model, model_info_metric, off_loop


@serve.deployment(ray_actor_options={"num_cpus": 0.4}, max_ongoing_requests=64)
class IntentClassifier:
    def __init__(self, spec: ModelSpec, batching: Batching):
        self.model, self.info = load_model(spec)
        self.labels = self.model.labels
        configure_batching(self.predict_batch, batching)
        model_info_metric(self.info)

    async def classify(self, texts: list[str]) -> list[dict]:
        """One request may carry many texts; each joins the shared batch queue on its own."""
        return list(await asyncio.gather(*(self.predict_batch(t) for t in texts)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, texts: list[str]) -> list[dict]:
        metric("mangaassist_batch_size").observe(len(texts))
        probs = await off_loop(self.model.predict_proba, texts)
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append({"label": self.labels[best], "confidence": float(row[best]),
                        "scores": {label: float(p) for label, p in zip(self.labels, row)}})
        return out

    def ready(self) -> dict:
        return self.info
