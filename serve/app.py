"""The application builder: one Ray Serve app composing every deployment with DeploymentHandles.

    serve run serve.app:build_app                       # defaults (embedded backends)
    serve run serve/config/local.yaml                   # the same app from a Serve config file
    RayService serveConfigV2: import_path: serve.app:build_app, args: {...}
"""
from __future__ import annotations

from ray.serve import Application

from .config import AppArgs
from .drift_monitor import DriftMonitor
from .embedder import Embedder
from .gateway import Gateway
from .generator import Generator
from .intent_classifier import IntentClassifier
from .reranker import Reranker
from .retriever import Retriever


def build_app(args: AppArgs | dict | None = None) -> Application:
    """Typed app builder (Ray Serve validates `args` against AppArgs when given a config file)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})

    classifier = IntentClassifier.bind(args.intent, args.intent_batching)
    embedder = Embedder.bind(args.embedder, args.embedder_batching, args.embedder_backend, args.bedrock)
    retriever = Retriever.bind(args)
    reranker = Reranker.bind(args.reranker, args.reranker_batching, args.rerank_token_budget)
    generator = Generator.bind(args.generator_backend, args.bedrock.model_dump())
    drift = DriftMonitor.bind(args) if args.drift.enabled else None
    return Gateway.bind(classifier, embedder, retriever, reranker, generator, args, drift)
