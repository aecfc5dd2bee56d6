"""MLflow tracking in a temporary file store: model training runs logged once per version."""
import json

import pytest

from models import tracking
from models.registry import Registry


def _register(registry: Registry, name: str, fingerprint: str, accuracy: float) -> str:
    staged = registry.staging(name)
    (staged / "metrics.json").write_text(json.dumps({
        "test_accuracy": accuracy, "ndcg@10": 0.5, "gates": {"int8": {"value": 0.99, "passed": True}},
        "history": [1, 2], "quantization": {"policy": "all"}}))
    (staged / "data_fingerprint.json").write_text(json.dumps({"model": name, "config": {"lr": 8e-05, "seed": 13}}))
    (staged / "reports").mkdir()
    (staged / "reports" / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return registry.register(name, staged, fingerprint, {"test_accuracy": accuracy})


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    return tmp_path


def test_scalars_flatten_and_sanitize():
    assert tracking.scalars({"ndcg@10": 0.5, "gates": {"x": {"passed": True, "direction": "max"}}, "h": [1],
                             "nan": float("nan")}) == {"ndcg_at_10": 0.5, "gates.x.passed": 1.0}


def test_model_versions_are_logged_once_each(store):
    registry = Registry(store / "registry")
    v1 = _register(registry, "intent", "a" * 64, 0.91)
    v2 = _register(registry, "intent", "b" * 64, 0.93)
    first = tracking.log_model_versions(registry)
    assert sorted((n, v, fresh) for n, v, _, fresh in first) == [("intent", v1, True), ("intent", v2, True)]
    again = tracking.log_model_versions(registry)
    assert [fresh for *_, fresh in again] == [False, False]
    assert {r for *_, r, _ in first} == {r for *_, r, _ in again}   # the same runs, not new ones

    v3 = _register(registry, "reranker", "c" * 64, 0.5)
    third = {(n, v): fresh for n, v, _, fresh in tracking.log_model_versions(registry)}
    assert third == {("intent", v1): False, ("intent", v2): False, ("reranker", v3): True}

    run_id = next(r for n, v, r, _ in first if v == v2)
    metrics, params, tags = tracking.run_data(run_id)
    assert metrics["test_accuracy"] == 0.93 and metrics["ndcg_at_10"] == 0.5 and metrics["gates.int8.passed"] == 1.0
    assert params["lr"] == "8e-05" and params["version"] == v2
    assert tags["model_name"] == "intent" and tags["current_when_logged"] == "true"   # v2 was the newest intent
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"metrics.json", "data_fingerprint.json", "confusion_matrix.png", "manifest.json"} <= artifacts


def test_build_command_logs_versions_and_survives_a_broken_store(store, monkeypatch, capsys):
    from models import cli

    registry = Registry(store / "registry")
    _register(registry, "embedder", "d" * 64, 0.99)
    cli.track_model_versions(registry)
    assert "1 new model version run(s)" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cli.track_model_versions(registry)
    assert "warning: model runs not logged" in capsys.readouterr().err


def test_default_store_is_a_file_store_under_mangaassist_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MANGAASSIST_HOME", str(tmp_path))
    assert tracking.tracking_uri() == (tmp_path / "mlruns").as_uri()
