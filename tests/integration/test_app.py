"""The whole application over HTTP: every route, streaming, every error class, behaviour with real queries."""
import json
import re

import pytest

from models.datasets import load_catalog, load_policies
from models.train import bf16_supported

pytestmark = pytest.mark.slow

CATALOG = {s.id: s for s in load_catalog()}
POLICY_TEXT = {p.id: p.body.replace("**", "") for p in load_policies()}


def chat(client, query, **kw):
    r = client.post("/v1/chat", json={"query": query, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- health, docs, headers ---------------------------------------------------------------------

def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    deployments = body["deployments"]
    # serve/config/local.yaml: OpenVINO, bf16 where the CPU has it (what actually runs is reported)
    assert deployments["classifier"]["runtime"] == "openvino"
    assert deployments["classifier"]["precision"] == ("bf16" if bf16_supported() else "fp32")
    assert deployments["classifier"]["providers"] == ["openvino-CPU"]
    assert deployments["retriever"]["documents"]["catalog"] == len(CATALOG)
    assert deployments["reranker"]["token_budget"] == 8192


def test_openapi_lists_every_route(client):
    spec = client.get("/openapi.json").json()
    for route in ("/v1/chat", "/v1/classify", "/v1/embed", "/v1/search", "/v1/rerank", "/healthz", "/readyz"):
        assert route in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_request_id_and_stage_timing_headers(client):
    r = client.post("/v1/chat", json={"query": "do you ship to canada"}, headers={"x-request-id": "test-123"})
    assert r.headers["x-request-id"] == "test-123" and r.json()["request_id"] == "test-123"
    for stage in ("intent", "embed", "search", "rerank", "generate", "total"):
        assert float(r.headers[f"x-stage-{stage}-ms"]) >= 0
    generated = client.post("/v1/chat", json={"query": "hi"})
    assert len(generated.headers["x-request-id"]) >= 16
    assert generated.headers["x-request-id"] == generated.json()["request_id"] != "test-123"


# --- model routes ------------------------------------------------------------------------------

def test_classify(client):
    r = client.post("/v1/classify", json={"texts": ["where is my order MA-552301", "hi there!"]})
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == ["order_status", "chitchat"]
    for p in preds:
        assert abs(sum(p["scores"].values()) - 1) < 1e-4 and len(p["scores"]) == 8
        assert p["confidence"] == max(p["scores"].values())


def test_embed(client):
    body = client.post("/v1/embed", json={"texts": ["berserk", "dark fantasy manga"]}).json()
    assert body["dimensions"] == 384 and len(body["embeddings"]) == 2
    assert body["model"].startswith("embedder:v-")
    norm = sum(x * x for x in body["embeddings"][0]) ** 0.5
    assert abs(norm - 1) < 1e-3


def test_search_with_filters(client):
    hits = client.post("/v1/search", json={"query": "dark fantasy", "top_k": 10,
                                          "filters": {"demographic": ["seinen"], "genres": ["dark fantasy"]}}).json()["hits"]
    assert hits
    for h in hits:
        assert h["metadata"]["demographic"] == "seinen" and "dark fantasy" in h["metadata"]["genres"]
    cheap = client.post("/v1/search", json={"query": "romance", "top_k": 10,
                                           "filters": {"edition": "deluxe", "in_stock": True, "price_max": 30}}).json()["hits"]
    for h in cheap:
        assert any(e["edition"] == "deluxe" and e["in_stock"] and e["price"] <= 30 for e in h["metadata"]["editions"])
    policy = client.post("/v1/search", json={"query": "refund", "index": "policy", "filters": {"category": "returns_refunds"}}).json()
    assert policy["hits"] and all(h["metadata"]["category"] == "returns_refunds" for h in policy["hits"])


def test_rerank_orders_by_relevance(client):
    docs = ["Our return window is 30 days from delivery.", "Berserk is a dark fantasy seinen manga by Kentaro Miura.",
            "We ship to Canada for a flat rate."]
    results = client.post("/v1/rerank", json={"query": "Berserk dark fantasy manga", "documents": docs}).json()["results"]
    assert [r["index"] for r in results][0] == 1
    assert results == sorted(results, key=lambda r: -r["score"]) and len(results) == 3
    top1 = client.post("/v1/rerank", json={"query": "Berserk", "documents": docs, "top_k": 1}).json()["results"]
    assert len(top1) == 1


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,status,kind", [
    ("/v1/chat", {"query": ""}, 400, "empty_query"),
    ("/v1/chat", {"query": "   \n\t "}, 400, "empty_query"),
    ("/v1/chat", {"query": "x" * 1001}, 413, "query_too_long"),
    ("/v1/chat", {"query": 42}, 422, "validation_error"),
    ("/v1/chat", {"text": "hi"}, 422, "validation_error"),
    ("/v1/chat", {"query": "hi", "top_k": 500}, 422, "top_k_too_large"),
    ("/v1/chat", {"query": "hi", "top_k": 0}, 422, "validation_error"),
    ("/v1/chat", {"query": "recommend me a romance manga", "filters": {"category": "shipping"}}, 422, "invalid_filter"),
    ("/v1/classify", {"texts": ["x" * 1001]}, 413, "text_too_long"),
    ("/v1/classify", {"texts": []}, 422, "validation_error"),
    ("/v1/classify", {"texts": ["hi"] * 65}, 413, "too_many_texts"),
    ("/v1/classify", {"texts": ["ok", " "]}, 400, "empty_query"),
    ("/v1/embed", {"texts": "not a list"}, 422, "validation_error"),
    ("/v1/search", {"query": "refund", "index": "policy", "filters": {"genres": ["romance"]}}, 422, "invalid_filter"),
    ("/v1/search", {"query": "x", "index": "orders"}, 422, "validation_error"),
    ("/v1/search", {"query": "x", "filters": {"price_min": 30, "price_max": 10}}, 422, "invalid_filter"),
    ("/v1/rerank", {"query": "q", "documents": ["d"] * 65}, 413, "too_many_documents"),
    ("/v1/rerank", {"query": "q", "documents": ["d" * 4001]}, 413, "document_too_long"),
    ("/v1/rerank", {"query": "q", "documents": [1, 2]}, 422, "validation_error"),
])
def test_bad_input_is_a_clear_4xx(client, path, body, status, kind):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind and r.json()["error"]["message"]


