"""Amazon OpenSearch k-NN retrieval: index mapping, idempotent bulk ingestion and filtered k-NN search.

Plain Python (no Ray): the Serve deployments and `mangaassist index --backend opensearch` wrap
`OpenSearchStore`. One index per corpus and embedder version (`<prefix>-<name>-<version>`), so a new
embedder means a new index and a query vector is only ever compared with vectors of its own model.
Filters mean exactly what they mean for the embedded FAISS index (`serve.index.VectorIndex.mask`).

Credentials: basic auth from OPENSEARCH_USERNAME / OPENSEARCH_PASSWORD, or AWS SigV4 from boto3's
default chain (IRSA on EKS, env, profile). Nothing secret is logged or shown in a repr.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal
from urllib.parse import urlsplit

import numpy as np
from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection
from opensearchpy.exceptions import ConnectionTimeout, RequestError, TransportError
from opensearchpy.helpers import streaming_bulk
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from tqdm.auto import tqdm

from serve.index import Document, check_filters

log = logging.getLogger(__name__)

VECTOR_FIELD = "embedding"
SOURCE_FIELDS = ["title", "text", "metadata"]  # what an answer needs; never the vector
RETRY_ON_STATUS = (502, 503, 504)  # transport-level retries; 429 is retried with backoff by streaming_bulk


def _env_secret(name: str) -> SecretStr | None:
    value = os.environ.get(name)
    return SecretStr(value) if value else None


class OpenSearchSettings(BaseModel):
    """Where the OpenSearch domain (or Serverless collection) is, how to sign in, and the HNSW index shape."""

    # hide_input_in_errors: a rejected value (a host URL, a password) must not be echoed into logs.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    hosts: list[str] = Field(default_factory=lambda: ["https://localhost:9200"], min_length=1,
                             description="endpoint URLs, e.g. https://search-x.eu-west-1.es.amazonaws.com")
    index_prefix: str = Field("mangaassist", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    auth: Literal["none", "basic", "sigv4"] = "none"
    username: str | None = Field(default_factory=lambda: os.environ.get("OPENSEARCH_USERNAME") or None)
    # exclude: never serialized, so settings rebuilt from a dump read the env again instead of "**********"
    password: SecretStr | None = Field(default_factory=lambda: _env_secret("OPENSEARCH_PASSWORD"), exclude=True)
    region: str | None = Field(default_factory=lambda: os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    service: Literal["es", "aoss"] = Field("es", description="es: OpenSearch Service domain; aoss: Serverless")
    engine: Literal["faiss", "lucene"] = "faiss"
    space_type: Literal["innerproduct", "cosinesimil", "l2"] = "innerproduct"
    m: int = Field(16, ge=2, description="HNSW graph degree")
    ef_construction: int = Field(128, ge=2)
    ef_search: int = Field(100, ge=1)
    request_timeout_s: float = Field(5.0, gt=0, description="per search / index-admin request")
    bulk_timeout_s: float = Field(60.0, gt=0, description="per bulk request (offline ingestion may wait longer)")
    bulk_chunk_size: int = Field(200, ge=1, description="documents per bulk request (and per page when reading stored hashes)")
    max_retries: int = Field(5, ge=0, description="bulk retries on 429, and transport retries on 502/503/504")
    initial_backoff_s: float = Field(0.5, ge=0, description="first 429 backoff, doubled on each retry")
    verify_certs: bool = True
    pool_maxsize: int = Field(32, ge=1, description="HTTP connections per host (a replica serves many requests at once)")

    @field_validator("hosts")
    @classmethod
    def _plain_urls(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            parts = urlsplit(host)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("each host must be an http(s):// URL")
            if parts.username or parts.password:
                raise ValueError("credentials in a host URL would be logged: use OPENSEARCH_USERNAME / OPENSEARCH_PASSWORD")
        return hosts

    @model_validator(mode="after")
    def _auth_complete(self) -> OpenSearchSettings:
        if self.auth == "basic" and not (self.username and self.password and self.password.get_secret_value()):
            raise ValueError("auth 'basic' needs OPENSEARCH_USERNAME and OPENSEARCH_PASSWORD")
        if self.auth == "sigv4" and not self.region:
            raise ValueError("auth 'sigv4' needs a region (setting 'region', or AWS_REGION)")
        return self

    @property
    def serverless(self) -> bool:
        return self.auth == "sigv4" and self.service == "aoss"


class OpenSearchBackendError(RuntimeError):
    """OpenSearch is unusable for this request or this configuration."""


class IndexMissingError(OpenSearchBackendError):
    pass


class IndexMismatchError(OpenSearchBackendError):
    """The index exists but was built for other vectors (startup check)."""


class SearchTimeout(OpenSearchBackendError, TimeoutError):
    """A search took longer than `request_timeout_s` (a TimeoutError, like the other stage deadlines)."""


def make_client(settings: OpenSearchSettings) -> OpenSearch:
    """An OpenSearch client with basic auth or SigV4, timeouts and transport retries."""
    auth: dict[str, Any] = {}
    if settings.auth == "basic":
        auth["http_auth"] = (settings.username, settings.password.get_secret_value())
    elif settings.auth == "sigv4":
        import boto3  # only SigV4 needs boto3

        # Refreshable credentials: the signer freezes them per request, so IRSA rotation just works.
        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise OpenSearchBackendError("auth 'sigv4': no AWS credentials in the default chain (IRSA, env, profile)")
        auth["http_auth"] = AWSV4SignerAuth(credentials, settings.region, settings.service)
        auth["connection_class"] = RequestsHttpConnection  # AWSV4SignerAuth is a requests auth
    return OpenSearch(hosts=settings.hosts, timeout=settings.request_timeout_s, verify_certs=settings.verify_certs,
                      max_retries=settings.max_retries, retry_on_status=RETRY_ON_STATUS, retry_on_timeout=False,
                      pool_maxsize=settings.pool_maxsize, **auth)


# --- index shape ---------------------------------------------------------------------------------

_KEYWORD = {"type": "keyword"}
_INTEGER = {"type": "integer"}
_BOOLEAN = {"type": "boolean"}
# double, not float: price bounds must compare exactly as the FAISS backend's float64 comparisons do.
_PRICE = {"type": "double"}

METADATA_MAPPINGS: dict[str, dict] = {
    "catalog": {
        "author": _KEYWORD, "year": _INTEGER, "demographic": _KEYWORD, "genres": _KEYWORD,
        "themes": _KEYWORD, "status": _KEYWORD, "volumes": _INTEGER, "in_stock": _BOOLEAN,
        "min_price": _PRICE,
        # nested: edition, in_stock and price must hold for ONE edition, not across editions.
        "editions": {"type": "nested", "properties": {
            "edition": _KEYWORD, "name": _KEYWORD, "price": _PRICE, "in_stock": _BOOLEAN, "books": _INTEGER}},
    },
    "policy": {"policy_id": _KEYWORD, "category": _KEYWORD, "passage": _INTEGER},
}
EDITIONS_PATH = "metadata.editions"


def index_name(prefix: str, name: str, embedder_version: str) -> str:
    """`<prefix>-<name>-<embedder version>`, reduced to the characters OpenSearch allows in index names."""
    return re.sub(r"[^a-z0-9._-]+", "-", f"{prefix}-{name}-{embedder_version}".lower())


def index_body(name: str, dimensions: int, settings: OpenSearchSettings) -> dict:
    """The `PUT /<index>` body: k-NN settings, the knn_vector field and the metadata fields filters use."""
    if name not in METADATA_MAPPINGS:
        raise ValueError(f"unknown index {name!r}; expected one of {sorted(METADATA_MAPPINGS)}")
    vector = {"type": "knn_vector", "dimension": dimensions,
              "method": {"name": "hnsw", "engine": settings.engine, "space_type": settings.space_type,
                         "parameters": {"m": settings.m, "ef_construction": settings.ef_construction}}}
    return {
        "settings": {"index": {"knn": True, "knn.algo_param.ef_search": settings.ef_search}},
        "mappings": {
            # Metadata not listed here stays in _source but is not indexed (no mapping drift).
            "dynamic": False,
            "properties": {
                "id": _KEYWORD,  # sortable copy of _id: paging through stored hashes
                "title": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
                "text": {"type": "text"},
                "content_hash": _KEYWORD,
                "metadata": {"type": "object", "properties": METADATA_MAPPINGS[name]},
                VECTOR_FIELD: vector,
            },
        },
    }


def document_source(doc: Document, vector: np.ndarray) -> dict:
    """The stored document, with a hash of everything in it so that re-ingesting can skip it."""
    source = {"id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata,
              VECTOR_FIELD: np.asarray(vector, dtype=np.float32).tolist()}
    canonical = json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {**source, "content_hash": hashlib.sha256(canonical.encode("utf-8")).hexdigest()}


# --- queries -------------------------------------------------------------------------------------

def _term(field_name: str, value: Any) -> dict:
    return {"term": {field_name: value}}


def knn_filter(name: str, filters: dict | None, exclude: Iterable[str] = ()) -> dict | None:
    """Our filters as an OpenSearch bool query (None: nothing to filter); raises FilterError like FAISS does."""
    f = check_filters(name, filters)
    clauses: list[dict] = []
    if "category" in f:
        clauses.append(_term("metadata.category", f["category"]))
    # every listed genre (FAISS lower-cases the wanted genres too)
    clauses += [_term("metadata.genres", genre.lower()) for genre in f.get("genres", ())]
    if "demographic" in f:  # any listed demographic; an empty list matches nothing, as in FAISS
        clauses.append({"terms": {"metadata.demographic": list(f["demographic"])}})
    edition: list[dict] = []
    if "edition" in f:
        edition.append(_term(f"{EDITIONS_PATH}.edition", f["edition"]))
    if "in_stock" in f:
        edition.append(_term(f"{EDITIONS_PATH}.in_stock", bool(f["in_stock"])))
    price = {op: f[key] for op, key in (("gte", "price_min"), ("lte", "price_max")) if key in f}
    if price:
        edition.append({"range": {f"{EDITIONS_PATH}.price": price}})
    if edition:
        clauses.append({"nested": {"path": EDITIONS_PATH, "query": {"bool": {"filter": edition}}}})
    excluded = sorted(set(exclude))
    if not clauses and not excluded:
        return None
    query: dict = {}
    if clauses:
        query["filter"] = clauses
    if excluded:
        query["must_not"] = [{"ids": {"values": excluded}}]
    return {"bool": query}


def search_body(name: str, vector: np.ndarray, k: int, filters: dict | None = None,
                exclude: Iterable[str] = ()) -> dict:
    """A k-NN query with efficient filtering: the filter is applied during the graph search, so k
    documents come back whenever k documents match (a post-filter would return fewer)."""
    knn: dict = {"vector": np.asarray(vector, dtype=np.float32).ravel().tolist(), "k": k}
    restriction = knn_filter(name, filters, exclude)
    if restriction is not None:
        knn["filter"] = restriction
    return {"size": k, "_source": SOURCE_FIELDS, "query": {"knn": {VECTOR_FIELD: knn}}}


# --- the store -----------------------------------------------------------------------------------

@dataclass
class IngestReport:
    index: str
    total: int
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    rejected: list[dict] = field(default_factory=list)  # {"id", "status", "error"}

    @property
    def indexed(self) -> int:
        return self.created + self.updated

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.deleted

    def summary(self) -> str:
        return (f"{self.index}: {self.total} documents: {self.created} created, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.deleted} deleted, {len(self.rejected)} rejected")


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
    return str(error)


class OpenSearchStore:
    """The catalog and policy k-NN indexes on an OpenSearch domain or Serverless collection."""

    def __init__(self, settings: OpenSearchSettings, client: OpenSearch | None = None):
        self.settings = settings
        self.client = client if client is not None else make_client(settings)

    def index_name(self, name: str, embedder_version: str) -> str:
        return index_name(self.settings.index_prefix, name, embedder_version)

    # --- index lifecycle ---

    def check_index(self, name: str, dimensions: int, embedder_version: str) -> str:
        """Startup check for serving: the index exists and holds `dimensions`-dimensional vectors."""
        index = self.index_name(name, embedder_version)
        if not self.client.indices.exists(index=index):
            raise IndexMissingError(f"OpenSearch index {index!r} does not exist: run `mangaassist index --backend opensearch`")
        self._check_mapping(index, name, dimensions)
        return index

    def ensure_index(self, name: str, dimensions: int, embedder_version: str) -> str:
        """Create the index when missing, then check it like `check_index`."""
        index = self.index_name(name, embedder_version)
        if not self.client.indices.exists(index=index):
            try:
                self.client.indices.create(index=index, body=index_body(name, dimensions, self.settings))
                log.info("created OpenSearch index %s (%d dimensions, %s/%s)", index, dimensions,
                         self.settings.engine, self.settings.space_type)
            except RequestError as e:
                if e.error != "resource_already_exists_exception":  # another replica won the race: fine
                    raise
        self._check_mapping(index, name, dimensions)
        return index

    def _check_mapping(self, index: str, name: str, dimensions: int) -> None:
        response = self.client.indices.get_mapping(index=index)
        mapping = next(iter(response.values()), {}).get("mappings", {})
        vector = mapping.get("properties", {}).get(VECTOR_FIELD, {})
        if vector.get("type") != "knn_vector":
            raise IndexMismatchError(f"OpenSearch index {index!r} has no knn_vector field {VECTOR_FIELD!r}: "
                                     "it was not created by this code; delete it or change index_prefix")
        if vector.get("dimension") != dimensions:
            raise IndexMismatchError(
                f"OpenSearch index {index!r} holds {vector.get('dimension')}-dimensional vectors but the embedder "
                f"produces {dimensions}: the index was built with another embedder; re-index, or serve the embedder it was built with")
        wanted = index_body(name, dimensions, self.settings)["mappings"]["properties"][VECTOR_FIELD]["method"]
        actual = vector.get("method", {})
        differs = [key for key in ("engine", "space_type") if actual.get(key) != wanted[key]]
        differs += [key for key, value in wanted["parameters"].items() if actual.get("parameters", {}).get(key) != value]
        if differs:  # still a working index: HNSW parameters cannot change in place, so say so and go on
            log.warning("OpenSearch index %s differs from the configured HNSW method in %s; delete and re-index to apply",
                        index, ", ".join(differs))

    def delete_index(self, name: str, embedder_version: str) -> bool:
        """Delete the index; False when there was none."""
        response = self.client.indices.delete(index=self.index_name(name, embedder_version), ignore=[404])
        return bool(response.get("acknowledged"))

    def count(self, name: str, embedder_version: str) -> int:
        return int(self.client.count(index=self.index_name(name, embedder_version))["count"])

    # --- ingestion ---

    def ingest(self, name: str, documents: list[Document], vectors: np.ndarray, embedder_version: str,
               progress: bool = True, prune: bool = True) -> IngestReport:
        """Make the index hold exactly `documents` (ids = document ids). Unchanged documents (same content
        hash) are not sent; with `prune`, stored documents no longer in `documents` are deleted. Re-running
        with the same input sends no write at all. Rejected documents are reported, not raised."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(documents):
            raise ValueError(f"need one vector per document: {len(documents)} documents, vectors of shape {vectors.shape}")
        sources = {doc.id: document_source(doc, vec) for doc, vec in zip(documents, vectors)}
        if len(sources) != len(documents):
            raise ValueError("document ids must be unique")
        index = self.ensure_index(name, vectors.shape[1], embedder_version)
        stored = self._stored_hashes(index)
        report = IngestReport(index=index, total=len(documents))
        actions: list[dict] = []
        for doc_id, source in sources.items():
            if stored.get(doc_id) == source["content_hash"]:
                report.unchanged += 1
            else:
                actions.append({"_op_type": "index", "_index": index, "_id": doc_id, "_source": source})
        if prune:
            actions += [{"_op_type": "delete", "_index": index, "_id": doc_id} for doc_id in sorted(stored.keys() - sources.keys())]
        done = 0
        with tqdm(total=len(actions), desc=f"opensearch {name}", unit="doc", disable=not progress) as bar:
            try:
                for ok, item in streaming_bulk(self.client, actions, chunk_size=self.settings.bulk_chunk_size,
                                               max_retries=self.settings.max_retries,
                                               initial_backoff=self.settings.initial_backoff_s,
                                               raise_on_error=False, raise_on_exception=True,
                                               request_timeout=self.settings.bulk_timeout_s):
                    self._count_result(report, ok, item)
                    done += 1
                    bar.update()
            except TransportError as e:  # the whole bulk request failed (e.g. 429 beyond max_retries)
                raise OpenSearchBackendError(f"bulk ingest into {index!r} failed after {done} of {len(actions)} "
                                             f"actions: HTTP {e.status_code} {e.error}; re-run to resume") from e
        if actions and not self.settings.serverless:  # Serverless has no _refresh; it makes writes visible itself
            self.client.indices.refresh(index=index)
        (log.warning if report.rejected else log.info)("%s", report.summary())
        return report

    @staticmethod
    def _count_result(report: IngestReport, ok: bool, item: dict) -> None:
        op, info = next(iter(item.items()))
        if ok:
            result = info.get("result")
            if result in ("created", "updated", "deleted"):
                setattr(report, result, getattr(report, result) + 1)
        elif op == "delete" and info.get("status") == 404:
            pass  # already gone: the goal of a delete is reached
        else:
            report.rejected.append({"id": info.get("_id"), "status": info.get("status"), "error": _reason(info.get("error"))})

    def _stored_hashes(self, index: str) -> dict[str, str | None]:
        """id -> content hash of every stored document, paged with search_after on the `id` keyword."""
        page = self.settings.bulk_chunk_size
        body: dict = {"size": page, "_source": ["content_hash"], "query": {"match_all": {}},
                      "sort": ["id"], "track_total_hits": False}  # ascending
        hashes: dict[str, str | None] = {}
        while True:
            hits = self.client.search(index=index, body=body, request_timeout=self.settings.request_timeout_s)["hits"]["hits"]
            hashes.update((hit["_id"], hit.get("_source", {}).get("content_hash")) for hit in hits)
            if len(hits) < page:
                return hashes
            body = {**body, "search_after": hits[-1]["sort"]}

    # --- search ---

    def search(self, name: str, vector: np.ndarray, k: int, filters: dict | None = None,
               exclude: Iterable[str] = (), *, embedder_version: str) -> list[dict]:
        """Top-k documents by the index's similarity among those the filters allow; `score` is
        OpenSearch's `_score` (for innerproduct: 1 + inner product when positive, 1 / (1 - ip) otherwise)."""
        index = self.index_name(name, embedder_version)
        body = search_body(name, vector, k, filters, exclude)
        try:
            response = self.client.search(index=index, body=body, request_timeout=self.settings.request_timeout_s)
        except ConnectionTimeout as e:
            raise SearchTimeout(f"OpenSearch search on {index!r} took longer than {self.settings.request_timeout_s} s") from e
        except TransportError as e:  # unreachable, 5xx after retries, 4xx: one error type for the caller's 503
            raise OpenSearchBackendError(f"OpenSearch search on {index!r} failed: {e.status_code} {e.error}") from e
        return [{"id": hit["_id"], **{key: hit["_source"].get(key) for key in SOURCE_FIELDS}, "score": hit["_score"]}
                for hit in response["hits"]["hits"]]
