"""The whole graph with the production backends selected: Bedrock Claude generation against a local
Bedrock stand-in, and OpenSearch k-NN retrieval against a local OpenSearch stand-in (filled by
`mangaassist index --backend opensearch`'s code path)."""
import json

import pytest

from bedrock_standin import BedrockStandIn
from opensearch_standin import StandIn as OpenSearchStandIn
from serve.cli import index_opensearch
from serve.config import AppArgs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bedrock_app(deploy_app):
    with BedrockStandIn() as standin, OpenSearchStandIn() as opensearch:
        args = {"generator_backend": "bedrock", "retriever_backend": "opensearch",
                "opensearch": {"hosts": [opensearch.url], "auth": "none"},
                "bedrock": standin.settings()}
        assert index_opensearch(AppArgs.model_validate(args)) == 0
        assert index_opensearch(AppArgs.model_validate(args)) == 0  # idempotent re-run
        with deploy_app("bedrock", args) as client:
            yield client, standin


def test_claude_answers_from_the_retrieved_documents(bedrock_app):
    client, standin = bedrock_app
    body = client.post("/v1/chat", json={"query": "do you ship to Canada"}).json()
    assert not [d for d in body["degraded"] if d.startswith(("bedrock", "generator"))]
    titles = [s["title"] for s in body["sources"]]
    assert body["answer"] == f"From our documents: {', '.join(titles[:3])}."
    assert body["usage"]["input_tokens"] == 120 and body["usage"]["output_tokens"] == 9
    assert body["usage"]["cost_usd"] == pytest.approx(120 / 1000 * 0.003 + 9 / 1000 * 0.015)
    path, request = standin.requests[-1]
    assert path == "/model/test.claude-model/converse"
    assert "MangaAssist" in request["system"][0]["text"]
    user = request["messages"][0]["content"][0]["text"]
    assert user.startswith("<documents>") and "<question>" in user and "do you ship to Canada" in user
    assert client.get("/readyz").json()["deployments"]["generator"]["model"] == "bedrock:test.claude-model"


def test_claude_streams_token_deltas(bedrock_app):
    client, standin = bedrock_app
    with client.stream("POST", "/v1/chat", json={"query": "is Monster finished?", "stream": True}) as r:
        text = r.read().decode()
    events = [(b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:])) for b in text.strip().split("\n\n")]
    deltas = [d["delta"] for kind, d in events if kind == "token"]
    kind, final = events[-1]
    assert kind == "final" and len(deltas) >= 3
    assert "".join(deltas) == final["answer"] and final["answer"].startswith("From our documents: Monster")
    assert final["usage"]["output_tokens"] == 9
    assert not [d for d in final["degraded"] if d.startswith(("bedrock", "generator"))]
    assert standin.requests[-1][0] == "/model/test.claude-model/converse-stream"


def test_throttling_falls_back_to_the_template_then_opens_the_breaker(bedrock_app):
    client, standin = bedrock_app
    standin.mode = "throttle"
    try:
        first = client.post("/v1/chat", json={"query": "how many volumes does Monster have"}).json()
        assert "bedrock_throttled" in first["degraded"] and first["usage"] is None
        assert "18 volumes" in first["answer"]  # the grounded template answer
        client.post("/v1/chat", json={"query": "is Berserk finished"})
        seen = len(standin.requests)
        third = client.post("/v1/chat", json={"query": "how many volumes does Berserk have"}).json()
        assert "bedrock_breaker_open" in third["degraded"]
        assert len(standin.requests) == seen  # the open breaker fails fast: nothing was sent
        with client.stream("POST", "/v1/chat", json={"query": "how many volumes does Berserk have", "stream": True}) as r:
            final = json.loads(r.read().decode().strip().split("\n\n")[-1].split("\n")[1][6:])
        assert "bedrock_breaker_open" in final["degraded"] and "Kentaro Miura" in final["answer"]
    finally:
        standin.mode = "ok"


def test_opensearch_retrieval_with_filters(bedrock_app):
    client, _ = bedrock_app
    ready = client.get("/readyz").json()["deployments"]["retriever"]
    assert ready["backend"] == "opensearch" and ready["documents"] == {"catalog": 364, "policy": 174}
    hits = client.post("/v1/search", json={"query": "dark fantasy", "top_k": 8,
                                          "filters": {"demographic": ["seinen"], "genres": ["dark fantasy"]}}).json()["hits"]
    assert hits and all(h["metadata"]["demographic"] == "seinen" for h in hits)
    body = client.post("/v1/chat", json={"query": "dark fantasy manga like Berserk?"}).json()
    assert "berserk" not in [s["id"] for s in body["sources"]] and len(body["sources"]) == 5