def test_invalid_json_and_utf8_are_400(client):
    for raw in (b'{"query": "hi"', b'{"query": "\xff\xfe"}'):
        r = client.post("/v1/chat", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"


def test_oversized_body_is_413(client):
    r = client.post("/v1/classify", content=b'{"texts": ["' + b"a" * 300_000 + b'"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"


# --- chat behaviour ----------------------------------------------------------------------------

def test_dark_fantasy_like_berserk(client):
    body = chat(client, "dark fantasy manga like Berserk?")
    assert body["intent"]["label"] == "recommendation"
    ids = [s["id"] for s in body["sources"]]
    assert "berserk" not in ids and len(ids) == 5
    dark = [i for i in ids if "dark fantasy" in CATALOG[i].genres or CATALOG[i].demographic == "seinen"]
    assert len(dark) >= 4, [(i, CATALOG[i].demographic, CATALOG[i].genres) for i in ids]
    assert "Berserk by" not in body["answer"]


def test_volume_query_finds_that_volume(client):
    body = chat(client, "do you have One Piece volume 105")
    assert body["intent"]["label"] == "product_search"
    assert body["sources"][0]["id"] == "one-piece"
    assert "One Piece, Vol. 105 (Standard Edition)" in body["answer"]
    standard = next(e for e in CATALOG["one-piece"].editions if e.edition == "standard")
    assert f"${standard.price:.2f}" in body["answer"]


def test_ship_to_canada_cites_the_shipping_policy(client):
    body = chat(client, "do you ship to Canada")
    assert body["intent"]["label"] == "shipping"
    ids = [s["id"].split("#")[0] for s in body["sources"]]
    # first: a shipping policy, or the store page's "Where we ship" passage, which names Canada too (the reranker
    # scores the three within 0.001 of each other); the Canada policy itself among the first three
    assert ids[0] in {"shipping-canada", "shipping-international", "about-mangaassist-store"}
    assert "shipping-canada" in ids[:3]
    assert "Canada" in body["answer"]


def test_damaged_item_is_returns_and_cites_damaged_policy(client):
    body = chat(client, "volume 3 arrived damaged, can I get a refund")
    assert body["intent"]["label"] == "returns_refunds"
    assert "damaged-items" in [s["id"].split("#")[0] for s in body["sources"][:2]]


def test_hi_is_answered_without_retrieval(client):
    body = chat(client, "hi!")
    assert body["intent"]["label"] == "chitchat"
    assert body["sources"] == [] and "embed" not in body["timings_ms"] and "search" not in body["timings_ms"]
    assert body["answer"].startswith("Hi!")


def test_order_number_is_recognized(client):
    body = chat(client, "where is my order MA-552301")
    assert body["intent"]["label"] == "order_status"
    assert "MA-552301" in body["answer"] and body["sources"]


@pytest.mark.parametrize("query", [
    "how much is the Vagabond VIZBIG edition, in stock?",
    "how many volumes does Monster have, is it finished?",
    "any completed romance manga you'd recommend",
    "price of death note all-in-one edition",
])
def test_facts_in_answers_match_the_sources(client, query):
    """Every price and volume count an answer states is in a cited series' catalog entry."""
    body = chat(client, query)
    cited = [CATALOG[s["id"]] for s in body["sources"] if s["id"] in CATALOG]
    assert cited
    prices = {f"${e.price:.2f}" for s in cited for e in s.editions}
    for price in re.findall(r"\$\d+\.\d\d", body["answer"]):
        assert price in prices, (price, body["answer"])
    counts = {s.volumes for s in cited}
    for n in re.findall(r"(\d+) volumes", body["answer"]):
        assert int(n) in counts, (n, body["answer"])
    titles = {s.title for s in cited}
    assert any(t in body["answer"] for t in titles)


def test_policy_answers_quote_the_cited_passage(client):
    body = chat(client, "how long do refunds take to reach my paypal")
    quoted = body["answer"].split("policy: ", 1)[1]
    policy = body["sources"][0]["id"].split("#")[0]
    for sentence in re.split(r"(?<=[.!?])\s+", quoted):
        assert sentence in POLICY_TEXT[policy] or sentence.rstrip(".") in POLICY_TEXT[policy], sentence


def test_low_confidence_is_answered_conservatively(client):
    body = chat(client, "asdf qwerty zxcv")
    if body["intent"]["low_confidence"]:
        assert "not sure" in body["answer"] and "$" not in body["answer"]
    assert body["intent"]["confidence"] <= 1


def test_streaming_sse(client):
    with client.stream("POST", "/v1/chat", json={"query": "do you have Monster volume 3", "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = sse_events(text)
    tokens = [d["delta"] for e, d in events if e == "token"]
    kind, final = events[-1]
    assert kind == "final" and len(tokens) > 5
    assert "".join(tokens) == final["answer"]
    plain = chat(client, "do you have Monster volume 3")
    assert plain["answer"] == final["answer"] and plain["sources"] == final["sources"]
    # the Accept header alone also asks for a stream
    r = client.post("/v1/chat", json={"query": "hi"}, headers={"accept": "text/event-stream"})
    assert sse_events(r.text)[-1][0] == "final"
