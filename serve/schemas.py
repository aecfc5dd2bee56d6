"""HTTP API schemas (DESIGN §3): what clients send and get back, as FastAPI/OpenAPI sees it."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Demographic = Literal["shonen", "shojo", "seinen", "josei", "kodomo"]
EditionKind = Literal["standard", "deluxe", "omnibus", "box_set", "collector"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(Strict):
    """Metadata filters. Catalog: every listed genre, any listed demographic, and one edition that
    satisfies edition/in_stock/price together. Policy: category."""

    genres: list[str] | None = None
    demographic: list[Demographic] | None = None
    edition: EditionKind | None = None
    in_stock: bool | None = None
    price_min: float | None = Field(None, ge=0)
    price_max: float | None = Field(None, ge=0)
    category: str | None = None


class ChatRequest(Strict):
    query: str
    stream: bool = False
    top_k: int = Field(5, ge=1)
    filters: Filters | None = None


class IntentOut(BaseModel):
    label: str
    confidence: float
    low_confidence: bool


class Source(BaseModel):
    id: str
    title: str
    score: float


class Usage(BaseModel):
    """Generation cost (Bedrock only; null for the local template)."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    stop_reason: str | None


class ChatResponse(BaseModel):
    answer: str
    intent: IntentOut
    sources: list[Source]
    degraded: list[str]
    timings_ms: dict[str, float]
    request_id: str
    usage: Usage | None = None


class TextsRequest(Strict):
    texts: list[str] = Field(min_length=1)


class Prediction(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimensions: int
    model: str


class SearchRequest(Strict):
    query: str
    top_k: int = Field(5, ge=1)
    index: Literal["catalog", "policy"] = "catalog"
    filters: Filters | None = None


class Hit(BaseModel):
    id: str
    title: str
    score: float
    metadata: dict


class SearchResponse(BaseModel):
    hits: list[Hit]


class RerankRequest(Strict):
    query: str
    documents: list[str] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1)


class RerankResult(BaseModel):
    index: int
    score: float


class RerankResponse(BaseModel):
    results: list[RerankResult]


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
