"""The DriftMonitor deployment's logic, without Ray: window, schedule-free evaluation, gauges, report,
and what it does without a reference."""
import asyncio
from collections import defaultdict

import pytest

from monitoring.drift import Reference
from serve import drift_monitor
from serve.config import AppArgs
from test_drift import REFERENCE_ROWS, traffic


class Gauges:
    """Records what the monitor sets (in place of Ray's metrics)."""

    def __init__(self):
        self.values = defaultdict(dict)

    def __call__(self, name, value, tags=None):
        self.values[name][tuple(sorted((tags or {}).items()))] = value


@pytest.fixture
def monitor(monkeypatch):
    reference = Reference.from_records(traffic(REFERENCE_ROWS, seed=1))
    monkeypatch.setattr(drift_monitor, "load_reference", lambda args: (reference, "v-reference", None))
    gauges = Gauges()
    monkeypatch.setattr(drift_monitor, "set_gauge", gauges)
    args = AppArgs.model_validate({"drift": {"window_size": 300, "interval_s": 3600, "min_samples": 30}})
    instance = drift_monitor.DriftMonitor.func_or_class(args)
    instance.gauges = gauges
    return instance


def run(coro):
    return asyncio.run(coro)


def test_matching_traffic_sets_the_gauges_without_drift(monitor):
    assert run(monitor.record(traffic(300, seed=2))) == 300
    result = monitor.evaluate()
    assert result["window_size"] == 300 and result["n_evaluated"] == 6
    gauges = monitor.gauges.values
    assert gauges["mangaassist_drift_share"][()] == result["share_drifted"] < 0.5
    assert set(dict(k)["feature"] for k in gauges["mangaassist_drift_detected"]) == {
        "intent", "confidence", "query_length", "retrieval_top_score", "rerank_top_score", "embedding"}
    assert gauges["mangaassist_drift_window_size"][()] == 300


def test_a_chitchat_burst_in_another_language_drifts(monitor):
    drifted = traffic(300, seed=3, intent_probs={"chitchat": 0.7, "product_search": 0.3}, length_scale=120,
                      confidence=(2, 3), embedding_shift=2.0)
    run(monitor.record(drifted))
    result = monitor.evaluate()
    assert result["dataset_drift"] and result["share_drifted"] >= 0.5
    detected = {dict(k)["feature"] for k, v in monitor.gauges.values["mangaassist_drift_detected"].items() if v}
    assert {"intent", "confidence", "query_length", "embedding"} <= detected


def test_nothing_new_means_no_recomputation(monitor):
    run(monitor.record(traffic(100, seed=4)))
    first = monitor.evaluate()
    assert monitor.evaluate() is first  # the same object: not computed again
    run(monitor.record(traffic(5, seed=5)))
    assert monitor.evaluate() is not first


def test_malformed_records_are_dropped_and_counted(monitor):
    good = traffic(2, seed=6)
    bad = [{"intent": "", "confidence": 0.5, "query_length": 3}, {"confidence": 0.5}]
    assert run(monitor.record(good + bad)) == 2
    status = run(monitor.status())
    assert status["records_rejected"] == 2 and status["window_size"] == 2 and status["reference"] == "v-reference"


def test_the_html_report_is_made_once_per_window_state(monitor, monkeypatch):
    calls = []
    monkeypatch.setattr("monitoring.drift.html_report", lambda ref, frame: calls.append(len(frame)) or "<html>r</html>")
    run(monitor.record(traffic(50, seed=7)))
    assert run(monitor.report()) == "<html>r</html>"
    run(monitor.report())
    run(monitor.record(traffic(1, seed=8)))
    run(monitor.report())
    assert calls == [50, 51]


def test_without_a_reference_it_says_why_and_exports_no_drift(monkeypatch):
    monkeypatch.setattr(drift_monitor, "load_reference", lambda args: (None, None, "no drift reference for v-x"))
    gauges = Gauges()
    monkeypatch.setattr(drift_monitor, "set_gauge", gauges)
    instance = drift_monitor.DriftMonitor.func_or_class(AppArgs())
    run(instance.record(traffic(40, seed=9)))
    assert instance.evaluate() is None and "mangaassist_drift_share" not in gauges.values
    assert "no drift reference for v-x" in run(instance.report())
    assert run(instance.status())["reference_error"] == "no drift reference for v-x"


def test_titan_embeddings_are_not_compared_with_a_minilm_reference(monkeypatch):
    monkeypatch.setattr(drift_monitor, "load_reference", lambda args: (None, None, "none"))
    monkeypatch.setattr(drift_monitor, "set_gauge", Gauges())
    instance = drift_monitor.DriftMonitor.func_or_class(AppArgs(embedder_backend="bedrock"))
    run(instance.record(traffic(3, seed=10)))
    _, embeddings = instance.window.frame()
    assert embeddings.shape[0] == 0


def test_the_reference_key_follows_every_model_version():
    versions = {"embedder": "v-a", "intent": "v-b", "reranker": "v-c"}
    key = drift_monitor.reference_key(versions, 30)
    assert key == drift_monitor.reference_key(dict(versions), 30)
    assert key != drift_monitor.reference_key({**versions, "intent": "v-d"}, 30)
    assert key != drift_monitor.reference_key(versions, 20)
    assert key == drift_monitor.reference_key(versions, 30, 30)  # the policy's candidates as the catalog's
    assert key != drift_monitor.reference_key(versions, 30, 12)


def test_the_reference_of_s3_models_lives_beside_them():
    s3 = AppArgs.model_validate({"intent": {"ref": "s3://models-bucket/mangaassist/intent/v-abc"}})
    assert drift_monitor.reference_ref(s3, "v-ref") == "s3://models-bucket/mangaassist/drift-reference/v-ref"
    assert drift_monitor.reference_ref(AppArgs(), "v-ref") == "drift-reference:v-ref"
