"""The graph evaluation's metrics and checks on hand-checked cases, the golden set's validity, and
the whole evaluation loop against an in-process fake deployment (httpx MockTransport: no Ray)."""
import json
import math
from collections import Counter

import httpx
import numpy as np
import pytest

from models import INTENT_LABELS
from models import graph_eval as ge
from models.assertions import (AssertionSpec, EvalConfig, KnowledgeBase, contains, extract_claims, fact_coverage,
                               fact_is_verifiable, is_refusal, run_assertions)


@pytest.fixture(scope="module")
def kb():
    return KnowledgeBase.load()


@pytest.fixture(scope="module")
def cfg():
    return EvalConfig.load()


# --- ranking metrics, by hand ------------------------------------------------------------------

RELEVANT = {"a": 2, "b": 1, "c": 2}
RANKED = ["x", "a", "b", "y", "c"]


def test_precision_and_capped_recall():
    assert ge.precision_at_k(RANKED, RELEVANT, 1) == 0
    assert ge.precision_at_k(RANKED, RELEVANT, 3) == pytest.approx(2 / 3)
    assert ge.recall_at_k(RANKED, RELEVANT, 3) == pytest.approx(2 / 3)
    assert ge.recall_at_k(RANKED, RELEVANT, 5) == 1.0
    assert ge.recall_at_k(["a"], {"a": 2, **{f"r{i}": 1 for i in range(30)}}, 1) == 1.0  # capped at k
    assert ge.recall_at_k(RANKED, {}, 5) == 0.0


def test_ndcg_by_hand():
    dcg = 3 / math.log2(3) + 1 / math.log2(4) + 3 / math.log2(6)
    ideal = 3 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert ge.ndcg(RANKED, RELEVANT, 5) == pytest.approx(dcg / ideal)
    assert ge.ndcg(["a", "c", "b"], RELEVANT, 10) == pytest.approx(1.0)
    assert ge.ndcg(["x", "y"], RELEVANT, 10) == 0.0


def test_ragas_context_precision_and_recall():
    # relevant at ranks 2, 3 and 5: (1/2 + 2/3 + 3/5) / 3
    assert ge.context_precision(RANKED, RELEVANT) == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert ge.context_precision(["a", "b"], RELEVANT) == 1.0
    assert ge.context_precision(["x"], RELEVANT) == 0.0
    # must-use (grade 2) documents: a and c
    assert ge.context_recall(RANKED, RELEVANT, 5) == 1.0
    assert ge.context_recall(RANKED, RELEVANT, 2) == 0.5
    assert ge.context_recall(["b"], {"b": 1}, 5) == 1.0   # no grade 2: every graded one counts


def test_passages_count_for_their_policy():
    assert ge.doc_ranking(["returns-policy#0", "refund-timing#1", "returns-policy#2", "monster"]) == \
        ["returns-policy", "refund-timing", "monster"]


def test_percentiles():
    s = ge.percentile_summary([float(i) for i in range(1, 101)])
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01) and s["mean_ms"] == 50.5
    assert ge.percentile_summary([]) == {}


# --- faithfulness: claims supported by the cited sources -------------------------------------------


def claims(answer, query, cited, kb, cfg):
    f = extract_claims(answer, query, cited, kb, cfg.policy_terms)
    return f, {(c.kind, c.text): c.supported for c in f.claims}


def test_a_grounded_catalog_answer_is_faithful(kb, cfg):
    answer = ("Yes, we carry One Piece by Eiichiro Oda (shonen; ongoing, 113 volumes).\n"
              "- One Piece, Vol. 105 (Standard Edition): $11.99, in stock\n"
              "You might also be looking for: Naruto, Bleach.")
    f, c = claims(answer, "do you have One Piece volume 105", ["one-piece", "naruto", "bleach"], kb, cfg)
    assert f.score == 1.0 and not f.unsupported()
    assert c[("title", "Naruto")] and c[("price", "$11.99")] and c[("volume_ref", "Vol. 105")]
    assert c[("volume_count", "113 volumes")]


def test_faithfulness_fails_on_a_price_no_source_states(kb, cfg):
    f, c = claims("One Piece, Vol. 105 (Standard Edition): $1.00, in stock", "how much is one piece 105",
                  ["one-piece"], kb, cfg)
    assert c[("price", "$1.00")] is False
    assert f.score == pytest.approx(2 / 3)   # title and volume hold, the price does not
    assert [u.kind for u in f.unsupported()] == ["price"]


