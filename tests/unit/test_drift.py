"""Drift detection on synthetic traffic: Evidently's stat tests and embedding drift method, called
directly (monitoring/drift.py). Seeded, no Ray, a few seconds in all (Evidently's import is most of it)."""
import hashlib
import threading
import time

import numpy as np
import pandas as pd
import pytest

from models import INTENT_LABELS
from monitoring.drift import (
    EMBEDDING_FEATURE,
    FEATURES,
    REFERENCE_EMBEDDINGS_FILE,
    REFERENCE_TABLE_FILE,
    TABULAR_FEATURES,
    DriftWindow,
    Reference,
    compute_drift,
    html_report,
)

DIM = 384
REFERENCE_ROWS = 700
WINDOW = 500
# Fixed "semantic" layout of the synthetic embedding space: one cluster centre per intent, and a
# direction that stands for queries in another language.
_space = np.random.default_rng(12345)
CENTRES = {label: _space.normal(size=DIM) for label in INTENT_LABELS}
OTHER_LANGUAGE = _space.normal(size=DIM)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def traffic(n, seed, *, intent_probs=None, length_scale=40.0, confidence=(8, 2), embedding_shift=0.0,
            embed_chitchat=True):
    """n feature records. Defaults: balanced intents, ~40-character queries, confident classifier."""
    rng = np.random.default_rng(seed)
    probs = intent_probs or {label: 1 / len(INTENT_LABELS) for label in INTENT_LABELS}
    labels = rng.choice(list(probs), size=n, p=list(probs.values()))
    records = []
    for label in labels:
        retrieval = label != "chitchat"
        vector = _unit(CENTRES[label] + embedding_shift * OTHER_LANGUAGE + 1.2 * rng.normal(size=DIM))
        records.append({
            "intent": str(label),
            "confidence": float(rng.beta(*confidence)),
            "query_length": int(max(3, rng.lognormal(np.log(length_scale), 0.5))),
            "retrieval_top_score": float(np.clip(rng.normal(0.62, 0.1), 0, 1)) if retrieval else None,
            "rerank_top_score": float(rng.normal(2.0, 1.5)) if retrieval else None,
            "embedding": vector.astype(np.float32) if retrieval or embed_chitchat else None,
        })
    return records


def window_of(records, size=WINDOW):
    window = DriftWindow(size=size)
    for record in records:
        window.add(record)
    return window.frame()


@pytest.fixture(scope="module")
def reference():
    return Reference.from_records(traffic(REFERENCE_ROWS, seed=1))


def test_no_drift_when_traffic_matches_the_reference(reference):
    frame, embeddings = window_of(traffic(WINDOW, seed=2))
    result = compute_drift(reference, frame, embeddings)
    assert set(result.features) == set(FEATURES)
    assert all(f.evaluated for f in result.features.values())
    assert result.detected == []
    assert result.share_drifted == 0.0 and not result.dataset_drift
    assert result.window_size == WINDOW and result.reference_size == REFERENCE_ROWS
    # Evidently's defaults for a reference of <= 1000 rows, except intent (see DEFAULT_METHODS)
    methods = {name: f.method for name, f in result.features.items()}
    assert methods == {"intent": "jensenshannon", "confidence": "ks", "query_length": "ks",
                       "retrieval_top_score": "ks", "rerank_top_score": "ks", "embedding": "model"}
    assert result.features["intent"].score_kind == "distance" and result.features["intent"].threshold == 0.1
    assert result.features["confidence"].score_kind == "p_value"
    assert result.features["confidence"].threshold == 0.05
    assert result.features["embedding"].score_kind == "roc_auc"
    assert 0.35 < result.features["embedding"].score < 0.6
    assert result.features["retrieval_top_score"].n_current < WINDOW  # chitchat rows have no scores
    assert result.to_dict()["features"]["intent"]["method"] == "jensenshannon"


def test_false_alarms_are_rare_over_many_windows(reference):
    # p-value tests at 0.05 alarm on ~5% of undrifted windows per feature; never on most of them at once
    alarms, shares = 0, []
    for seed in range(100, 110):
        frame, embeddings = window_of(traffic(WINDOW, seed=seed))
        result = compute_drift(reference, frame, embeddings)
        alarms += result.n_drifted
        shares.append(result.share_drifted)
        assert not result.dataset_drift
    assert alarms <= 6  # of 60 feature tests
    assert max(shares) < 0.5


