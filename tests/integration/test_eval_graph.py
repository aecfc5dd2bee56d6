"""`mangaassist eval graph` against the real embedded application: a 16-case slice of the golden
set (two per intent) through the HTTP API, every metric computed, the report written and the run
logged to MLflow; aggregates are checked against the per-case results the run wrote."""
import json

import httpx
import numpy as np
import pytest

SLICE = 16
RATES = ("intent.", "search.", "rerank.", "chat.", "answer.faithful", "answer.fact_coverage", "answer.bertscore",
         "assert.", "assertions.", "refusal.accuracy", "rerank_injection.pass_rate", "by_intent.")


@pytest.fixture(scope="module")
def evaluation(base_url, tmp_path_factory):
    from models.cli import main

    out = tmp_path_factory.mktemp("eval-graph")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", (out / "mlruns").as_uri())
        code = main(["eval", "graph", "--url", base_url, "--slice", str(SLICE), "--out", str(out / "report")])
        import mlflow

        mlflow.set_tracking_uri((out / "mlruns").as_uri())
        runs = mlflow.search_runs(experiment_names=["mangaassist-graph-eval"], output_format="list")
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    cases = [json.loads(line) for line in (out / "report" / "cases.jsonl").read_text().splitlines()]
    return {"code": code, "out": out / "report", "metrics": metrics, "cases": cases, "runs": runs}


def test_the_run_completes_and_is_tracked(evaluation, base_url):
    assert evaluation["code"] == 0
    assert {"report.md", "intent_confusion.png", "retrieval.png", "latency.png", "by_intent.png"} <= \
        {p.name for p in evaluation["out"].iterdir()}
    (run,) = evaluation["runs"]
    assert run.data.metrics["intent.accuracy"] == pytest.approx(evaluation["metrics"]["intent.accuracy"])
    ready = httpx.get(f"{base_url}/readyz").json()["deployments"]
    assert run.data.params["classifier.version"] == ready["classifier"]["version"]
    assert run.data.params["reranker.runtime"] == ready["reranker"]["runtime"]
    assert run.data.params["cases"] == str(SLICE)


def test_every_metric_is_computed_and_in_range(evaluation):
    m = evaluation["metrics"]
    assert m["cases"] == SLICE and m["retrieval.cases"] >= 10 and m["rerank_injection.cases"] == 6
    for key in ("intent.accuracy", "intent.macro_f1", "search.ndcg_at_10", "rerank.ndcg_at_10", "chat.ndcg_at_5",
                "search.recall_at_5", "rerank.precision_at_5", "chat.context_precision", "chat.context_recall",
                "answer.faithfulness", "answer.fact_coverage", "answer.relevancy", "answer.bertscore_f1",
                "rerank_injection.pass_rate", "assertions.pass_rate", "latency.chat_total.p95_ms",
                "latency.intent.p50_ms", "latency.rerank.p50_ms", "latency.generate.p50_ms"):
        assert key in m, key
    for key, value in m.items():
        if key.startswith(RATES) and not key.endswith(("_gain", "relevancy")):
            assert 0.0 <= value <= 1.0, (key, value)
    assert -1 <= m["rerank.ndcg_at_10_gain"] <= 1 and -1 <= m["answer.relevancy"] <= 1
    for stage in ("intent", "embed", "search", "rerank", "generate", "total", "chat_total"):
        p = [m[f"latency.{stage}.p{q}_ms"] for q in (50, 90, 95, 99)]
        assert 0 < p[0] <= p[1] <= p[2] <= p[3], stage


def test_aggregates_are_the_means_of_the_cases(evaluation):
    m, cases = evaluation["metrics"], evaluation["cases"]
    assert len(cases) == SLICE
    assert m["intent.accuracy"] == pytest.approx(np.mean([c["intent_correct"] for c in cases]))
    assert m["answer.fact_coverage"] == pytest.approx(np.mean([c["fact_coverage"] for c in cases
                                                                if c["fact_coverage"] is not None]))
    assert m["answer.bertscore_f1"] == pytest.approx(np.mean([c["bertscore_f1"] for c in cases]))
    assert m["answer.relevancy"] == pytest.approx(np.mean([c["relevancy"] for c in cases]))
    retrieval = [c for c in cases if "retrieval" in c]
    assert m["retrieval.cases"] == len(retrieval)
    for key in ("search.ndcg_at_10", "rerank.ndcg_at_10", "chat.context_recall", "chat.context_precision"):
        stage, name = key.split(".")
        assert m[key] == pytest.approx(np.mean([c["retrieval"][stage][name] for c in retrieval])), key
    scored = [c for c in cases if c["claims"]]
    assert m["answer.faithfulness"] == pytest.approx(np.mean([np.mean([x["supported"] for x in c["claims"]])
                                                              for c in scored]))
    outcomes = [ok for c in cases for ok in c["assertions"].values()]
    assert m["assertions.pass_rate"] == pytest.approx(np.mean(outcomes))
    assert m["latency.chat_total.p50_ms"] == pytest.approx(np.percentile([c["latency_ms"] for c in cases], 50))


def test_the_template_generator_is_faithful_and_small_talk_cites_nothing(evaluation):
    """The embedded generator only states facts it read from its sources: the faithfulness checker
    must find no unsupported claim in its answers (and a failure names the claim)."""
    unsupported = [(c["id"], x) for c in evaluation["cases"] for x in c["claims"] if not x["supported"]]
    assert unsupported == []
    for c in evaluation["cases"]:
        if c["expected_intent"] == "chitchat" and c["intent"] == "chitchat":
            assert c["sources"] == [] and c["assertions"]["chitchat-cites-nothing"]
