import numpy as np
import pytest

from models.metrics import classification_report, expected_calibration_error, fit_temperature, mrr_at_k, ndcg_at_k
from models.runtime import softmax


def test_ece_zero_for_perfectly_calibrated_bins():
    # 10 predictions at confidence 0.8, 8 correct -> calibrated
    probs = np.tile([[0.8, 0.2]], (10, 1))
    y = [0] * 8 + [1] * 2
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)


def test_ece_measures_overconfidence():
    probs = np.tile([[0.99, 0.01]], (10, 1))
    y = [0] * 5 + [1] * 5
    assert expected_calibration_error(probs, y) == pytest.approx(0.49)


def test_temperature_scaling_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 8))
    y = np.array([rng.choice(8, p=p) for p in softmax(true_logits)])
    fitted = fit_temperature(true_logits * 3.0, y)  # the model is 3x overconfident
    assert fitted == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(softmax(true_logits * 3 / fitted), y) < expected_calibration_error(softmax(true_logits * 3), y)


def test_ndcg_and_mrr():
    assert ndcg_at_k([2, 1, 0], [2, 1]) == pytest.approx(1.0)
    assert ndcg_at_k([0, 1, 2], [2, 1]) < 0.7
    # a relevant document missing from the candidates still counts in the ideal ranking
    assert ndcg_at_k([2, 0, 0], [2, 2]) < 1.0
    assert mrr_at_k([0, 0, 1]) == pytest.approx(1 / 3)
    assert mrr_at_k([0] * 12 + [2], k=10) == 0.0


def test_classification_report_per_class():
    report = classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    assert report["accuracy"] == 0.75
    assert report["per_class"]["a"]["recall"] == 0.5 and report["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert report["confusion_matrix"] == [[1, 1], [0, 2]]


def test_gauges_are_set_again_until_replaced(monkeypatch):
    """Ray's agent forgets gauges not set within two export intervals; ours keep being set."""
    import time

    from monitoring import metrics

    calls = []

    class Gauge:
        def set(self, value, tags=None):
            calls.append((value, tags))

    monkeypatch.setattr(metrics, "metric", lambda name: Gauge())
    monkeypatch.setattr(metrics, "GAUGE_REFRESH_S", 0.05)
    monkeypatch.setattr(metrics, "_gauges", {})
    monkeypatch.setattr(metrics, "_refresher", [])
    metrics.set_gauge("mangaassist_drift_share", 0.25)
    metrics.set_gauge("mangaassist_drift_detected", 1, tags={"feature": "intent"})
    time.sleep(0.3)
    metrics.set_gauge("mangaassist_drift_share", 0.75)
    time.sleep(0.2)
    shares = [value for value, tags in calls if not tags]
    assert shares.count(0.25) >= 3 and calls.count((1, {"feature": "intent"})) >= 5
    replaced = shares.index(0.75)
    assert set(shares[replaced:]) == {0.75} and len(shares[replaced:]) >= 3  # the new value, again and again