def test_intent_uses_jensen_shannon_because_chi_square_false_alarms(reference):
    """Why intent is not on Evidently's small-reference default, its chi-square goodness-of-fit
    test: that takes the reference frequencies as exact, so windows drawn from the very
    distribution the reference was drawn from alarm far more often than its 5% level."""
    rng = np.random.default_rng(21)
    alarms = {"chisquare": 0, "jensenshannon": 0}
    for _ in range(60):
        frame = pd.DataFrame({"intent": rng.choice(INTENT_LABELS, size=WINDOW)})  # balanced, like the reference
        for method in alarms:
            alarms[method] += compute_drift(reference, frame, None, {"intent": method}).features["intent"].detected
    assert alarms["jensenshannon"] == 0
    assert alarms["chisquare"] >= 6  # >= 10% (expected 5%)


def test_drift_is_detected_in_a_chitchat_burst_of_long_unsure_queries(reference):
    burst = {label: 0.9 if label == "chitchat" else 0.1 / 7 for label in INTENT_LABELS}
    records = traffic(WINDOW, seed=3, intent_probs=burst, length_scale=90.0, confidence=(3, 3), embedding_shift=1.5)
    result = compute_drift(reference, *window_of(records))
    for name in ("intent", "confidence", "query_length", EMBEDDING_FEATURE):
        assert result.features[name].detected, name
    assert result.features["intent"].score > 0.3  # Jensen-Shannon distance; threshold 0.1
    assert result.features["embedding"].score > 0.9  # domain classifier ROC AUC
    assert result.share_drifted >= 4 / 6 and result.dataset_drift
    # the retrieval scores come from the same distribution; only ~50 of them, but enough to test
    assert result.features["retrieval_top_score"].evaluated
    assert not result.features["retrieval_top_score"].detected


def test_embedding_drift_alone(reference):
    # the undrifted window of the first test, with the same intents, lengths and scores (the
    # generator draws the same numbers), but its queries moved towards "another language"
    baseline = compute_drift(reference, *window_of(traffic(WINDOW, seed=2)))
    frame, embeddings = window_of(traffic(WINDOW, seed=2, embedding_shift=0.6))
    pd.testing.assert_frame_equal(frame, window_of(traffic(WINDOW, seed=2))[0])
    result = compute_drift(reference, frame, embeddings)
    assert result.detected == [EMBEDDING_FEATURE]
    assert all(result.features[c].score == baseline.features[c].score for c in TABULAR_FEATURES)
    assert result.share_drifted == pytest.approx(1 / 6)
    assert not result.dataset_drift


@pytest.mark.parametrize("method", ["mmd", "distance"])
def test_other_embedding_methods(reference, method):
    same = compute_drift(reference, *window_of(traffic(WINDOW, seed=5)), method_by_feature={"embedding": method})
    shifted = compute_drift(reference, *window_of(traffic(WINDOW, seed=5, embedding_shift=1.5)),
                            method_by_feature={"embedding": method})
    assert same.features["embedding"].method == shifted.features["embedding"].method == method
    assert not same.features["embedding"].detected
    assert shifted.features["embedding"].detected
    assert shifted.features["embedding"].score > same.features["embedding"].score


def test_method_and_threshold_overrides(reference):
    frame, embeddings = window_of(traffic(WINDOW, seed=6))
    result = compute_drift(reference, frame, embeddings,
                           method_by_feature={"intent": "chisquare", "confidence": "wasserstein"},
                           threshold_by_feature={"query_length": 0.01, "embedding": 0.6})
    assert result.features["intent"].method == "chisquare"
    assert result.features["intent"].score_kind == "p_value"
    assert result.features["intent"].threshold == 0.05
    assert result.features["confidence"].method == "wasserstein"
    assert result.features["confidence"].score_kind == "distance"
    # None: Evidently's own choice for the sizes (chi-square below 1000 reference rows)
    assert compute_drift(reference, frame, embeddings, {"intent": None}).features["intent"].method == "chisquare"
    assert result.features["query_length"].threshold == 0.01
    assert result.features["embedding"].threshold == 0.6
    with pytest.raises(ValueError):
        compute_drift(reference, frame, embeddings, method_by_feature={"nope": "ks"})
    with pytest.raises(ValueError):
        compute_drift(reference, frame, embeddings, method_by_feature={"embedding": "tsne"})