def test_faithfulness_fails_on_a_volume_count_no_source_states(kb, cfg):
    f, c = claims("Naruto is completed, with 80 volumes.", "how long is naruto", ["naruto"], kb, cfg)
    assert c[("volume_count", "80 volumes")] is False and f.score < 1
    f, _ = claims("Naruto is completed, with 72 volumes.", "how long is naruto", ["naruto"], kb, cfg)
    assert f.score == 1.0


def test_a_volume_that_does_not_exist_is_unfaithful_even_when_asked_for(kb, cfg):
    f, c = claims("Naruto, Vol. 80 (Standard Edition): $9.99, in stock", "naruto volume 80", ["naruto"], kb, cfg)
    assert c[("volume_ref", "Vol. 80")] is False
    f, c = claims("Naruto has 72 volumes, so there is no Vol. 80.", "naruto volume 80", ["naruto"], kb, cfg)
    assert c[("volume_ref", "no Vol. 80")] is True and f.score == 1.0
    f, c = claims("One Piece has 113 volumes, so there is no Vol. 80.", "one piece vol 80", ["one-piece"], kb, cfg)
    assert c[("volume_ref", "no Vol. 80")] is False   # it does exist: denying it is unfaithful too


def test_titles_must_be_cited_or_named_by_the_shopper(kb, cfg):
    _, c = claims("Try Claymore or Hellsing.", "dark fantasy?", ["claymore"], kb, cfg)
    assert c[("title", "Claymore")] and c[("title", "Hellsing")] is False
    _, c = claims("If you liked Berserk, try Claymore.", "something like Berserk", ["claymore"], kb, cfg)
    assert c[("title", "Berserk")] is True
    _, c = claims("If you liked Haikyu!!, try Slam Dunk.", "series similar to haikyu", ["slam-dunk"], kb, cfg)
    assert c[("title", "Haikyu!!")] is True   # named by the shopper without its punctuation


def test_numbers_in_titles_and_echoed_order_numbers_are_not_claims(kb, cfg):
    f, c = claims("Mob Psycho 100 by ONE is completed, with 16 volumes.", "is mob psycho 100 done", ["mob-psycho-100"],
                  kb, cfg)
    assert set(c) == {("title", "Mob Psycho 100"), ("volume_count", "16 volumes")} and f.score == 1.0
    f, c = claims("I can't look up live orders here, so I can't see order 4417-2210 itself.",
                  "where is my order 4417-2210", ["order-tracking#0"], kb, cfg)
    assert not f.claims and f.score is None


def test_policy_facts_and_terms_are_checked_against_the_cited_passages(kb, cfg):
    answer = "From our Shipping to Canada policy: Shipping to Canada costs a flat $14.99 USD per order."
    canada = [i for i in kb.texts if i.startswith("shipping-canada#")]
    f, _ = claims(answer, "ship to canada?", canada, kb, cfg)
    assert f.score == 1.0
    f, c = claims(answer, "ship to canada?", ["shipping-domestic#0"], kb, cfg)
    assert c[("price", "$14.99")] is False
    f, c = claims("We ship with FedEx and USPS.", "carriers?", ["shipping-carriers-tracking#0"], kb, cfg)
    assert c[("policy_term", "FedEx")] is False and c[("policy_term", "USPS")] is True
    f, c = claims("Returns are accepted within 365 days.", "return window", ["returns-policy#0"], kb, cfg)
    assert c[("number", "365")] is False


def test_small_talk_makes_no_claims(kb, cfg):
    f = extract_claims("Hi! I'm MangaAssist, the store's shopping assistant.", "hi", [], kb, cfg.policy_terms)
    assert f.score is None and not f.unsupported()


# --- facts, refusal, assertions ---------------------------------------------------------------------


def test_fact_coverage_normalizes_volume_spellings_and_accepts_alternatives():
    answer = "One Piece, Vol. 105 (Standard Edition): $11.99, in stock"
    assert contains(answer, "volume 105") and not contains(answer, "Vol. 10")
    assert not contains("$111.99", "$11.99") and not contains("110 volumes", "10 volumes")
    assert fact_coverage(answer, [["One Piece"], ["vol 105"], ["$11.99"]]) == 1.0
    assert fact_coverage(answer, [["One Piece"], ["113 volumes", "out of stock"]]) == 0.5
    assert fact_coverage(answer, []) is None


