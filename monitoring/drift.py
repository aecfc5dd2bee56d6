"""Drift detection for the serving platform, built on Evidently's own drift methods.

Per request the DriftMonitor gets one feature record::

    {"intent": "chitchat", "confidence": 0.91, "query_length": 42,
     "retrieval_top_score": None, "rerank_top_score": None,   # None when there was no retrieval
     "embedding": np.ndarray(384)}                             # may be None (chitchat is not embedded)

``DriftWindow`` keeps the last N records (thread safe); ``compute_drift`` compares the window with
the ``Reference`` saved next to the model version in the registry and returns a ``DriftResult``
(per-feature score, method, threshold and detected flag, and the share of drifted features);
``html_report`` renders Evidently's HTML data-drift report of the tabular features.

Evidently (0.7.23) is used like this:

* tabular features: ``evidently.legacy.calculations.stattests.get_stattest`` picks the same test
  Evidently's ``ValueDrift`` / ``DataDriftPreset`` pick (its defaults depend on the reference size
  and on the number of distinct values: categorical <= 1000 reference rows -> chi-square (Z-test
  for two categories), > 1000 -> Jensen-Shannon; numerical <= 1000 -> K-S (chi-square / Z-test
  when there are <= 5 distinct values), > 1000 -> Wasserstein (Jensen-Shannon when <= 5
  distinct values)); the returned ``StatTest`` is called on the two cleaned columns. This is
  exactly what the new-API ``evidently.metrics.ValueDrift`` does internally (through
  ``evidently.legacy.calculations.data_drift.get_one_column_drift``), without building a Report.
  Exception: ``intent`` uses Jensen-Shannon by default (see ``DEFAULT_METHODS`` for why).
* embeddings: the drift methods of
  ``evidently.legacy.metrics.data_drift.embedding_drift_methods`` (re-exported as classes by
  ``evidently.metrics.embeddings``), called directly on the two embedding matrices. The default is
  Evidently's own default for ``EmbeddingsDriftMetric``: the domain classifier
  ``model(bootstrap=<reference rows> < 1000)``. The Report path is avoided on purpose: for
  embeddings it also computes a t-SNE plot (~45 s per 1k rows).
* HTML: the new API, ``evidently.Report([evidently.presets.DataDriftPreset(columns=...)])`` over
  the tabular columns only (no embeddings, hence no t-SNE).

Evidently is imported lazily (it takes seconds to import), so importing this module to build
records is cheap. ``DO_NOT_TRACK=1`` is set (if unset) before Evidently is imported.
"""
from __future__ import annotations

import collections
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

CATEGORICAL_FEATURES: tuple[str, ...] = ("intent",)
NUMERICAL_FEATURES: tuple[str, ...] = ("confidence", "query_length", "retrieval_top_score", "rerank_top_score")
TABULAR_FEATURES: tuple[str, ...] = CATEGORICAL_FEATURES + NUMERICAL_FEATURES
EMBEDDING_FEATURE = "embedding"
FEATURES: tuple[str, ...] = TABULAR_FEATURES + (EMBEDDING_FEATURE,)
OPTIONAL_FEATURES = frozenset({"retrieval_top_score", "rerank_top_score", EMBEDDING_FEATURE})

DEFAULT_WINDOW_SIZE = 500
# Fewer non-missing values than this in either sample: the feature is "not evaluated".
MIN_SAMPLES = 30
# Share of evaluated features that must drift for the whole window to count as drifted
# (Evidently's DataDriftPreset default).
DRIFT_SHARE = 0.5

REFERENCE_TABLE_FILE = "drift_reference.csv"
REFERENCE_EMBEDDINGS_FILE = "drift_reference_embeddings.npy"

EMBEDDING_METHODS = ("model", "mmd", "distance", "ratio")