def test_scores_match_evidentlys_value_drift_metric(reference):
    """The direct calls give what Evidently's own ValueDrift metric (the Report path) gives."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    frame, embeddings = window_of(traffic(WINDOW, seed=7, length_scale=50.0))
    definition = DataDefinition(numerical_columns=list(TABULAR_FEATURES[1:]), categorical_columns=["intent"])
    for intent_method in ("jensenshannon", None):  # ours, and Evidently's default (chi-square)
        result = compute_drift(reference, frame, embeddings, {"intent": intent_method})
        metrics = [ValueDrift(column=c, method=intent_method if c == "intent" else None) for c in TABULAR_FEATURES]
        snapshot = Report(metrics).run(Dataset.from_pandas(frame, data_definition=definition),
                                       Dataset.from_pandas(reference.frame, data_definition=definition))
        values = [m["value"] for m in snapshot.dict()["metrics"]]
        assert values == pytest.approx([result.features[c].score for c in TABULAR_FEATURES])


def test_missing_values_are_dropped_per_feature(reference):
    records = traffic(WINDOW, seed=8)
    for record in records[::2]:
        record["rerank_top_score"] = None  # e.g. the reranker timed out: degraded answers
    frame, embeddings = window_of(records)
    assert frame["rerank_top_score"].isna().sum() >= WINDOW // 2
    result = compute_drift(reference, frame, embeddings)
    rerank = result.features["rerank_top_score"]
    assert rerank.evaluated and rerank.n_current == frame["rerank_top_score"].notna().sum()
    assert result.detected == []


def test_all_chitchat_window_reports_scores_as_not_evaluated(reference):
    only_chitchat = {label: 1.0 if label == "chitchat" else 0.0 for label in INTENT_LABELS}
    frame, embeddings = window_of(traffic(WINDOW, seed=9, intent_probs=only_chitchat, embed_chitchat=False))
    assert embeddings.shape[0] == 0
    result = compute_drift(reference, frame, embeddings)
    for name in ("retrieval_top_score", "rerank_top_score", EMBEDDING_FEATURE):
        feature = result.features[name]
        assert not feature.evaluated and not feature.detected and feature.score is None
        assert "too few values in current" in feature.reason
    assert result.features["intent"].detected  # the burst itself is drift
    assert result.n_evaluated == 3 and result.share_drifted == pytest.approx(result.n_drifted / 3)


def test_too_small_window_is_not_evaluated(reference):
    frame, embeddings = window_of(traffic(10, seed=10))
    result = compute_drift(reference, frame, embeddings)
    assert result.window_size == 10
    assert result.n_evaluated == 0 and result.share_drifted == 0.0 and not result.dataset_drift
    assert not any(f.evaluated or f.detected for f in result.features.values())
    empty = compute_drift(reference, pd.DataFrame(columns=list(TABULAR_FEATURES)), None)
    assert empty.window_size == 0 and empty.n_evaluated == 0
    # the threshold is configurable
    assert compute_drift(reference, frame, embeddings, min_samples=5).n_evaluated >= 3


def test_embedding_dimension_mismatch_is_not_evaluated(reference):
    frame, _ = window_of(traffic(WINDOW, seed=11))
    result = compute_drift(reference, frame, np.ones((WINDOW, 256), dtype=np.float32) / 16)
    assert not result.features["embedding"].evaluated
    assert "dimensions differ" in result.features["embedding"].reason
    assert result.features["confidence"].evaluated


def test_reference_save_load_round_trip(reference, tmp_path):
    records = traffic(50, seed=12, embed_chitchat=False)
    records[0]["rerank_top_score"] = None
    original = Reference.from_records(records)
    paths = original.save(tmp_path / "v1")
    assert sorted(p.name for p in paths) == sorted([REFERENCE_TABLE_FILE, REFERENCE_EMBEDDINGS_FILE])
    loaded = Reference.load(tmp_path / "v1")
    pd.testing.assert_frame_equal(loaded.frame, original.frame)
    np.testing.assert_array_equal(loaded.embeddings, original.embeddings)
    assert loaded.embeddings.dtype == np.float32 and loaded.embedding_dim == DIM
    assert loaded.embeddings.shape[0] == sum(r["embedding"] is not None for r in records) < 50
    assert pd.isna(loaded.frame.loc[0, "rerank_top_score"])
    # the same data gives the same bytes (registry checksums), and drift is unchanged after a reload
    again = loaded.save(tmp_path / "v2")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert digest == [hashlib.sha256(p.read_bytes()).hexdigest() for p in again]
    window = window_of(traffic(WINDOW, seed=13))
    reference.save(tmp_path / "ref")
    a = compute_drift(reference, *window).features
    b = compute_drift(Reference.load(tmp_path / "ref"), *window).features
    assert {k: v.score for k, v in a.items()} == {k: v.score for k, v in b.items()}


def test_window_keeps_the_last_records():
    window = DriftWindow(size=5)
    for i, record in enumerate(traffic(12, seed=14)):
        record["query_length"] = i
        window.add(record)
    frame, embeddings = window.frame()
    assert len(window) == 5 and window.added == 12
    assert frame["query_length"].tolist() == [7, 8, 9, 10, 11]
    assert list(frame.columns) == list(TABULAR_FEATURES)
    assert embeddings.shape == (5, DIM) and embeddings.dtype == np.float32


def test_window_rejects_malformed_records():
    window = DriftWindow(size=5)
    good = traffic(1, seed=15)[0]
    window.add(good)
    for bad in ({**good, "intent": None}, {**good, "confidence": "high"}, {**good, "embedding": np.ones(10)},
                {k: v for k, v in good.items() if k != "query_length"},
                {**good, "embedding": np.full(DIM, np.nan)}):
        with pytest.raises(ValueError):
            window.add(bad)
    assert len(window) == 1
    window.add({**good, "retrieval_top_score": float("nan"), "embedding": None})  # NaN counts as missing
    frame, embeddings = window.frame()
    assert len(frame) == 2 and embeddings.shape == (1, DIM) and frame["retrieval_top_score"].isna().sum() == 1


def test_window_is_thread_safe():
    window = DriftWindow(size=500)
    records = traffic(200, seed=16)
    errors = []

    def writer():
        try:
            for _ in range(5):
                for record in records:
                    window.add(record)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            for _ in range(30):
                frame, embeddings = window.frame()
                assert len(frame) <= 500 and embeddings.shape[0] == len(frame)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert window.added == 8 * 5 * 200
    assert len(window) == 500
    frame, embeddings = window.frame()
    assert len(frame) == 500 and embeddings.shape == (500, DIM)


def test_global_numpy_random_state_is_left_alone(reference):
    frame, embeddings = window_of(traffic(WINDOW, seed=17))
    np.random.seed(1234)
    expected = np.random.rand()
    np.random.seed(1234)
    compute_drift(reference, frame, embeddings)  # Evidently's bootstrap re-seeds np.random
    assert np.random.rand() == expected


def test_html_report_of_the_tabular_features(reference):
    burst = {label: 0.9 if label == "chitchat" else 0.1 / 7 for label in INTENT_LABELS}
    frame, _ = window_of(traffic(WINDOW, seed=18, intent_probs=burst))
    html = html_report(reference, frame)
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert html.rstrip().lower().endswith("</html>")
    for name in TABULAR_FEATURES:
        assert name in html
    # a window without scores (all chitchat) still renders, leaving the empty columns out
    only_chitchat = {label: 1.0 if label == "chitchat" else 0.0 for label in INTENT_LABELS}
    frame, _ = window_of(traffic(60, seed=19, intent_probs=only_chitchat))
    html = html_report(reference, frame)
    assert "<html" in html.lower() and "not in this report: retrieval_top_score, rerank_top_score" in html
    # nothing at all
    html = html_report(reference, pd.DataFrame(columns=list(TABULAR_FEATURES)))
    assert "Not enough data" in html and html.startswith("<!DOCTYPE html>")


def test_compute_drift_is_fast(reference):
    frame, embeddings = window_of(traffic(WINDOW, seed=20, embedding_shift=1.0))
    compute_drift(reference, frame, embeddings)  # warm-up (lazy imports)
    started = time.perf_counter()
    result = compute_drift(reference, frame, embeddings)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, elapsed
    assert result.duration_s < 5.0
