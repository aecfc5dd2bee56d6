"""The OpenSearch k-NN backend on the wire: a local stand-in server (tests/opensearch_standin.py) answers
the real opensearch-py client, and every body sent or received is validated against the official
OpenSearch API spec (vendored in tests/schemas/opensearch-api). Search results are compared with the embedded
FAISS index (`serve.index.VectorIndex`) given the same vectors and filters."""
from __future__ import annotations

import base64
import logging
import time

import numpy as np
import pytest
from opensearchpy import AuthenticationException, RequestsHttpConnection
from pydantic import ValidationError

from opensearch_standin import SPEC_DIR, OpenSearchSpec, StandIn  # tests/ is on sys.path (rootdir conftest)
from serve.backends.opensearch import (IndexMismatchError, IndexMissingError, OpenSearchBackendError, OpenSearchSettings,
                                       OpenSearchStore, SearchTimeout, index_body, index_name, knn_filter, search_body)
from serve.index import Document, FilterError, VectorIndex, corpus

VERSION = "v-0123456789ab"
DIM = 16
USER, PASSWORD = "mangaassist-svc", "s3cr3t-Pa55w0rd-never-logged"
CATALOG_FILTERS = [
    None,
    {"genres": ["romance"]},
    {"genres": ["Action", "comedy"]},  # every listed genre; case-insensitive as in FAISS
    {"demographic": ["josei", "kodomo"]},  # any listed demographic
    {"demographic": []},  # matches nothing, as in FAISS
    {"genres": []},  # matches everything, as in FAISS
    {"edition": "deluxe"},
    {"in_stock": False},
    {"price_max": 9.99},  # bound included
    {"price_min": 15.0, "price_max": 40.0},
    # one edition must satisfy these together (nested); a flattened query would return more:
    {"edition": "deluxe", "in_stock": False},
    {"in_stock": True, "price_min": 100.0},
    {"genres": ["action"], "demographic": ["shonen", "seinen"], "edition": "omnibus", "in_stock": True, "price_max": 60.0},
    {"genres": None, "edition": None, "in_stock": None},  # unset filters are ignored
]
POLICY_FILTERS = [None, {"category": "shipping"}, {"category": "returns_refunds"}, {"category": "no-such-category"}]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("OPENSEARCH_USERNAME", "OPENSEARCH_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def docs() -> dict[str, list[Document]]:
    return {name: corpus(name) for name in ("catalog", "policy")}


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors(docs) -> dict[str, np.ndarray]:
    return {name: unit_vectors(len(d), seed) for seed, (name, d) in enumerate(docs.items())}


@pytest.fixture
def standin():
    with StandIn() as server:
        yield server


@pytest.fixture(scope="module")
def spec() -> OpenSearchSpec:
    assert SPEC_DIR.is_dir(), f"OpenSearch API spec not found at {SPEC_DIR}"  # vendored: never skip
    return OpenSearchSpec()


def store_for(server: StandIn, **settings) -> OpenSearchStore:
    settings = {"hosts": [server.url], "initial_backoff_s": 0.01, "request_timeout_s": 2.0, **settings}
    return OpenSearchStore(OpenSearchSettings(**settings))


def ingest_all(store: OpenSearchStore, docs, vectors, **kw):
    return {name: store.ingest(name, docs[name], vectors[name], VERSION, progress=False, **kw) for name in docs}


# --- settings, index shape ------------------------------------------------------------------------

def test_index_names_and_body():
    assert index_name("mangaassist", "catalog", "v-0123456789ab") == "mangaassist-catalog-v-0123456789ab"
    assert index_name("mangaassist", "catalog", "Titan:v2/1024") == "mangaassist-catalog-titan-v2-1024"
    body = index_body("catalog", 384, OpenSearchSettings(engine="lucene", space_type="cosinesimil", m=24))
    assert body["settings"] == {"index": {"knn": True, "knn.algo_param.ef_search": 100}}
    properties = body["mappings"]["properties"]
    assert properties["embedding"] == {"type": "knn_vector", "dimension": 384, "method": {
        "name": "hnsw", "engine": "lucene", "space_type": "cosinesimil", "parameters": {"m": 24, "ef_construction": 128}}}
    metadata = properties["metadata"]["properties"]
    assert metadata["editions"]["type"] == "nested" and metadata["editions"]["properties"]["price"] == {"type": "double"}
    assert {"demographic", "genres", "themes", "status", "author", "year", "volumes"} <= set(metadata)
    assert set(index_body("policy", 8, OpenSearchSettings())["mappings"]["properties"]["metadata"]["properties"]) == {
        "policy_id", "category", "passage"}
    with pytest.raises(ValueError, match="unknown index"):
        index_body("reviews", 8, OpenSearchSettings())


def test_settings_validation_never_echoes_secrets(monkeypatch):
    with pytest.raises(ValidationError, match="OPENSEARCH_USERNAME and OPENSEARCH_PASSWORD"):
        OpenSearchSettings(auth="basic")
    with pytest.raises(ValidationError) as err:
        OpenSearchSettings(hosts=[f"https://{USER}:{PASSWORD}@search.example.internal"])
    assert "credentials in a host URL" in str(err.value) and PASSWORD not in str(err.value)
    with pytest.raises(ValidationError, match="needs a region"):
        OpenSearchSettings(auth="sigv4")
    with pytest.raises(ValidationError, match="Extra inputs"):
        OpenSearchSettings(shards=3)
    monkeypatch.setenv("OPENSEARCH_USERNAME", USER)
    monkeypatch.setenv("OPENSEARCH_PASSWORD", PASSWORD)
    settings = OpenSearchSettings(auth="basic")
    assert settings.password.get_secret_value() == PASSWORD
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert PASSWORD not in shown
    # rebuilt from a dump (as Serve args travel), the password comes from the env again, not "**********"
    assert OpenSearchSettings(**settings.model_dump(mode="json")).password.get_secret_value() == PASSWORD


# --- authentication -------------------------------------------------------------------------------

def test_basic_auth_sent_and_password_never_logged(monkeypatch, caplog, docs, vectors):
    monkeypatch.setenv("OPENSEARCH_USERNAME", USER)
    monkeypatch.setenv("OPENSEARCH_PASSWORD", PASSWORD)
    caplog.set_level(logging.DEBUG)
    tracer = logging.getLogger("opensearchpy.trace")  # the client's curl-style tracer does not propagate
    monkeypatch.setattr(tracer, "handlers", [caplog.handler])
    monkeypatch.setattr(tracer, "level", logging.DEBUG)
    with StandIn(basic_auth=(USER, PASSWORD)) as server:  # the stand-in answers 401 without the right header
        store = store_for(server, auth="basic")
        report = store.ingest("policy", docs["policy"], vectors["policy"], VERSION, progress=False)
        assert report.created == len(docs["policy"]) and not report.rejected
        assert store.search("policy", vectors["policy"][0], 3, embedder_version=VERSION)[0]["id"] == docs["policy"][0].id
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        assert server.exchanges and all(e.headers.get("authorization") == expected for e in server.exchanges)
        with pytest.raises(AuthenticationException) as err:  # wrong password: a 401, nothing secret in it
            OpenSearchStore(OpenSearchSettings(hosts=[server.url], auth="basic", password="wrong")).count("policy", VERSION)
        assert err.value.status_code == 401 and PASSWORD not in str(err.value)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert caplog.records and PASSWORD not in logged and encoded not in logged
    assert PASSWORD not in repr(store.settings) and PASSWORD not in repr(store.client.transport.connection_pool.connections)


@pytest.mark.parametrize("service", ["es", "aoss"])
def test_sigv4_signs_every_request(monkeypatch, standin, service, docs, vectors):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    store = store_for(standin, auth="sigv4", region="eu-west-1", service=service)
    assert all(isinstance(c, RequestsHttpConnection) for c in store.client.transport.connection_pool.connections)
    store.ingest("policy", docs["policy"][:20], vectors["policy"][:20], VERSION, progress=False)
    for exchange in standin.exchanges:
        headers = exchange.headers
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert f"/eu-west-1/{service}/aws4_request" in headers["authorization"]
        assert "x-amz-date" in headers and "x-amz-content-sha256" in headers
        assert "wJalrXUtnFEMI" not in str(exchange.headers)
    # Serverless has no _refresh API: the store must not call it there.
    assert bool(standin.requests_to("POST", "/_refresh")) == (service == "es")


def test_sigv4_without_credentials_is_a_clear_error(standin):
    with pytest.raises(OpenSearchBackendError, match="no AWS credentials"):
        store_for(standin, auth="sigv4", region="eu-west-1")


# --- index lifecycle ------------------------------------------------------------------------------

def test_dimension_mismatch_at_startup(standin):
    store = store_for(standin)
    with pytest.raises(IndexMissingError, match="mangaassist index --backend opensearch"):
        store.check_index("catalog", DIM, VERSION)
    index = store.ensure_index("catalog", DIM, VERSION)
    assert store.ensure_index("catalog", DIM, VERSION) == store.check_index("catalog", DIM, VERSION) == index
    assert len(standin.requests_to("PUT", f"/{index}")) == 1  # created once
    with pytest.raises(IndexMismatchError, match=rf"holds {DIM}-dimensional vectors but the embedder produces 384"):
        store.check_index("catalog", 384, VERSION)
    with pytest.raises(IndexMismatchError, match="produces 1024"):
        store.ensure_index("catalog", 1024, VERSION)
    assert store.delete_index("catalog", VERSION) is True and store.delete_index("catalog", VERSION) is False


def test_method_drift_is_reported(standin, caplog):
    store_for(standin).ensure_index("policy", DIM, VERSION)
    with caplog.at_level(logging.WARNING):
        store_for(standin, m=32, space_type="l2").check_index("policy", DIM, VERSION)
    assert "space_type, m" in caplog.text


# --- ingestion ------------------------------------------------------------------------------------

def test_ingest_counts_and_rerun_changes_nothing(standin, docs, vectors):
    store = store_for(standin, bulk_chunk_size=100)  # several bulk requests and hash pages per corpus
    first = ingest_all(store, docs, vectors)
    for name in docs:
        assert (first[name].created, first[name].unchanged, first[name].rejected) == (len(docs[name]), 0, [])
        assert store.count(name, VERSION) == len(docs[name])
    stored = standin.indexes[store.index_name("catalog", VERSION)].docs["07-ghost"]
    assert stored["metadata"]["editions"][0]["edition"] == "standard" and len(stored["embedding"]) == DIM

    bulks_before = len(standin.requests_to("POST", "/_bulk"))
    again = ingest_all(store, docs, vectors)
    for name in docs:
        assert (again[name].changed, again[name].unchanged, again[name].rejected) == (0, len(docs[name]), [])
        assert "0 created, 0 updated" in again[name].summary()
    assert len(standin.requests_to("POST", "/_bulk")) == bulks_before  # not one write sent
    assert all(v == 1 for v in standin.indexes[store.index_name("catalog", VERSION)].versions.values())

    # one passage edited, one gone: exactly one update and one delete
    policy = list(docs["policy"])
    policy[0] = Document(policy[0].id, policy[0].title, policy[0].text + " (revised)", policy[0].metadata)
    removed = policy.pop()
    report = store.ingest("policy", policy, vectors["policy"][:-1], VERSION, progress=True)
    assert (report.created, report.updated, report.deleted, report.unchanged) == (0, 1, 1, len(policy) - 1)
    assert store.count("policy", VERSION) == len(policy)
    assert removed.id not in standin.indexes[store.index_name("policy", VERSION)].docs


def test_ingest_rejects_bad_input(standin, docs, vectors):
    store = store_for(standin)
    with pytest.raises(ValueError, match="one vector per document"):
        store.ingest("policy", docs["policy"], vectors["policy"][:-1], VERSION, progress=False)
    with pytest.raises(ValueError, match="unique"):
        store.ingest("policy", docs["policy"][:2] * 2, vectors["policy"][:4], VERSION, progress=False)


def test_partial_failure_reports_rejected_documents(standin, docs, vectors):
    store = store_for(standin)
    bad = {docs["catalog"][5].id: "failed to parse field [metadata.year] of type [integer]",
           docs["catalog"][300].id: "failed to parse field [metadata.editions.price] of type [double]"}
    standin.fail_ids.update(bad)
    report = store.ingest("catalog", docs["catalog"], vectors["catalog"], VERSION, progress=False)
    assert report.created == len(docs["catalog"]) - 2
    assert sorted(report.rejected, key=lambda r: r["id"]) == sorted(
        ({"id": i, "status": 400, "error": f"mapper_parsing_exception: {reason}"} for i, reason in bad.items()),
        key=lambda r: r["id"])
    assert store.count("catalog", VERSION) == len(docs["catalog"]) - 2
    standin.fail_ids.clear()  # fixed: a re-run sends exactly the two missing documents
    report = store.ingest("catalog", docs["catalog"], vectors["catalog"], VERSION, progress=False)
    assert (report.created, report.unchanged, report.rejected) == (2, len(docs["catalog"]) - 2, [])


def test_429_then_success(standin, docs, vectors):
    store = store_for(standin, max_retries=3, bulk_chunk_size=100)
    standin.bulk_429_remaining = 2  # whole bulk requests rejected twice
    once = {docs["catalog"][0].id, docs["catalog"][250].id}
    standin.item_429_once = set(once)  # and two items once each
    started = time.monotonic()
    report = store.ingest("catalog", docs["catalog"], vectors["catalog"], VERSION, progress=False)
    assert (report.created, report.rejected) == (len(docs["catalog"]), [])
    assert store.count("catalog", VERSION) == len(docs["catalog"])
    bulks = standin.requests_to("POST", "/_bulk")
    assert [b.status for b in bulks].count(429) == 2 and len(bulks) == 4 + 2 + 2  # 4 chunks, 2 whole retries, 2 item retries
    retried = [b for b in bulks if b.status == 200 and len(b.ndjson()) == 2]  # the single-document retries
    assert {b.ndjson()[0]["index"]["_id"] for b in retried} == once
    assert time.monotonic() - started >= 0.01 + 0.02  # exponential backoff happened (0.01 s, then 0.02 s)


def test_429_beyond_retries_is_a_clear_error(standin, docs, vectors):
    store = store_for(standin, max_retries=2)
    standin.bulk_429_remaining = 10
    with pytest.raises(OpenSearchBackendError, match=r"failed after 0 of 174 actions: HTTP 429 .*re-run to resume"):
        store.ingest("policy", docs["policy"], vectors["policy"], VERSION, progress=False)
    assert len(standin.requests_to("POST", "/_bulk")) == 3  # first try + 2 retries


# --- search ---------------------------------------------------------------------------------------

def _expected(index: VectorIndex, query: np.ndarray, k: int, filters, exclude=()) -> list[str]:
    return [index.docs[i].id for i, _ in index.search(query, k, filters, exclude)]


@pytest.mark.parametrize("name,cases", [("catalog", CATALOG_FILTERS), ("policy", POLICY_FILTERS)])
def test_search_returns_what_faiss_returns(standin, docs, vectors, name, cases):
    store = store_for(standin)
    store.ingest(name, docs[name], vectors[name], VERSION, progress=False)
    faiss_index = VectorIndex(name, docs[name], vectors[name])
    queries = unit_vectors(3, seed=99)
    for filters in cases:
        for query in queries:
            for k in (1, 10):
                hits = store.search(name, query, k, filters, embedder_version=VERSION)
                assert [h["id"] for h in hits] == _expected(faiss_index, query, k, filters), (filters, k)
                for hit in hits:  # OpenSearch's innerproduct _score: 1 + ip when ip >= 0, else 1 / (1 - ip)
                    ip = float(vectors[name][[d.id for d in docs[name]].index(hit["id"])] @ query)
                    assert hit["score"] == pytest.approx(1 + ip if ip >= 0 else 1 / (1 - ip), abs=1e-6)
            excluded = [h["id"] for h in store.search(name, queries[0], 3, filters, embedder_version=VERSION)]
            hits = store.search(name, queries[0], 10, filters, exclude=excluded, embedder_version=VERSION)
            assert not {h["id"] for h in hits} & set(excluded)
            assert [h["id"] for h in hits] == _expected(faiss_index, queries[0], 10, filters, excluded), (filters, "exclude")
    hit = store.search(name, queries[0], 1, embedder_version=VERSION)[0]
    assert set(hit) == {"id", "title", "text", "metadata", "score"}
    assert hit == {**next(d.to_json() for d in docs[name] if d.id == hit["id"]), "score": hit["score"]}


def test_edition_filters_are_nested(docs):
    """The nested cases in CATALOG_FILTERS really discriminate: per-field matching across editions differs."""
    def flattened(doc, f):
        eds = doc.metadata["editions"]
        return (("edition" not in f or any(e["edition"] == f["edition"] for e in eds))
                and ("in_stock" not in f or any(e["in_stock"] == f["in_stock"] for e in eds))
                and ("price_min" not in f or any(e["price"] >= f["price_min"] for e in eds)))
    index = VectorIndex("catalog", docs["catalog"], unit_vectors(len(docs["catalog"]), 0))
    for f in ({"edition": "deluxe", "in_stock": False}, {"in_stock": True, "price_min": 100.0}):
        nested = index.mask(f)
        assert sum(flattened(d, f) for d in docs["catalog"]) > nested.sum() > 0
        clause = knn_filter("catalog", f)["bool"]["filter"]
        assert len(clause) == 1 and clause[0]["nested"]["path"] == "metadata.editions"


def test_unreachable_cluster_is_a_backend_error(docs, vectors):
    with StandIn() as server:
        store = store_for(server, max_retries=1)
    with pytest.raises(OpenSearchBackendError, match="search on 'mangaassist-policy-.*' failed: N/A"):
        store.search("policy", vectors["policy"][0], 5, embedder_version=VERSION)


def test_filter_errors_are_raised_before_any_request(standin, docs, vectors):
    store = store_for(standin)
    with pytest.raises(FilterError):
        store.search("policy", vectors["policy"][0], 5, {"genres": ["romance"]}, embedder_version=VERSION)
    with pytest.raises(FilterError):
        store.search("catalog", vectors["catalog"][0], 5, {"price_min": 20, "price_max": 10}, embedder_version=VERSION)
    assert standin.exchanges == []


def test_search_timeout_is_a_clear_exception(standin, docs, vectors):
    store = store_for(standin, request_timeout_s=0.2)
    store.ingest("policy", docs["policy"], vectors["policy"], VERSION, progress=False)
    standin.search_delay_s = 5.0
    started = time.monotonic()
    with pytest.raises(SearchTimeout, match=r"took longer than 0.2 s") as err:
        store.search("policy", vectors["policy"][0], 5, embedder_version=VERSION)
    assert isinstance(err.value, TimeoutError) and time.monotonic() - started < 2.0  # no retry on timeout


# --- the official API spec ------------------------------------------------------------------------

def test_every_exchange_matches_the_api_spec(spec, standin, docs, vectors):
    """Every request body the store sends, and every response the stand-in gives, against the spec."""
    store = store_for(standin, bulk_chunk_size=150)
    standin.fail_ids = {docs["policy"][3].id: "failed to parse"}
    standin.bulk_429_remaining = 1
    ingest_all(store, docs, vectors)
    standin.fail_ids.clear()
    ingest_all(store, docs, vectors)  # the re-run: hash paging only, one retried document
    store.ingest("policy", docs["policy"][:-1], vectors["policy"][:-1], VERSION, progress=False)  # a delete
    for name, cases in (("catalog", CATALOG_FILTERS), ("policy", POLICY_FILTERS)):
        for filters in cases:
            store.search(name, vectors[name][0], 5, filters, exclude=[docs[name][1].id], embedder_version=VERSION)
        store.count(name, VERSION)
    store.delete_index("policy", VERSION)
    store.delete_index("policy", VERSION)  # 404

    last = lambda path: path.rsplit("/", 1)[-1] if "/_" in path else "{index}"  # noqa: E731
    kinds = {(e.method, last(e.path)) for e in standin.exchanges}
    assert kinds == {("HEAD", "{index}"), ("PUT", "{index}"), ("GET", "_mapping"), ("POST", "_search"),
                     ("POST", "_bulk"), ("POST", "_refresh"), ("POST", "_count"), ("DELETE", "{index}")}, kinds
    problems = [p for e in standin.exchanges for p in spec.check_exchange(e)]
    assert problems == []

    # The bulk body schema is an array of anyOf[OperationContainer, UpdateAction, any object], so every
    # line passes it; check the action lines against OperationContainer itself.
    operation = spec.schema_uri("schemas/_core.bulk.yaml", "OperationContainer")
    actions = [action for e in standin.requests_to("POST", "/_bulk") for action in _action_lines(e.ndjson())]
    assert {next(iter(a)) for a in actions} == {"index", "delete"}
    assert all(spec.errors(operation, a) == [] for a in actions)


def _action_lines(lines: list[dict]) -> list[dict]:
    actions, position = [], 0
    while position < len(lines):
        actions.append(lines[position])
        position += 1 if "delete" in lines[position] else 2  # a delete has no document line
    return actions


def _query_keys(query: dict, seen: dict[str, set]) -> dict[str, set]:
    """Keys used per query schema in one of our filters: query kinds, bool/nested options."""
    (kind, options), = query.items()
    seen.setdefault("QueryContainer", set()).add(kind)
    if kind == "bool":
        seen.setdefault("BoolQuery", set()).update(options)
        for clause in options.values():
            for sub in clause:
                _query_keys(sub, seen)
    if kind == "nested":
        seen.setdefault("NestedQuery", set()).update(options)
        _query_keys(options["query"], seen)
    if kind == "ids":
        seen.setdefault("IdsQuery", set()).update(options)
    return seen


def test_bodies_use_only_keys_the_spec_declares(spec):
    """The spec never forbids unknown keys (no additionalProperties: false): a misspelt `dimensions`,
    `must_nt` or `termz` would validate. Check the keys we send against the ones it declares."""
    def declared(file: str, name: str) -> set[str]:
        return spec.declared_properties(f"schemas/{file}", f"/components/schemas/{name}")

    body = index_body("catalog", DIM, OpenSearchSettings())
    vector = body["mappings"]["properties"]["embedding"]
    assert set(vector) <= declared("_common.mapping.yaml", "KnnVectorProperty")
    assert set(vector["method"]) <= declared("_common.mapping.yaml", "KnnVectorMethod")
    assert set(body["settings"]["index"]) <= declared("indices._common.yaml", "IndexSettings")
    assert set(body["mappings"]) <= declared("_common.mapping.yaml", "TypeMapping")

    search = search_body("catalog", np.ones(DIM), 5, CATALOG_FILTERS[-2], exclude=["x"])
    request = spec.declared_properties("namespaces/_core.yaml", "/components/requestBodies/search/content/application~1json/schema")
    assert set(search) | {"sort", "search_after", "track_total_hits"} <= request  # the hash-paging search too
    knn = search["query"]["knn"]["embedding"]
    assert set(knn) <= declared("_common.query_dsl.yaml", "KnnQuery")
    used = _query_keys(knn["filter"], {})
    assert set(used) == {"QueryContainer", "BoolQuery", "NestedQuery", "IdsQuery"}
    for schema, keys in used.items():
        assert keys <= declared("_common.query_dsl.yaml", schema), schema


def test_spec_validation_catches_malformed_bodies(spec):
    """The validator is not vacuous: bodies the spec forbids are reported."""
    create = spec.uri("namespaces/indices.yaml", "/components/requestBodies/indices.create/content/application~1json/schema")
    search = spec.uri("namespaces/_core.yaml", "/components/requestBodies/search/content/application~1json/schema")
    good = index_body("policy", DIM, OpenSearchSettings())
    assert spec.errors(create, good) == []
    no_dimension = {**good, "mappings": {"properties": {"embedding": {"type": "knn_vector"}}}}
    assert spec.errors(create, no_dimension)
    bad_type = {**good, "mappings": {"properties": {"embedding": {"type": "dense_vector", "dimension": DIM}}}}
    assert spec.errors(create, bad_type)
    body = search_body("policy", np.ones(DIM), 5, {"category": "shipping"})
    assert spec.errors(search, body) == []
    assert spec.errors(search, {**body, "size": "five"})
    knn = body["query"]["knn"]["embedding"]
    assert spec.errors(search, {**body, "query": {"knn": {"embedding": {**knn, "vector": "0.1,0.2"}}}})
    assert spec.errors(search, {**body, "query": {"knn": {"embedding": {"k": 5}}}})  # vector is required
    assert spec.errors(search, {**body, "query": {"knn": {"embedding": {**knn, "filter": {"term": "shipping"}}}}})