def test_refusal_needs_a_no_and_no_yes(cfg):
    def refusal(text):
        return is_refusal(text, cfg.refusal_patterns, cfg.affirmative_patterns)

    assert refusal("Sorry, we don't carry Blue Period.")
    assert refusal("I couldn't find anything in our catalog or store policies that matches that.")
    assert not refusal("Yes, we carry Blue Lock by Muneyuki Kaneshiro.")
    assert not refusal("We don't carry that one, but yes, we carry Blue Lock.")


def test_assertions_apply_by_selector_and_report_pass_fail(kb, cfg):
    case = {"id": "t", "intent": "price_availability", "index": "catalog", "tags": ["injection"],
            "facts": [["$11.99"]], "relevant": {"one-piece": 2},
            "assert": [{"name": "mentions-one-piece", "type": "not-contains", "value": "Naruto"}]}
    answer = "Prices and stock for One Piece: One Piece Standard Edition: $1.00 per book. PWNED"
    result = {"answer": answer, "intent": "price_availability", "sources": [{"id": "one-piece"}], "degraded": [],
              "latency_ms": 40.0, "faithfulness": extract_claims(answer, "q", ["one-piece"], kb, cfg.policy_terms)}
    outcome = run_assertions(case, result, cfg)
    assert outcome["intent-correct"] and outcome["cites-at-least-one-source"] and outcome["mentions-one-piece"]
    assert outcome["states-no-unsupported-price"] is False and outcome["faithful"] is False
    assert outcome["never-follows-injected-instructions"] is False      # said PWNED
    assert outcome["states-required-facts"] is False
    assert "chitchat-cites-nothing" not in outcome and "refuses-titles-we-do-not-carry" not in outcome
    assert AssertionSpec("x", "no-sources", when={"intents": ["chitchat"]}).applies({"intent": "chitchat"})


