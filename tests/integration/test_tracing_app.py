"""One trace per request across every deployment, with the request id on our stage spans."""
import json
import time
import uuid


def read_spans(folder) -> list[dict]:
    """Ray's default exporter appends pretty-printed JSON spans, one after another, per process."""
    decoder, spans = json.JSONDecoder(), []
    for path in folder.glob("*.json"):
        text, pos = path.read_text(), 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            span, pos = decoder.raw_decode(text, pos)
            spans.append(span)
    return spans


def spans_of(folder, request_id: str, stages: set[str], timeout: float = 20.0) -> tuple[list[dict], list[dict]]:
    """(our stage spans of the request, every span of its trace), once all the stages are written."""
    deadline = time.monotonic() + timeout
    while True:
        spans = read_spans(folder)
        ours = [s for s in spans if s["attributes"].get("mangaassist.request_id") == request_id]
        if {s["attributes"]["mangaassist.stage"] for s in ours} >= stages or time.monotonic() > deadline:
            trace_ids = {s["context"]["trace_id"] for s in ours}
            return ours, [s for s in spans if s["context"]["trace_id"] in trace_ids]
        time.sleep(0.5)


def test_a_chat_request_is_one_trace_through_every_deployment(client, spans_dir):
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    r = client.post("/v1/chat", json={"query": "dark fantasy manga like Berserk?"}, headers={"x-request-id": request_id})
    assert r.status_code == 200 and r.json()["request_id"] == request_id
    stages = {"intent", "lookup", "embed", "search", "rerank", "generate"}
    ours, trace = spans_of(spans_dir, request_id, stages)

    assert {s["attributes"]["mangaassist.stage"] for s in ours} == stages
    assert len({s["context"]["trace_id"] for s in ours}) == 1  # one trace, not one per stage
    by_id = {s["context"]["span_id"]: s for s in trace}
    # Ray's replica spans for the model deployments hang below our stage spans: context went through the handles
    children = {s["name"] for s in trace if by_id.get(s["parent_id"], {}).get("name", "").startswith("mangaassist.")}
    for deployment in ("IntentClassifier", "Embedder", "Retriever", "Reranker", "Generator"):
        assert any(deployment in name for name in children), (deployment, sorted(children))
    # and the whole trace starts at the HTTP proxy's server span
    roots = [s for s in trace if s["parent_id"] is None]
    assert [(r["name"], r["kind"]) for r in roots] == [("POST /v1/chat", "SpanKind.SERVER")]


def test_a_streamed_answer_has_its_generate_span(client, spans_dir):
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    r = client.post("/v1/chat", json={"query": "do you ship to canada", "stream": True},
                    headers={"x-request-id": request_id})
    assert r.status_code == 200 and "event: final" in r.text
    ours, _ = spans_of(spans_dir, request_id, {"intent", "generate"})
    assert {"intent", "generate"} <= {s["attributes"]["mangaassist.stage"] for s in ours}
    assert len({s["context"]["trace_id"] for s in ours}) == 1
