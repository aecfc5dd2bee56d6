"""Typed application arguments: what `build_app` takes from a Serve config file or the CLI.

What the app does is tuned here (models, runtimes, batching, limits, deadlines); how it is placed
(replicas, autoscaling, `ray_actor_options`) is tuned the Ray Serve way, in the config file's
`deployments:` section. A RayService `serveConfigV2` passes the same `args`.
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.runtime import Device, Precision, Runtime, check_runtime

from .backends.bedrock import BedrockSettings
from .backends.opensearch import OpenSearchSettings


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    """A registered model and how to run it."""

    ref: str = Field(description="registry name, name:version, or a path to a version folder")
    runtime: Runtime = Field("onnx", description="onnx: fp32 or int8, cpu or cuda; "
                                   "openvino: bf16 (AMX CPUs) or fp32, cpu; torch: fp32 (fp16 on cuda)")
    precision: Precision = "int8"
    device: Device = "cpu"
    threads: int | None = Field(None, ge=1, description="intra-op threads; default: the replica's whole CPUs, at least 1")
    max_length: int | None = Field(None, ge=16, le=512, description="truncate inputs to this many tokens; default: the "
                                   "model card's (cost grows with length: see the tuning guide)")

    @model_validator(mode="after")
    def _runs_there(self):
        check_runtime(self.runtime, self.precision, self.device)
        return self


class Batching(Strict):
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.001, ge=0)


class Limits(Strict):
    """Input limits: beyond them a request is refused with 413/422, never truncated silently."""

    max_query_chars: int = Field(1000, ge=1)
    max_texts: int = Field(64, ge=1)
    max_documents: int = Field(64, ge=1)
    max_document_chars: int = Field(4000, ge=1)
    max_top_k: int = Field(20, ge=1)
    max_body_bytes: int = Field(256 * 1024, ge=1024)


class Timeouts(Strict):
    """Per-stage deadlines (seconds). A late reranker or generator degrades the answer; a late
    classifier, embedder or retriever makes it a 503 with Retry-After."""

    intent: float = Field(3.0, gt=0)
    embed: float = Field(3.0, gt=0)
    search: float = Field(3.0, gt=0)
    rerank: float = Field(3.0, gt=0)
    generate: float = Field(5.0, gt=0)
    ready: float = Field(2.0, gt=0)
    request: float = Field(15.0, gt=0, description="end to end in the gateway (the SSE stream's generation "
                                                    "excepted, which `generate` bounds): beyond it a 408")


class AuthSettings(Strict):
    """Optional API keys (`Authorization: Bearer <key>` or `x-api-key`), stored as sha256 hex digests
    (`mangaassist keys hash`), never in plain text; /healthz and /readyz stay open."""

    enabled: bool = False
    key_hashes: list[str] = Field(default_factory=list, description="sha256 hex digests of the accepted keys")
    key_hashes_env: str | None = Field("MANGAASSIST_API_KEY_HASHES", description="environment variable holding "
                                       "more digests (comma or newline separated), e.g. from a Kubernetes Secret")
    key_hashes_file: str | None = Field(None, description="file holding more digests, one a line (a mounted Secret)")
    rate_per_s: float = Field(10.0, gt=0, description="requests per second per key (token bucket refill)")
    burst: int = Field(20, ge=1, description="token bucket capacity per key")


class DriftSettings(Strict):
    """Drift monitoring (DriftMonitor): features of every chat request, off the request path, compared
    with the reference of the served model versions every `interval_s` over the last `window_size`."""

    enabled: bool = True
    window_size: int = Field(500, ge=10, description="requests in the sliding window")
    interval_s: float = Field(30.0, gt=0, description="seconds between drift computations")
    min_samples: int = Field(30, ge=5, description="fewer values than this in either sample: feature not evaluated")
    flush_interval_s: float = Field(1.0, gt=0, description="the gateway sends its buffered records this often")


class AppArgs(Strict):
    """Arguments of `serve.app:build_app`."""

    embedder: ModelSpec = ModelSpec(ref="embedder")
    intent: ModelSpec = ModelSpec(ref="intent")
    reranker: ModelSpec = ModelSpec(ref="reranker")
    index_dir: str | None = Field(None, description="FAISS indexes built by `mangaassist index` (default: under MANGAASSIST_HOME)")
    embedder_backend: Literal["local", "bedrock"] = Field("local", description="local MiniLM or Bedrock Titan V2")
    retriever_backend: Literal["faiss", "opensearch"] = Field("faiss", description="embedded FAISS HNSW or Amazon OpenSearch k-NN")
    generator_backend: Literal["template", "bedrock"] = Field("template", description="local template or Bedrock Claude")
    bedrock: BedrockSettings = Field(default_factory=BedrockSettings, description="used by the bedrock backends")
    opensearch: OpenSearchSettings = Field(default_factory=OpenSearchSettings, description="used by the opensearch backend")

    def embedder_identity(self) -> tuple[str, int]:
        """(version, dimensions) of the configured embedder: what an index must have been built with."""
        if self.embedder_backend == "bedrock":
            return f"{self.bedrock.embed_model_id}-{self.bedrock.dimensions}", self.bedrock.dimensions
        from .loading import resolve_model

        folder = resolve_model(self.embedder.ref)
        return folder.name, int(json.loads((folder / "model_card.json").read_text())["dimensions"])

    def candidates(self, index: str) -> int:
        """How many documents of `index` are fetched for the reranker."""
        return (self.policy_retrieve_k or self.retrieve_k) if index == "policy" else self.retrieve_k

    low_confidence_threshold: float = Field(0.55, ge=0, le=1)
    retrieve_k: int = Field(20, ge=1, le=200, description="candidates fetched for the reranker")
    policy_retrieve_k: int | None = Field(None, ge=1, le=200, description="candidates fetched for the reranker from "
                                          "the policy passages (default: retrieve_k). The reranker was trained on "
                                          "catalog pairs and orders policy passages worse than the search does: "
                                          "fewer of them is faster and better (benchmarks/README.md)")
    rerank_token_budget: int = Field(8192, ge=128, description="max tokens per reranker batch")
    intent_batching: Batching = Batching()
    embedder_batching: Batching = Batching()
    reranker_batching: Batching = Batching(max_batch_size=16)
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    drift: DriftSettings = DriftSettings()
    auth: AuthSettings = AuthSettings()
