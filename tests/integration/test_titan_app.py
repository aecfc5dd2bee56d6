"""The graph embedding with Bedrock Titan V2 (against the local stand-in) over an OpenSearch index
built with the same embedder; when Titan is unavailable, requests get a clean 503 + Retry-After
(no local embedder can match a 256-dimension Titan index)."""
import pytest

from bedrock_standin import BedrockStandIn
from opensearch_standin import StandIn as OpenSearchStandIn
from serve.cli import index_opensearch
from serve.config import AppArgs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def titan_app(deploy_app):
    with BedrockStandIn() as bedrock, OpenSearchStandIn() as opensearch:
        args = {"embedder_backend": "bedrock", "retriever_backend": "opensearch",
                "opensearch": {"hosts": [opensearch.url], "auth": "none"},
                "bedrock": {"endpoint_url": bedrock.url, "region": "us-east-1", "dimensions": 256,
                            "max_attempts": 1, "breaker_failure_threshold": 50}}
        assert index_opensearch(AppArgs.model_validate(args)) == 0
        with deploy_app("titan", args) as client:
            yield client, bedrock


def test_titan_embeddings_end_to_end(titan_app):
    client, bedrock = titan_app
    ready = client.get("/readyz").json()["deployments"]
    assert ready["embedder"]["runtime"] == "bedrock" and ready["embedder"]["dimensions"] == 256
    assert ready["retriever"]["embedder_version"] == "amazon.titan-embed-text-v2:0-256"
    body = client.post("/v1/embed", json={"texts": ["berserk"]}).json()
    assert body["dimensions"] == 256 and body["model"] == "bedrock:amazon.titan-embed-text-v2:0"
    chat = client.post("/v1/chat", json={"query": "do you ship to Canada"})
    assert chat.status_code == 200 and len(chat.json()["sources"]) == 5
    path, request = bedrock.requests[-1]
    assert path == "/model/amazon.titan-embed-text-v2%3A0/invoke" or path.endswith("/invoke")
    assert request == {"inputText": "do you ship to Canada", "dimensions": 256, "normalize": True}


def test_titan_unavailable_is_a_clean_503(titan_app):
    client, bedrock = titan_app
    bedrock.mode = "throttle"
    try:
        r = client.post("/v1/chat", json={"query": "do you ship to Canada"})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["type"] == "embed_unavailable"
        hi = client.post("/v1/chat", json={"query": "hi!"})  # chitchat needs no embedding
        assert hi.status_code == 200
    finally:
        bedrock.mode = "ok"
