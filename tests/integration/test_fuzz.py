"""Fuzzing the served API: Schemathesis against the app's own /openapi.json (every route, valid and
invalid inputs), and Hypothesis property tests for text edge cases. Nothing may be a 5xx, and every
error must be `{"error": {"type", "message"}}` as documented."""
import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def error_shape(response) -> None:
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str)


def test_every_route_answers_per_its_schema_and_never_5xx(base_url):
    """Per operation, valid and invalid requests generated from the served schema (the pytest plugin's
    lazy loader does not run under pytest 9, so Hypothesis drives Schemathesis' strategies directly)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    sent: dict[str, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                      database=None)
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                response = case.call(timeout=30)
                sent[operation.label] = sent.get(operation.label, 0) + 1
                case.validate_response(response, checks=CHECKS)
                if (response.headers.get("content-type") or [""])[0].startswith("application/json"):
                    error_shape(response)  # (Schemathesis' responses keep every header as a list)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (a GET without parameters)
                assert mode is GenerationMode.NEGATIVE and not operation.body and not operation.query
    print(f"\nschemathesis: {sum(sent.values())} cases over {len(sent)} operations: {sent}")
    assert len(sent) == len(operations)


# --- text edge cases -------------------------------------------------------------------------------

EMOJI = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
RTL = st.characters(min_codepoint=0x0590, max_codepoint=0x06FF)  # Hebrew, Arabic
CONTROL = st.characters(categories=["Cc", "Cf"])  # NUL, escapes, bidi overrides, zero-width joiners
SURROGATE = st.characters(categories=["Cs"])
TEXT = st.text(st.one_of(EMOJI, CJK, RTL, CONTROL, st.characters(codec="ascii")), min_size=1, max_size=200)


def post(client, path: str, body) -> httpx.Response:
    # ensure_ascii: a lone surrogate travels as a JSON escape, the way a buggy client would send it
    return client.post(path, content=json.dumps(body, ensure_ascii=True), headers={"content-type": "application/json"})


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(text=TEXT, stream=st.booleans())
def test_chat_answers_any_text(client, text, stream):
    r = post(client, "/v1/chat", {"query": text, "stream": stream})
    assert r.status_code in {200, 400}, r.text  # 400: whitespace or control characters only
    if r.status_code == 200 and not stream:
        body = r.json()
        assert isinstance(body["answer"], str) and body["answer"]
    error_shape(r) if r.status_code != 200 else None


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(texts=st.lists(TEXT, min_size=1, max_size=4), surrogate=SURROGATE, at=st.integers(0, 3))
def test_lone_surrogates_are_a_400_everywhere(client, texts, surrogate, at):
    texts[at % len(texts)] += surrogate
    for path, body in (("/v1/chat", {"query": texts[0] + surrogate}), ("/v1/classify", {"texts": texts}),
                       ("/v1/embed", {"texts": texts}), ("/v1/search", {"query": surrogate + texts[0]}),
                       ("/v1/rerank", {"query": "berserk", "documents": texts})):
        r = post(client, path, body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_text", (path, r.text)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_1_mb_body_is_a_413(client, chunked):
    body = json.dumps({"query": "x" * (1 << 20)}).encode()
    content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    r = client.post("/v1/chat", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"
