"""The naive alternative a user would write: one FastAPI process, per-request torch fp32 through
transformers' `pipeline` (intent) and sentence-transformers' `CrossEncoder.predict` (reranker), on
the same registered weights, with the same request and response shapes as our /v1 routes.

    python -m benchmarks.baseline_app --port 8100 [--rerank-max-length 96]
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_app(rerank_max_length: int | None):
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import CrossEncoder
    from transformers import pipeline

    from serve.loading import resolve_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    intent_dir, reranker_dir = resolve_model("intent") / "hf", resolve_model("reranker") / "hf"
    classifier = pipeline("text-classification", model=str(intent_dir), tokenizer=str(intent_dir), device="cpu")
    cross_encoder = CrossEncoder(str(reranker_dir), max_length=rerank_max_length, device="cpu")
    app = FastAPI(title="naive baseline")

    class Texts(BaseModel):
        texts: list[str]

    class Rerank(BaseModel):
        query: str
        documents: list[str]

    @app.post("/v1/classify")
    def classify(req: Texts):  # a plain `def`: FastAPI runs it in its thread pool, as users write it
        return {"predictions": [{"label": p["label"], "confidence": p["score"]} for p in classifier(req.texts)]}

    @app.post("/v1/rerank")
    def rerank(req: Rerank):
        scores = cross_encoder.predict([(req.query, d) for d in req.documents])
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
        return {"results": [{"index": i, "score": float(scores[i])} for i in ranked]}

    @app.get("/readyz")
    def ready():
        return {"ready": True}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--rerank-max-length", type=int, default=None)
    args = parser.parse_args()
    uvicorn.run(make_app(args.rerank_max_length), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