# Methods chosen here rather than by Evidently's size-based default (None = Evidently's default).
# intent: Evidently's default below 1000 reference rows is its chi-square goodness-of-fit test,
# which takes the reference frequencies as exact: with a 700-row reference and 500-row windows of
# the SAME distribution it flagged drift in 12-38% of windows (depending on the reference draw)
# instead of 5%. Jensen-Shannon distance (Evidently's default above 1000 rows, threshold 0.1)
# flagged none of those and still catches the chitchat share doubling (12.5% -> 25%).
DEFAULT_METHODS: dict[str, Any] = {"intent": "jensenshannon"}

# Evidently stat tests whose score is a p-value (drift when below the threshold); the others
# (wasserstein, jensenshannon, psi, kl_div, hellinger, ed) are distances (drift when above).
P_VALUE_TESTS = frozenset({"ks", "chisquare", "z", "TVD", "fisher_exact", "g_test", "anderson", "cramer_von_mises",
                           "es", "mannw", "t_test", "empirical_mmd"})

# Some Evidently methods re-seed numpy's global RNG (np.random.seed in the embedding bootstraps
# and the permutation tests); the lock and the saved/restored state keep that from leaking.
_EVIDENTLY_LOCK = threading.Lock()
# Evidently's first import in two threads at once (the monitor's computation and its HTML report)
# fails with "partially initialized module": imports of it go one at a time.
_IMPORT_LOCK = threading.Lock()


# --- records ----------------------------------------------------------------------------------

def _optional_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or None, got {value!r}") from None
    return number if math.isfinite(number) else None


def normalize_record(record: Mapping[str, Any], embedding_dim: int | None = None) -> dict[str, Any]:
    """Validated copy of one feature record: floats (or None) for the scores, a float32 vector
    (or None) for the embedding. Raises ValueError on a malformed record."""
    missing = [k for k in TABULAR_FEATURES if k not in record and k not in OPTIONAL_FEATURES]
    if missing:
        raise ValueError(f"drift record lacks {missing}")
    intent = record["intent"]
    if not isinstance(intent, str) or not intent:
        raise ValueError(f"intent must be a non-empty string, got {intent!r}")
    out: dict[str, Any] = {"intent": intent}
    for name in NUMERICAL_FEATURES:
        out[name] = _optional_float(record.get(name), name)
    for name in ("confidence", "query_length"):
        if out[name] is None:
            raise ValueError(f"{name} is required, got {record.get(name)!r}")
    vector = record.get(EMBEDDING_FEATURE)
    if vector is not None:
        vector = np.array(vector, dtype=np.float32).reshape(-1)  # a copy: the caller's buffer may change
        if embedding_dim is not None and vector.shape[0] != embedding_dim:
            raise ValueError(f"embedding has {vector.shape[0]} dimensions, expected {embedding_dim}")
        if vector.shape[0] == 0 or not np.isfinite(vector).all():
            raise ValueError("embedding must be a non-empty vector of finite numbers")
    out[EMBEDDING_FEATURE] = vector
    return out


