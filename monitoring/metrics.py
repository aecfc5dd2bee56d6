"""Every MangaAssist metric, defined once, emitted with `ray.serve.metrics` so that Ray's metrics
agent (port 8080 on every node) exports them. Exported names get a `ray_` prefix, and counters a
`_total` suffix: `requests` below is `ray_mangaassist_requests_total` in Prometheus.

Labels are bounded: routes, stages, intents, reasons, index names, model names and versions; never
query text or request ids. Ray Serve adds `deployment`, `replica` and `application` to every one
(those names are reserved: a metric may not declare them itself). Latencies are in seconds, with buckets for this workload (1 ms to 10 s).
"""
from __future__ import annotations

import threading
import time
from functools import lru_cache

LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]
TOKEN_BUCKETS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
UNIT_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
SCORE_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0]

# name -> (kind, description, tag keys, buckets)
CATALOG: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "mangaassist_requests": ("counter", "HTTP requests answered, by route, intent and status code.",
                             ("route", "intent", "status"), None),
    "mangaassist_request_latency_seconds": ("histogram", "End-to-end request latency in the gateway.",
                                            ("route",), LATENCY_BUCKETS),
    "mangaassist_stage_latency_seconds": ("histogram", "Latency of one pipeline stage (intent, lookup, embed, "
                                          "search, rerank, generate).", ("stage",), LATENCY_BUCKETS),
    "mangaassist_batch_size": ("histogram", "Items in one dynamic batch.", (), BATCH_BUCKETS),
    "mangaassist_rerank_batch_tokens": ("histogram", "Tokens in one reranker batch (bounded by the token budget).",
                                        (), TOKEN_BUCKETS),
    "mangaassist_intent_confidence": ("histogram", "Calibrated confidence of the predicted intent.",
                                      ("intent",), UNIT_BUCKETS),
    "mangaassist_low_confidence": ("counter", "Chat requests answered conservatively (confidence below threshold).",
                                   ("intent",), None),
    "mangaassist_degraded": ("counter", "Answers that degraded, by reason (reranker_timeout, bedrock_throttled, ...).",
                             ("reason",), None),
    "mangaassist_retrieval_top_score": ("histogram", "Score of the best retrieved document.", ("index",), SCORE_BUCKETS),
    "mangaassist_rerank_top_score": ("histogram", "Relevance of the best reranked document.", ("index",), UNIT_BUCKETS),
    "mangaassist_bedrock_tokens": ("counter", "Bedrock tokens, by direction (input, output) and model.",
                                   ("direction", "model"), None),
    "mangaassist_bedrock_cost_usd": ("counter", "Bedrock cost in USD from the configured price table.", ("model",), None),
    "mangaassist_bedrock_throttles": ("counter", "Bedrock calls that were throttled.", ("operation",), None),
    "mangaassist_bedrock_breaker_state": ("gauge", "Bedrock circuit breaker: 0 closed, 1 half-open, 2 open.",
                                          ("operation",), None),
    "mangaassist_model_info": ("gauge", "1 for each loaded model version and runtime.",
                               ("model", "version", "runtime", "precision"), None),
    "mangaassist_drift_share": ("gauge", "Share of monitored features whose drift was detected in the last window.",
                                (), None),
    "mangaassist_drift_score": ("gauge", "Drift score per feature (test p-value or distance; see drift_method).",
                                ("feature", "method"), None),
    "mangaassist_drift_detected": ("gauge", "1 when drift was detected for the feature in the last window.",
                                   ("feature",), None),
    "mangaassist_drift_window_size": ("gauge", "Requests in the current drift window.", (), None),
    "mangaassist_drift_records_dropped": ("counter", "Drift records the gateway could not deliver to the monitor.",
                                          (), None),
}


@lru_cache(maxsize=None)
def metric(name: str):
    """The Ray Serve metric object for `name` (one per process, created on first use)."""
    from ray.serve import metrics

    kind, description, tags, buckets = CATALOG[name]
    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tags)
    if kind == "gauge":
        return metrics.Gauge(name, description=description, tag_keys=tags)
    return metrics.Histogram(name, description=description, boundaries=buckets, tag_keys=tags)


# Ray's metrics agent forgets a gauge series that was not set again within two export intervals
# (~20 s), while a Prometheus gauge means "the last value": values set through `set_gauge` are set
# again every GAUGE_REFRESH_S by one daemon thread per process, for as long as the process lives.
GAUGE_REFRESH_S = 5.0
_gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_gauges_lock = threading.Lock()
_refresher: list[threading.Thread] = []


def set_gauge(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    """Set a catalog gauge and keep exporting it until it is set again."""
    metric(name).set(value, tags=tags)
    with _gauges_lock:
        _gauges[(name, tuple(sorted((tags or {}).items())))] = value
        if not _refresher:
            _refresher.append(threading.Thread(target=_refresh_gauges, name="gauge-refresher", daemon=True))
            _refresher[0].start()


def _refresh_gauges() -> None:
    while True:
        time.sleep(GAUGE_REFRESH_S)
        with _gauges_lock:
            values = list(_gauges.items())
        for (name, tags), value in values:
            metric(name).set(value, tags=dict(tags))


def exported_name(name: str) -> str:
    """What Prometheus scrapes for a catalog name (Ray adds `ray_`; counters get `_total`)."""
    kind = CATALOG[name][0]
    return f"ray_{name}_total" if kind == "counter" else f"ray_{name}"
