"""MLflow tracking: graph evaluations and model training runs, in one store.

Local file store under `$MANGAASSIST_HOME/mlruns` by default; `MLFLOW_TRACKING_URI` (a server,
sqlite:///..., databricks) is honoured. Browse a local store with `mlflow ui --backend-store-uri
file://$HOME/.cache/mangaassist/mlruns` (the server needs the full `mlflow` package).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .paths import home

GRAPH_EXPERIMENT = "mangaassist-graph-eval"
MODELS_EXPERIMENT = "mangaassist-models"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (home() / "mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps the file store in maintenance mode behind this opt-in; it needs no server
        # and no database, which is what a laptop and CI have.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces: 'ndcg@10' -> 'ndcg_at_10'."""
    return re.sub(r"[^\w\-./ ]", "_", name.replace("@", "_at_"))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def scalars(d: dict) -> dict[str, float]:
    """The finite numbers (booleans as 0/1) of a nested dict, with MLflow-safe keys."""
    out = {}
    for k, v in flatten(d).items():
        if isinstance(v, (bool, int, float)) and not (isinstance(v, float) and not math.isfinite(v)):
            out[metric_key(k)] = float(v)
    return out


def log_run(experiment: str, run_name: str, params: dict, metrics: dict[str, float], tags: dict | None = None,
            artifacts: list[Path] = (), artifact_dir: Path | None = None) -> str:
    """One finished MLflow run; returns its id."""
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags or {}) as run:
        clean = {metric_key(k)[:250]: str(v)[:6000] for k, v in flatten(params).items() if v is not None}
        items = list(clean.items())
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            mlflow.log_params(dict(items[start:start + 100]))
        if metrics:
            mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
        for path in artifacts:
            mlflow.log_artifact(str(path))
        if artifact_dir is not None:
            mlflow.log_artifacts(str(artifact_dir))
    return run.info.run_id


def run_data(run_id: str) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """(metrics, params, tags) of a run, for baseline comparisons."""
    run = _mlflow().MlflowClient().get_run(run_id)
    return dict(run.data.metrics), dict(run.data.params), dict(run.data.tags)


def log_model_versions(registry=None) -> list[tuple[str, str, str, bool]]:
    """One MLflow run per registered model version, once: params from its training config, metrics
    from metrics.json, reports and metadata as artifacts. A version that already has a run (tags
    model_name and model_version) is skipped, so calling this after every build is idempotent.
    Returns (name, version, run id, newly logged)."""
    from .registry import Registry

    registry = registry or Registry()
    mlflow = _mlflow()
    experiment = mlflow.set_experiment(MODELS_EXPERIMENT)
    done = []
    for name in registry.names():
        for version in registry.versions(name):
            existing = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list",
                                          filter_string=f"tags.model_name = '{name}' and tags.model_version = '{version}'")
            if existing:
                done.append((name, version, existing[0].info.run_id, False))
                continue
            folder = registry.root / name / version
            manifest = registry.manifest(name, version)
            fingerprint = _read(folder / "data_fingerprint.json")
            params = {"model": name, "version": version, "fingerprint": manifest.get("fingerprint"),
                      **fingerprint.get("config", {})}
            tags = {"model_name": name, "model_version": version, "created": manifest.get("created", ""),
                    "current_when_logged": str(registry.current(name) == version).lower()}
            files = [folder / f for f in ("metrics.json", "data_fingerprint.json", "model_card.json", "manifest.json")
                     if (folder / f).exists()]
            files += sorted((folder / "reports").glob("*.png")) if (folder / "reports").is_dir() else []
            run_id = log_run(MODELS_EXPERIMENT, f"{name}:{version}", params, scalars(_read(folder / "metrics.json")),
                             tags, files)
            done.append((name, version, run_id, True))
    return done


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
