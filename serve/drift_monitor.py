"""DriftMonitor deployment: the features of every chat request, off the request path, against the
reference of the served model versions (Evidently methods, `monitoring/drift.py`).

The gateway buffers one record per chat answer (intent, confidence, query length, top retrieval
and rerank scores, query embedding) and sends them in batches, fire-and-forget: a slow or dead
monitor never slows or fails a request. Every `interval_s` the monitor computes drift over its
sliding window and sets the `mangaassist_drift_*` gauges; `GET /v1/drift` shows the last result,
`GET /v1/drift/report` Evidently's HTML report.

The reference is the same features computed offline (`build_reference`, run by `mangaassist
index`) over the intent validation messages with the registered models and indexes. It is stored
in the registry as `drift-reference`, one version per combination of model versions, with a
manifest like every model.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from ray import serve

from monitoring.metrics import set_gauge

from .config import AppArgs, DriftSettings

REFERENCE = "drift-reference"
REFERENCE_QUERIES = 400  # validation messages replayed (a seeded sample; the split is balanced by intent)
log = logging.getLogger("ray.serve")


# --- reference ----------------------------------------------------------------------------------

def reference_key(versions: dict[str, str], retrieve_k: int, policy_retrieve_k: int | None = None) -> str:
    """What a reference depends on: the three model versions (the indexes follow the embedder's),
    the number of candidates reranked (per index), the replayed messages and this module's code."""
    from models.paths import DATA_DIR

    parts = {"versions": versions, "retrieve_k": retrieve_k, "queries": REFERENCE_QUERIES,
             **({"policy_retrieve_k": policy_retrieve_k} if policy_retrieve_k not in (None, retrieve_k) else {}),
             "data": hashlib.sha256((DATA_DIR / "intents" / "validation.jsonl").read_bytes()).hexdigest(),
             "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def served_versions(args: AppArgs) -> dict[str, str]:
    """Versions of the three models a config serves (any ref: registry, folder, s3://)."""
    from .loading import model_version

    return {name: model_version(getattr(args, name).ref) for name in ("embedder", "intent", "reranker")}


def reference_ref(args: AppArgs, version: str) -> str:
    """Where the reference of a version lives: beside the models (`s3://.../drift-reference/<version>`
    when they come from S3, uploaded with them), else in the local registry."""
    intent = args.intent.ref
    if intent.startswith("s3://"):
        return f"{intent.rstrip('/').rsplit('/', 2)[0]}/{REFERENCE}/{version}"
    return f"{REFERENCE}:{version}"


def reference_features(args: AppArgs, queries: list[str], progress: bool = True) -> list[dict]:
    """The records the gateway would send for these messages, computed in process with the same
    models, runtimes, routing and indexes (named-series lookups and the like-X blend aside)."""
    import numpy as np
    from tqdm import tqdm

    from models.runtime import TextModel

    from .index import VectorIndex, index_folder, index_root
    from .loading import resolve_model
    from .routing import index_for

    load = lambda spec: TextModel(resolve_model(spec.ref), spec.runtime, spec.precision)  # noqa: E731
    classifier, embedder, reranker = load(args.intent), load(args.embedder), load(args.reranker)
    root = index_root(args.index_dir)
    version = embedder.model_dir.name
    indexes = {name: VectorIndex.load(index_folder(root, version, name)) for name in ("catalog", "policy")}
    records = []
    for query in tqdm(queries, desc="drift reference", unit="query", disable=not progress):
        probs = classifier.predict_proba([query])[0]
        best = int(probs.argmax())
        record = {"intent": classifier.labels[best], "confidence": float(probs[best]), "query_length": len(query),
                  "retrieval_top_score": None, "rerank_top_score": None, "embedding": None}
        index = index_for(record["intent"])
        if index:
            vector = embedder.embed([query])[0]
            hits = indexes[index].search(vector, args.candidates(index), None, ())
            record["embedding"] = vector
            if hits:
                record["retrieval_top_score"] = hits[0][1]
                docs = [indexes[index].docs[i].text for i, _ in hits]
                logits = reranker.score_pairs(query, docs)
                record["rerank_top_score"] = float(np.max(1.0 / (1.0 + np.exp(-logits))))
        records.append(record)
    return records


def build_reference(args: AppArgs | None = None, log: Callable[[str], None] = print) -> str:
    """Register the drift reference of the served versions unless it exists; returns its version."""
    from models.registry import Registry

    args = args or AppArgs()
    registry = Registry()
    registry.root.mkdir(parents=True, exist_ok=True)
    with open(registry.root / ".build.lock", "w") as lock:  # the model build's lock: one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_reference(args, registry, log)


def _build_reference(args: AppArgs, registry, log: Callable[[str], None]) -> str:
    from models.datasets import load_intents
    from models.registry import version_for

    from monitoring.drift import Reference

    versions = served_versions(args)
    digest = reference_key(versions, args.retrieve_k, args.candidates("policy"))
    version = version_for(digest)
    if version in registry.versions(REFERENCE):
        registry.verify(REFERENCE, version)
        log(f"{REFERENCE}: {version} is up to date")
        return version
    examples = load_intents("validation")
    queries = [ex.text for ex in random.Random(13).sample(examples, min(REFERENCE_QUERIES, len(examples)))]
    started = time.time()
    staged = registry.staging(REFERENCE)
    try:
        reference = Reference.from_records(reference_features(args, queries))
        reference.save(staged)
        (staged / "versions.json").write_text(json.dumps(versions, indent=2))
        registry.register(REFERENCE, staged, digest, {"rows": len(reference), "build_seconds": round(time.time() - started, 1)})
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log(f"{REFERENCE}: registered {version} ({len(queries)} messages in {time.time() - started:.0f} s)")
    return version


def load_reference(args: AppArgs):
    """(Reference, version, None) for the served model versions, or (None, None, why)."""
    from models.registry import version_for

    from monitoring.drift import Reference

    from .loading import resolve_model

    try:
        version = version_for(reference_key(served_versions(args), args.retrieve_k, args.candidates("policy")))
        return Reference.load(resolve_model(reference_ref(args, version))), version, None
    except Exception as exc:  # noqa: BLE001 - missing, tampered, unreachable: the monitor runs without drift
        return None, None, f"no drift reference for the served model versions ({exc}); run `mangaassist index`"


# --- deployment ---------------------------------------------------------------------------------

@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=8, max_queued_requests=32)
class DriftMonitor:
    def __init__(self, args: AppArgs):
        from monitoring.drift import DriftWindow

        self.settings: DriftSettings = args.drift
        self.window = DriftWindow(self.settings.window_size)
        self.reference, self.reference_version, self.reference_error = load_reference(args)
        if self.reference_error:
            log.warning(self.reference_error)
        self.embeddings = args.embedder_backend == "local"  # Titan vectors are not comparable with the reference
        self.latest = None
        self.evaluated_at = 0  # records seen at the last computation
        self.report_html: tuple[int, str] | None = None  # (records seen when made, html)
        self.task: asyncio.Task | None = None
        self.rejected = 0

    def _start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._schedule())

    async def _schedule(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await asyncio.to_thread(self.evaluate)
            except Exception:
                log.exception("drift computation failed")

    async def record(self, records: list[dict]) -> int:
        """Add feature records to the window; malformed ones are counted and dropped."""
        self._start()
        accepted = 0
        for record in records:
            if not self.embeddings:
                record = {**record, "embedding": None}
            try:
                self.window.add(record)
                accepted += 1
            except ValueError:
                self.rejected += 1
        set_gauge("mangaassist_drift_window_size", len(self.window))
        return accepted

    def evaluate(self) -> dict | None:
        """Drift of the current window against the reference; sets the gauges."""
        from monitoring.drift import compute_drift

        if self.reference is None or self.window.added == self.evaluated_at:
            return self.latest  # nothing new since the last computation: spare the CPU
        self.evaluated_at = self.window.added
        frame, embeddings = self.window.frame()
        result = compute_drift(self.reference, frame, embeddings, min_samples=self.settings.min_samples)
        for feature in result.features.values():
            if feature.evaluated:
                set_gauge("mangaassist_drift_score", feature.score, tags={"feature": feature.feature,
                                                                           "method": feature.method})
            set_gauge("mangaassist_drift_detected", int(feature.evaluated and feature.detected),
                                                     tags={"feature": feature.feature})
        set_gauge("mangaassist_drift_share", result.share_drifted)
        set_gauge("mangaassist_drift_window_size", result.window_size)
        self.latest = result.to_dict()
        return self.latest

    async def status(self) -> dict:
        self._start()
        return {"window_size": len(self.window), "window_capacity": self.settings.window_size,
                "records_seen": self.window.added, "records_rejected": self.rejected,
                "interval_s": self.settings.interval_s, "embeddings": self.embeddings,
                "reference": self.reference_version,
                "reference_rows": len(self.reference) if self.reference is not None else 0,
                "reference_error": self.reference_error,
                "latest": self.latest}

    async def report(self) -> str:
        """Evidently's HTML report of the current window (made again only when new records came in)."""
        from monitoring.drift import empty_report, html_report

        self._start()
        if self.reference is None:
            return empty_report(self.reference_error)
        seen = self.window.added
        if self.report_html is None or self.report_html[0] != seen:
            frame, _ = self.window.frame()
            self.report_html = (seen, await asyncio.to_thread(html_report, self.reference, frame))
        return self.report_html[1]

    async def ready(self) -> dict:
        self._start()
        return {"reference": self.reference_version, "window_size": len(self.window)}
