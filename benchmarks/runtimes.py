"""Runtimes side by side in one process, no serving: ONNX Runtime int8 / fp32, OpenVINO bf16 / fp32 and torch
fp32 / bf16 (autocast; bf16 on AMX where present), 1 and 2 intra-op threads, on the served models and real inputs.

    python -m benchmarks.runtimes [--out benchmarks/results]

Shapes: the intent classifier on batches of 1 and 32 shopper messages, the reranker on one query
with 20 catalog candidates (full length, and truncated to 96 and 64 tokens).
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from models.datasets import load_intents
from models.runtime import TextModel
from serve.index import corpus
from serve.loading import resolve_model

from .report import machine, save_result

RUNTIMES = (("onnx", "int8"), ("onnx", "fp32"), ("openvino", "bf16"), ("openvino", "fp32"), ("torch", "fp32"),
            ("torch", "bf16"))


def timed(fn, repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    import torch

    texts = [ex.text for ex in load_intents("test")]
    random.Random(0).shuffle(texts)
    docs = random.Random(1).sample([d.text for d in corpus("catalog")], 20)
    query = "dark fantasy manga with great art like berserk"
    folders = {m: resolve_model(m) for m in ("intent", "reranker")}  # verified once, not per runtime
    rows = []
    for runtime, precision in RUNTIMES:
        for threads in (1, 2):
            models = {m: TextModel(folder, runtime, "fp32" if runtime == "torch" else precision, threads)
                      for m, folder in folders.items()}
            card_length = models["reranker"].max_length
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=runtime == "torch" and precision == "bf16")
            with autocast:
                row = {"runtime": runtime, "precision": precision, "threads": threads,
                       "intent_b1_ms": timed(lambda: models["intent"].logits(texts[:1])),
                       "intent_b32_ms": timed(lambda: models["intent"].logits(texts[:32]))}
                for length in (card_length, 96, 64):
                    models["reranker"].max_length = length
                    row[f"rerank20_len{length}_ms"] = timed(lambda: models["reranker"].score_pairs(query, docs), 7)
            rows.append(row)
            print(row, flush=True)
    save_result(args.out, "runtimes", {"machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