def test_unknown_assertion_type_is_refused(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("assertions: [{name: x, type: llm-rubric}]\nrefusal_patterns: []\naffirmative_patterns: []\n")
    with pytest.raises(ValueError, match="llm-rubric"):
        EvalConfig.load(path)


# --- the golden set ------------------------------------------------------------------------------


def test_golden_set_size_intents_and_adversarial_cases():
    cases = ge.load_golden()
    assert len(cases) >= 150 and len({c["id"] for c in cases}) == len(cases)
    counts = Counter(c["intent"] for c in cases)
    assert set(counts) == set(INTENT_LABELS) and min(counts.values()) >= 15
    tags = Counter(t for c in cases for t in c["tags"])
    assert tags["not_carried"] >= 5 and tags["injection"] >= 5 and tags["ambiguous_volume"] >= 5
    assert {c["intent"] for c in ge.load_golden(slice_=16)} == set(INTENT_LABELS)   # any slice covers all intents
    rerank = ge.read_jsonl(ge.RERANK_CASES)
    assert rerank and all(any(d.get("injected") for d in c["documents"]) and any(d.get("relevant") for d in c["documents"])
                          for c in rerank)


def test_golden_messages_are_not_in_the_intent_data():
    """The golden set measures the deployed graph on messages its classifier never saw."""
    import re

    from models.datasets import SPLITS, load_intents

    def norm(t):
        return re.sub(r"[^a-z0-9]+", " ", t.lower()).strip()

    seen = {norm(e.text) for split in SPLITS for e in load_intents(split)}
    assert [c["id"] for c in ge.load_golden() if norm(c["query"]) in seen] == []


def test_golden_facts_are_read_from_the_catalog_and_policies(kb):
    for case in ge.load_golden():
        assert all(r in kb.titles or kb.policy_text(r) for r in case["relevant"]), case["id"]
        for fact in case["facts"]:
            assert any(fact_is_verifiable(alt, list(case["relevant"]), kb) for alt in fact), (case["id"], fact)
        if case["intent"] == "chitchat" or "not_carried" in case["tags"]:
            assert not case["relevant"]
        else:
            assert 2 in case["relevant"].values(), case["id"]


def test_golden_references_state_their_facts_faithfully(kb, cfg):
    """A reference answer is what a correct answer looks like: it covers every fact and every claim
    in it is supported by the relevant documents."""
    for case in ge.load_golden():
        assert fact_coverage(case["reference"], case["facts"]) in (None, 1.0), case["id"]
        f = extract_claims(case["reference"], case["query"], list(case["relevant"]), kb, cfg.policy_terms)
        assert not f.unsupported(), (case["id"], f.unsupported())


# --- baseline comparison ---------------------------------------------------------------------------


def test_compare_flags_regressions_beyond_tolerance_only():
    tol = {"answer.faithfulness": {"direction": "higher", "tolerance": 0.01},
           "latency.chat_total.p95_ms": {"direction": "lower", "tolerance": 0.5, "relative": True},
           "intent.accuracy": {"direction": "higher", "tolerance": 0.02}, "missing.metric": {"direction": "higher", "tolerance": 0}}
    base = {"answer.faithfulness": 0.95, "latency.chat_total.p95_ms": 100.0, "intent.accuracy": 0.9}
    ok = ge.compare({"answer.faithfulness": 0.945, "latency.chat_total.p95_ms": 149.0, "intent.accuracy": 0.95}, base, tol)
    assert ok["regressions"] == [] and ok["skipped"] == ["missing.metric"]
    bad = ge.compare({"answer.faithfulness": 0.93, "latency.chat_total.p95_ms": 151.0, "intent.accuracy": 0.881}, base, tol)
    assert bad["regressions"] == ["answer.faithfulness", "latency.chat_total.p95_ms"]
    # slack: sub-millisecond paths do not fail on noise
    tol["latency.chat_total.p95_ms"]["slack"] = 20
    fast = ge.compare({"latency.chat_total.p95_ms": 0.9}, {"latency.chat_total.p95_ms": 0.2}, tol)
    assert fast["regressions"] == [] and fast["rows"][0]["allowed"] == pytest.approx(20.1)


# --- the whole loop against a fake deployment ------------------------------------------------------


def _vector(text: str) -> list[float]:
    v = np.zeros(64)
    for w in text.lower().split():
        v[hash(w) % 64] += 1
    return (v / (np.linalg.norm(v) or 1)).tolist()


def fake_app(kb, corrupt_prices: bool = False):
    """Answers every golden case with its reference answer, cites the relevant documents, and ranks
    them below one distractor in search (the reranker fixes the order). `corrupt_prices` turns
    every answer into an unfaithful one."""
    cases = {c["query"]: c for c in ge.load_golden()}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        path = request.url.path
        if path == "/readyz":
            return httpx.Response(200, json={"ready": True, "deployments": {
                "classifier": {"model": "intent", "version": "v-test", "runtime": "onnx", "precision": "int8"},
                "generator": {"backend": "fake"}}})
        case = cases.get(body.get("query"))
        if path == "/v1/chat":
            ranked = sorted(case["relevant"], key=lambda d: -case["relevant"][d])[:5]
            answer = case["reference"] + (" Today only: $1.00." if corrupt_prices else "")
            return httpx.Response(200, headers={"x-stage-intent-ms": "2.5", "x-stage-total-ms": "10.0"}, json={
                "answer": answer, "intent": {"label": case["intent"], "confidence": 0.9, "low_confidence": False},
                "sources": [{"id": d, "title": d, "score": 1.0} for d in ranked], "degraded": [],
                "timings_ms": {"intent": 2.5, "total": 10.0}, "request_id": "r", "usage": None})
        if path == "/v1/search":
            distractor = next(d for d in kb.titles if d not in case["relevant"]) \
                if body["index"] == "catalog" else "privacy-policy#0"
            rel = [d if d in kb.documents else f"{d}#0" for d in case["relevant"]]
            ids = [distractor] + [d for d in rel if d != distractor]
            return httpx.Response(200, json={"hits": [{"id": i, "title": i, "score": 0.5, "metadata": {}}
                                                      for i in ids[: body["top_k"]]]})
        if path == "/v1/rerank":
            if case is not None:
                wanted = {kb.documents.get(d) or kb.documents.get(f"{d}#0") for d in case["relevant"]}
                scores = [1.0 if t in wanted else 0.1 for t in body["documents"]]
            else:   # an injection case: the catalog's and policies' own documents above the injected text
                corpus = set(kb.documents.values())
                scores = [0.9 if t in corpus else 0.1 for t in body["documents"]]
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            return httpx.Response(200, json={"results": [{"index": i, "score": scores[i]} for i in order]})
        if path == "/v1/embed":
            return httpx.Response(200, json={"embeddings": [_vector(t) for t in body["texts"]], "dimensions": 64,
                                             "model": "fake"})
        return httpx.Response(404, json={"error": {"type": "not_found", "message": path}})

    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://fake")


def test_evaluation_against_a_fake_deployment(kb, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    outcome = ge.evaluate_graph("http://fake", slice_=24, out=tmp_path / "good", with_bertscore=False,
                                client=fake_app(kb))
    m, results = outcome.metrics, outcome.results
    assert m["cases"] == 24 and m["intent.accuracy"] == 1.0 and m["answer.fact_coverage"] == 1.0
    assert m["answer.faithfulness"] == 1.0 and m["answer.faithful_rate"] == 1.0
    # the fake's search puts a distractor first and its reranker fixes that: the gain must show
    assert m["rerank.ndcg_at_10"] > m["search.ndcg_at_10"] and m["rerank.ndcg_at_10_gain"] > 0
    assert m["rerank.precision_at_1"] == 1.0 and m["search.precision_at_1"] == 0.0
    assert m["rerank_injection.pass_rate"] == 1.0 and m["latency.intent.p50_ms"] == 2.5
    # aggregates are the means of the per-case values
    retrieval = [r for r in results if "retrieval" in r]
    assert m["chat.context_recall"] == pytest.approx(np.mean([r["retrieval"]["chat"]["context_recall"] for r in retrieval]))
    assert m["answer.relevancy"] == pytest.approx(np.mean([r["relevancy"] for r in results]))
    assert all(-1 <= r["relevancy"] <= 1 for r in results)
    assert m["assertions.pass_rate"] == pytest.approx(np.mean([ok for r in results for ok in r["assertions"].values()]))
    out = tmp_path / "good"
    assert {"report.md", "metrics.json", "cases.jsonl", "intent_confusion.png", "retrieval.png", "latency.png",
            "by_intent.png"} <= {p.name for p in out.iterdir()}
    assert "| rerank.ndcg_at_10 |" in (out / "report.md").read_text()

    from models.tracking import run_data

    metrics, params, tags = run_data(outcome.run_id)
    assert metrics["intent.accuracy"] == 1.0 and params["classifier.version"] == "v-test"
    assert params["golden_hash"] and tags["kind"] == "graph-eval"

    # the same deployment made unfaithful: --baseline exits 1 and names the regressed metrics
    from models.cli import main

    monkeypatch.setattr(ge, "http_client", lambda url: fake_app(kb, corrupt_prices=True))
    code = main(["eval", "graph", "--url", "http://fake", "--slice", "24", "--no-bertscore",
                 "--out", str(tmp_path / "bad"), "--baseline", outcome.run_id])
    assert code == 1
    bad = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert bad["answer.faithfulness"] < 1.0 and bad["assert.states-no-unsupported-price"] < 1.0
    assert "**yes**" in (tmp_path / "bad" / "report.md").read_text()

    monkeypatch.setattr(ge, "http_client", lambda url: fake_app(kb))
    assert main(["eval", "graph", "--url", "http://fake", "--slice", "24", "--no-bertscore", "--no-mlflow",
                 "--out", str(tmp_path / "again"), "--baseline", outcome.run_id]) == 0


def test_bertscore_with_the_local_backbone():
    s = ge.bertscore(["One Piece has 113 volumes and is ongoing.", "hello there"],
                     ["One Piece has 113 volumes and is ongoing.", "Refunds go to the original payment method."])
    assert s["f1"][0] == pytest.approx(1.0, abs=1e-4)
    assert s["f1"][1] < 0.5 and all(0 <= v <= 1 for v in s["precision"] + s["recall"])


def test_a_503_is_retried_and_a_400_is_an_error_and_stage_headers_are_read():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if request.url.path == "/v1/chat" and len(calls) == 1:
            return httpx.Response(503, headers={"retry-after": "0"}, json={"error": {"type": "overloaded"}})
        if request.url.path == "/v1/bad":
            return httpx.Response(400, json={"error": {"type": "empty_query", "message": "no"}})
        return httpx.Response(200, headers={"x-stage-intent-ms": "1.50", "x-stage-total-ms": "9.00"},
                              json={"timings_ms": {"intent": 99.0}})

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://fake")
    reply = ge.post(client, "/v1/chat", {"query": "hi"})
    assert calls == ["/v1/chat", "/v1/chat"] and ge.stage_timings(reply) == {"intent": 1.5, "total": 9.0}
    with pytest.raises(ge.EvalError, match="400"):
        ge.post(client, "/v1/bad", {})
