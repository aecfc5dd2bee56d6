"""OpenTelemetry traces: one trace per request across every deployment.

Ray Serve (2.60) does the plumbing: with a `tracing_config` the proxy opens a span per HTTP
request, every DeploymentHandle call carries the W3C context to the replica it lands on, and the
replica opens a child span around the method. We add one span per MangaAssist stage in the gateway
(`stage_span`), with the request id as an attribute, so a trace reads
proxy -> Gateway.chat -> mangaassist.intent -> IntentClassifier.classify -> ... -> mangaassist.generate.

Off by default. On when the Serve config has a `tracing_config`, or when an OTLP endpoint is
configured the OpenTelemetry way (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): then every process exports with `otlp_span_processors`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from opentelemetry import trace

TRACER_NAME = "mangaassist"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def otlp_span_processors() -> list:
    """Ray Serve's `exporter_import_path` target: batch-export spans over OTLP/HTTP. The exporter
    reads the endpoint, headers and timeout from the standard OTEL_EXPORTER_OTLP_* variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return [BatchSpanProcessor(OTLPSpanExporter())]


def tracing_config_from_env(environ=os.environ) -> dict | None:
    """A Serve `tracing_config` when an OTLP endpoint is configured, else None (tracing off)."""
    if not any(environ.get(v) for v in ENDPOINT_VARS):
        return None
    ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    return {"enabled": True, "exporter_import_path": f"{__name__}:otlp_span_processors", "sampling_ratio": ratio}


@contextmanager
def stage_span(stage: str, request_id: str | None, current: bool = True):
    """A span for one pipeline stage, a child of the current (Ray Serve request) span; handle calls
    made inside it become its children. `current=False` for a span held across the yields of an
    async generator (a context attached there could not be detached in another context). Without a
    tracer provider this is OpenTelemetry's no-op span: nearly free."""
    tracer = trace.get_tracer(TRACER_NAME)
    attributes = {"mangaassist.stage": stage}
    if request_id:
        attributes["mangaassist.request_id"] = request_id
    if current:
        with tracer.start_as_current_span(f"mangaassist.{stage}", attributes=attributes) as span:
            yield span
        return
    span = tracer.start_span(f"mangaassist.{stage}", attributes=attributes)
    try:
        yield span
    finally:
        span.end()
