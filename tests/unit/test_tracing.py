"""Stage spans with the SDK's in-memory exporter, the tracing switch, and the OTLP exporter against a
local OTLP/HTTP receiver."""
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from monitoring import tracing
from recording_server import recording_server


@pytest.fixture
def exported(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing.trace, "get_tracer", provider.get_tracer)
    return exporter


def test_stage_spans_nest_and_carry_the_request_id(exported):
    with tracing.stage_span("intent", "req-1") as outer:
        with tracing.stage_span("embed", "req-1"):
            pass
    inner, outer_done = exported.get_finished_spans()
    assert (inner.name, outer_done.name) == ("mangaassist.embed", "mangaassist.intent")
    assert inner.parent.span_id == outer.get_span_context().span_id
    assert inner.context.trace_id == outer_done.context.trace_id
    assert dict(inner.attributes) == {"mangaassist.stage": "embed", "mangaassist.request_id": "req-1"}


def test_a_failed_stage_is_an_error_span(exported):
    with pytest.raises(TimeoutError):
        with tracing.stage_span("rerank", None):
            raise TimeoutError("late")
    (span,) = exported.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert "mangaassist.request_id" not in span.attributes
    assert span.events[0].name == "exception"


def test_a_detached_span_does_not_become_current(exported):
    with tracing.stage_span("intent", "r") as parent:
        with tracing.stage_span("generate", "r", current=False):
            with tracing.stage_span("inner", "r"):
                pass
    spans = {s.name: s for s in exported.get_finished_spans()}
    # the detached span is a child of the request, but what runs inside it is not its child
    assert spans["mangaassist.generate"].parent.span_id == parent.get_span_context().span_id
    assert spans["mangaassist.inner"].parent.span_id == parent.get_span_context().span_id


def test_tracing_is_off_unless_an_otlp_endpoint_is_configured():
    assert tracing.tracing_config_from_env({}) is None
    config = tracing.tracing_config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                              "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert config == {"enabled": True, "exporter_import_path": "monitoring.tracing:otlp_span_processors",
                      "sampling_ratio": 0.25}
    from ray.serve.schema import TracingConfig

    TracingConfig(**config)  # what Serve accepts


def test_the_otlp_exporter_delivers_spans_to_the_configured_endpoint(monkeypatch):
    with recording_server() as (url, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        provider = TracerProvider()
        for processor in tracing.otlp_span_processors():
            provider.add_span_processor(processor)
        monkeypatch.setattr(tracing.trace, "get_tracer", provider.get_tracer)
        with tracing.stage_span("search", "req-otlp"):
            pass
        provider.force_flush()
        provider.shutdown()
    (path, body), = received
    assert path == "/v1/traces"
    request = ExportTraceServiceRequest.FromString(body)
    (span,) = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert span.name == "mangaassist.search" and attributes["mangaassist.request_id"] == "req-otlp"