def _frame_of(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Tabular frame with fixed columns and dtypes (intent: object; numerical: float64, NaN for None)."""
    frame = pd.DataFrame({"intent": pd.Series([r["intent"] for r in records], dtype=object)})
    for name in NUMERICAL_FEATURES:
        frame[name] = pd.Series([np.nan if r[name] is None else r[name] for r in records], dtype="float64")
    return frame


def _stack(vectors: list[np.ndarray], dim: int | None) -> np.ndarray:
    if vectors:
        return np.stack(vectors).astype(np.float32, copy=False)
    return np.zeros((0, dim or 0), dtype=np.float32)


def _clean_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The tabular columns with the canonical dtypes; a missing optional column is all NaN."""
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    intents = frame["intent"].tolist() if "intent" in frame else [None] * len(frame)
    out["intent"] = pd.Series([v if isinstance(v, str) and v else None for v in intents], dtype=object)
    for name in NUMERICAL_FEATURES:
        column = frame[name] if name in frame else pd.Series([np.nan] * len(frame))
        out[name] = pd.to_numeric(pd.Series(column.to_numpy()), errors="coerce").astype("float64")
    return out


def _clean_embeddings(embeddings: Any) -> np.ndarray:
    if embeddings is None:
        return np.zeros((0, 0), dtype=np.float32)
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.size == 0:
        return np.zeros((0, matrix.shape[-1] if matrix.ndim == 2 else 0), dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D matrix, got shape {matrix.shape}")
    return matrix


# --- reference --------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class Reference:
    """The reference sample a model version is compared against: the tabular features and a
    matrix of query embeddings (rows need not line up with the table: requests without an
    embedding are simply absent from the matrix)."""

    frame: pd.DataFrame
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        self.frame = _clean_frame(self.frame)
        self.embeddings = _clean_embeddings(self.embeddings)

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f"Reference(rows={len(self.frame)}, embeddings={self.embeddings.shape})"

    @property
    def embedding_dim(self) -> int | None:
        return int(self.embeddings.shape[1]) if self.embeddings.shape[0] else None

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "Reference":
        rows, dim = [], None
        for record in records:
            row = normalize_record(record, dim)
            if dim is None and row[EMBEDDING_FEATURE] is not None:
                dim = int(row[EMBEDDING_FEATURE].shape[0])
            rows.append(row)
        vectors = [r[EMBEDDING_FEATURE] for r in rows if r[EMBEDDING_FEATURE] is not None]
        return cls(_frame_of(rows), _stack(vectors, dim))

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``drift_reference.csv`` and ``drift_reference_embeddings.npy`` into ``folder``
        (deterministic bytes for the same data, so a registry can checksum them); returns the paths.
        CSV rather than Parquet: pyarrow is not among the project's pinned dependencies."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        table, matrix = folder / REFERENCE_TABLE_FILE, folder / REFERENCE_EMBEDDINGS_FILE
        self.frame.to_csv(table, index=False, lineterminator="\n")
        np.save(matrix, np.ascontiguousarray(self.embeddings, dtype=np.float32), allow_pickle=False)
        return [table, matrix]

    @classmethod
    def load(cls, folder: str | Path) -> "Reference":
        folder = Path(folder)
        frame = pd.read_csv(folder / REFERENCE_TABLE_FILE, dtype={"intent": object}, keep_default_na=False,
                            na_values={name: [""] for name in NUMERICAL_FEATURES}, float_precision="round_trip")
        missing = [c for c in TABULAR_FEATURES if c not in frame]
        if missing:
            raise ValueError(f"{folder / REFERENCE_TABLE_FILE} lacks columns {missing}")
        embeddings = np.load(folder / REFERENCE_EMBEDDINGS_FILE, allow_pickle=False)
        return cls(frame, embeddings)


# --- window -----------------------------------------------------------------------------------

class DriftWindow:
    """Thread-safe sliding window of the last ``size`` feature records."""

    def __init__(self, size: int = DEFAULT_WINDOW_SIZE, embedding_dim: int | None = None):
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.embedding_dim = embedding_dim  # fixed by the first embedding seen when None
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self.added = 0  # records accepted since creation (monotonic)

    def add(self, record: Mapping[str, Any]) -> None:
        """Append one record (the oldest falls out when full). Raises ValueError if malformed."""
        row = normalize_record(record, self.embedding_dim)
        with self._lock:
            vector = row[EMBEDDING_FEATURE]
            if vector is not None:
                if self.embedding_dim is None:
                    self.embedding_dim = int(vector.shape[0])
                elif vector.shape[0] != self.embedding_dim:  # another thread fixed the dimension first
                    raise ValueError(f"embedding has {vector.shape[0]} dimensions, expected {self.embedding_dim}")
            self._records.append(row)
            self.added += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def frame(self) -> tuple[pd.DataFrame, np.ndarray]:
        """A snapshot: (tabular DataFrame, embeddings matrix of the records that have one)."""
        with self._lock:
            rows = list(self._records)
            dim = self.embedding_dim
        vectors = [r[EMBEDDING_FEATURE] for r in rows if r[EMBEDDING_FEATURE] is not None]
        return _frame_of(rows), _stack(vectors, dim)


# --- results ----------------------------------------------------------------------------------

@dataclass
class FeatureDrift:
    feature: str
    kind: str                      # "categorical" | "numerical" | "embedding"
    evaluated: bool
    detected: bool                 # always False when not evaluated
    score: float | None            # Evidently's drift score; see score_kind
    score_kind: str | None         # "p_value" (drift when below threshold); "distance", "roc_auc", "share"
                                   # (drift when above), None when not evaluated
    method: str | None             # Evidently's stat test / embedding method name
    threshold: float | None        # None for bootstrapped embedding methods (threshold is computed)
    n_reference: int
    n_current: int
    reason: str | None = None      # why it was not evaluated


@dataclass
class DriftResult:
    features: dict[str, FeatureDrift]
    share_drifted: float           # detected / evaluated (0.0 when nothing was evaluated)
    n_evaluated: int
    n_drifted: int
    dataset_drift: bool            # share_drifted >= drift_share (and something was evaluated)
    drift_share: float
    window_size: int               # rows in the current window
    reference_size: int
    computed_at: float             # unix time, seconds
    duration_s: float = 0.0

    @property
    def detected(self) -> list[str]:
        return [name for name, f in self.features.items() if f.detected]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["computed_at_iso"] = datetime.fromtimestamp(self.computed_at, timezone.utc).isoformat()
        return out


# --- computation ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _evidently():
    """Import Evidently's drift internals once (slow import; telemetry off)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    with _IMPORT_LOCK:
        from evidently.legacy.calculations.stattests import StatTest, get_stattest
        from evidently.legacy.core import ColumnType
        from evidently.legacy.metrics.data_drift import embedding_drift_methods

    return StatTest, get_stattest, ColumnType, embedding_drift_methods


def _score_kind(stattest: Any) -> str:
    return "p_value" if stattest.name in P_VALUE_TESTS else "distance"


def _not_evaluated(name: str, kind: str, n_ref: int, n_cur: int, reason: str) -> FeatureDrift:
    return FeatureDrift(name, kind, evaluated=False, detected=False, score=None, score_kind=None, method=None,
                        threshold=None, n_reference=n_ref, n_current=n_cur, reason=reason)


def _too_few(n_ref: int, n_cur: int, min_samples: int) -> str | None:
    if min(n_ref, n_cur) >= min_samples:
        return None
    which = " and ".join(side for side, n in (("reference", n_ref), ("current", n_cur)) if n < min_samples)
    return f"too few values in {which} ({n_ref} reference, {n_cur} current; need {min_samples})"


def _tabular_drift(name: str, reference: pd.Series, current: pd.Series, method: Any, threshold: float | None,
                   min_samples: int) -> FeatureDrift:
    StatTest, get_stattest, ColumnType, _ = _evidently()
    kind = "categorical" if name in CATEGORICAL_FEATURES else "numerical"
    column_type = ColumnType.Categorical if kind == "categorical" else ColumnType.Numerical
    # the cleaning Evidently's get_one_column_drift applies
    ref = reference.replace([-np.inf, np.inf], np.nan).dropna().reset_index(drop=True)
    cur = current.replace([-np.inf, np.inf], np.nan).dropna().reset_index(drop=True)
    reason = _too_few(len(ref), len(cur), min_samples)
    if reason:
        return _not_evaluated(name, kind, len(ref), len(cur), reason)
    stattest = get_stattest(ref, cur, column_type, method)  # method None -> Evidently's default for the sizes
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stattest(ref, cur, column_type, threshold)
    score = float(result.drift_score)
    return FeatureDrift(name, kind, evaluated=True, detected=bool(result.drifted), score=score,
                        score_kind=_score_kind(stattest), method=stattest.name,
                        threshold=float(result.actual_threshold), n_reference=len(ref), n_current=len(cur))


def _embedding_method(method: Any, n_reference: int, threshold: float | None):
    *_, methods = _evidently()
    if isinstance(method, methods.DriftMethod):
        return method
    if method is None or method == "model":
        # Evidently's EmbeddingsDriftMetric default: bootstrap the threshold below 1000 reference rows
        kwargs = {"bootstrap": n_reference < 1000} if threshold is None else {"threshold": threshold}
        return methods.model(**kwargs)
    if method in ("mmd", "distance", "ratio"):
        kwargs = {} if threshold is None else {"threshold": threshold}
        return getattr(methods, method)(**kwargs)
    raise ValueError(f"unknown embedding drift method {method!r}; use one of {EMBEDDING_METHODS} "
                     "or an evidently DriftMethod")


def _embedding_drift(reference: np.ndarray, current: np.ndarray, method: Any, threshold: float | None,
                     min_samples: int) -> FeatureDrift:
    n_ref, n_cur = int(reference.shape[0]), int(current.shape[0])
    reason = _too_few(n_ref, n_cur, min_samples)
    if reason is None and reference.shape[1] != current.shape[1]:
        reason = f"embedding dimensions differ ({reference.shape[1]} reference, {current.shape[1]} current)"
    if reason:
        return _not_evaluated(EMBEDDING_FEATURE, "embedding", n_ref, n_cur, reason)
    drift_method = _embedding_method(method, n_ref, threshold)
    # Fresh frames: ModelDriftMethod adds a "target" column to the frames it is given.
    cur_df = pd.DataFrame(current.astype(np.float64))
    ref_df = pd.DataFrame(reference.astype(np.float64))
    score, detected, name = drift_method(cur_df, ref_df)  # Evidently's signature: (current, reference)
    bootstrap = bool(getattr(drift_method, "bootstrap", False))
    score_kind = {"model": "roc_auc", "ratio": "share"}.get(name, "distance")
    return FeatureDrift(EMBEDDING_FEATURE, "embedding", evaluated=True, detected=bool(detected), score=float(score),
                        score_kind=score_kind, method=name,
                        threshold=None if bootstrap else float(drift_method.threshold),
                        n_reference=n_ref, n_current=n_cur)


def compute_drift(reference: Reference, current_frame: pd.DataFrame, current_embeddings: np.ndarray | None,
                  method_by_feature: Mapping[str, Any] | None = None, *,
                  threshold_by_feature: Mapping[str, float] | None = None,
                  min_samples: int = MIN_SAMPLES, drift_share: float = DRIFT_SHARE) -> DriftResult:
    """Drift of the current window against the reference, one Evidently test per feature.

    ``method_by_feature`` overrides a feature's method (defaults: ``DEFAULT_METHODS``, else
    Evidently's own choice for the sample sizes; None selects Evidently's choice): for tabular
    features any Evidently stat test name ("ks", "wasserstein", "chisquare", "jensenshannon",
    "psi", ...) or ``StatTest``; for ``"embedding"`` one of "model", "mmd", "distance", "ratio" or
    an Evidently ``DriftMethod`` instance (default: Evidently's, the domain classifier).
    ``threshold_by_feature`` overrides the method's default threshold. Missing values are
    dropped per feature; a feature with fewer than ``min_samples`` values in either sample is not
    evaluated (and does not count towards ``share_drifted``).
    """
    started = time.perf_counter()
    thresholds = dict(threshold_by_feature or {})
    unknown = (set(method_by_feature or {}) | set(thresholds)) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown drift features {sorted(unknown)}; features are {FEATURES}")
    methods = {**DEFAULT_METHODS, **(method_by_feature or {})}
    current = _clean_frame(current_frame)
    current_embeddings = _clean_embeddings(current_embeddings)
    features: dict[str, FeatureDrift] = {}
    with _EVIDENTLY_LOCK:
        state = np.random.get_state()
        try:
            for name in TABULAR_FEATURES:
                features[name] = _tabular_drift(name, reference.frame[name], current[name], methods.get(name),
                                                thresholds.get(name), min_samples)
            features[EMBEDDING_FEATURE] = _embedding_drift(reference.embeddings, current_embeddings,
                                                           methods.get(EMBEDDING_FEATURE),
                                                           thresholds.get(EMBEDDING_FEATURE), min_samples)
        finally:
            np.random.set_state(state)
    evaluated = [f for f in features.values() if f.evaluated]
    drifted = [f for f in evaluated if f.detected]
    share = len(drifted) / len(evaluated) if evaluated else 0.0
    return DriftResult(features=features, share_drifted=share, n_evaluated=len(evaluated), n_drifted=len(drifted),
                       dataset_drift=bool(evaluated) and share >= drift_share, drift_share=drift_share,
                       window_size=len(current), reference_size=len(reference), computed_at=time.time(),
                       duration_s=time.perf_counter() - started)


# --- HTML report ------------------------------------------------------------------------------

_EMPTY_REPORT = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>MangaAssist drift report</title></head>
<body><h1>MangaAssist drift report</h1><p>{message}</p></body></html>
"""


def empty_report(message: str) -> str:
    """A minimal HTML page in place of a report (no reference, no data yet)."""
    import html

    return _EMPTY_REPORT.format(message=html.escape(message))


def html_report(reference: Reference, current_frame: pd.DataFrame,
                method_by_feature: Mapping[str, Any] | None = None, *,
                threshold_by_feature: Mapping[str, float] | None = None, drift_share: float = DRIFT_SHARE) -> str:
    """Evidently's HTML data-drift report (``DataDriftPreset``) over the tabular features, with the
    same per-feature methods as ``compute_drift`` (``DEFAULT_METHODS`` unless overridden).

    Embeddings are left out (no t-SNE). Columns that are empty in either sample are left out too
    (Evidently refuses them); if none is left, a minimal HTML page says so."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    with _IMPORT_LOCK:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

    current = _clean_frame(current_frame)
    columns = [c for c in TABULAR_FEATURES if reference.frame[c].notna().any() and current[c].notna().any()]
    skipped = [c for c in TABULAR_FEATURES if c not in columns]
    if not columns:
        return empty_report(f"Not enough data: the current window has {len(current)} rows "
                            f"and no feature has values in both samples.")
    definition = DataDefinition(numerical_columns=[c for c in NUMERICAL_FEATURES if c in columns],
                                categorical_columns=[c for c in CATEGORICAL_FEATURES if c in columns])
    methods = {k: v for k, v in {**DEFAULT_METHODS, **(method_by_feature or {})}.items()
               if k in columns and v is not None}
    thresholds = {k: v for k, v in (threshold_by_feature or {}).items() if k in columns}
    preset = DataDriftPreset(columns=columns, drift_share=drift_share, per_column_method=methods or None,
                             per_column_threshold=thresholds or None)
    with _EVIDENTLY_LOCK, np.errstate(divide="ignore", invalid="ignore"):
        state = np.random.get_state()
        try:
            snapshot = Report([preset]).run(
                Dataset.from_pandas(current[columns], data_definition=definition),
                Dataset.from_pandas(reference.frame[columns], data_definition=definition))
        finally:
            np.random.set_state(state)
    html = snapshot.get_html_str(as_iframe=False)
    body = html.find("<body")
    if skipped and body >= 0:
        at = html.index(">", body) + 1
        note = f"\n<!-- features without values in both samples, not in this report: {', '.join(skipped)} -->"
        html = html[:at] + note + html[at:]
    return html
