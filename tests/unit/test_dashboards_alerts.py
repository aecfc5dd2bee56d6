"""Grafana dashboards and Prometheus alert rules under monitoring/ are valid, and speak only of metrics
that exist.

- Each dashboard validates against the official Grafana dashboard JSON Schema (draft-07, local $refs),
  has the `datasource` variable, and every panel has a description, a unit and PromQL targets on
  `${datasource}` with a refId and a legendFormat.
- Every metric a PromQL expression names is either ours (monitoring.metrics.CATALOG through
  `exported_name`, histograms as _bucket/_sum/_count) or one of Ray's own listed in RAY_METRICS below,
  each confirmed in Ray's source; label names in matchers, groupings and legends exist on those metrics.
- `promtool check rules` and `promtool test rules` pass on monitoring/alerts/, and every dashboard
  expression parses (promtool checks it as a recording rule). promtool comes from the Debian package
  `prometheus` (apt-get install -y prometheus); these tests fail, not skip, without it.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from monitoring.metrics import CATALOG, exported_name

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "monitoring" / "dashboards"
ALERTS = ROOT / "monitoring" / "alerts"
RULES = ALERTS / "mangaassist.rules.yaml"
RULE_TESTS = ALERTS / "mangaassist.rules.test.yaml"
GRAFANA_SCHEMA = ROOT / "tests" / "schemas" / "grafana" / "dashboard.schema.json"
DASHBOARD_NAMES = ("overview", "models", "drift")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROMTOOL_HINT = "promtool is missing: install it with `apt-get update && apt-get install -y prometheus`"

# Ray's own metrics we use (exported names) -> (their labels, where they were confirmed). Ray 2.60.0
# as installed; Ray's exporter adds `ray_` to every name and `_total` to counters.
SERVE_TAGS = {"deployment", "replica", "application"}  # added by ray.serve.metrics inside a replica
RAY_METRICS: dict[str, tuple[set[str], str]] = {
    "ray_serve_num_http_requests_total": (
        {"route", "method", "application", "status_code"},
        "ray/serve/_private/request_ingress_metrics.py: Counter f'serve_num_{protocol}_requests'; "
        "ray/dashboard/modules/metrics/dashboards/serve_dashboard_panels.py"),
    "ray_serve_num_http_error_requests_total": (
        {"route", "error_code", "method", "application"},
        "ray/serve/_private/request_ingress_metrics.py: Counter f'serve_num_{protocol}_error_requests'; "
        "serve_dashboard_panels.py"),
    "ray_serve_deployment_replica_healthy": (
        {"deployment", "replica", "application"},
        "ray/serve/_private/deployment_state.py: Gauge 'serve_deployment_replica_healthy'; serve_dashboard_panels.py"),
    "ray_serve_autoscaling_target_replicas": (
        {"deployment", "application"},
        "ray/serve/_private/deployment_state.py: Gauge 'serve_autoscaling_target_replicas'"),
    "ray_serve_deployment_queued_queries": (
        {"deployment", "application", "handle", "actor_id"},
        "ray/serve/_private/router.py: Gauge 'serve_deployment_queued_queries'; serve_dashboard_panels.py"),
    "ray_serve_num_ongoing_requests_at_replicas": (
        {"deployment", "application", "handle", "actor_id"},
        "ray/serve/_private/router.py: Gauge 'serve_num_ongoing_requests_at_replicas'"),
    "ray_serve_deployment_processing_latency_ms_bucket": (
        {"route", "le"} | SERVE_TAGS,
        "ray/serve/_private/replica.py: Histogram 'serve_deployment_processing_latency_ms'; serve_dashboard_panels.py"),
    "ray_node_cpu_utilization": (
        {"ip", "Version", "SessionName", "IsHeadNode", "RayNodeType"},
        "ray/dashboard/modules/reporter/reporter_agent.py: Gauge 'node_cpu_utilization' (percent, NODE_TAG_KEYS); "
        "default_dashboard_panels.py"),
    "ray_node_gpus_utilization": (
        {"ip", "Version", "SessionName", "IsHeadNode", "RayNodeType", "GpuDeviceName", "GpuIndex", "GpuUuid"},
        "ray/dashboard/modules/reporter/reporter_agent.py: Gauge 'node_gpus_utilization' (percent, GPU_TAG_KEYS); "
        "default_dashboard_panels.py"),
}
# on every series: Prometheus target labels and the labels Ray 2.60 attaches to all metrics (seen on
# its metrics endpoint; WorkerId only with RAY_metric_cardinality_level=legacy)
COMMON_LABELS = {"instance", "job", "SessionName", "Version", "Component", "NodeAddress", "WorkerId", "JobId",
                 "otel_scope_name", "otel_scope_schema_url", "otel_scope_version"}


def _our_metrics() -> dict[str, set[str]]:
    """Exported name -> labels, for every catalog metric (histograms as their three series)."""
    out: dict[str, set[str]] = {}
    for name, (kind, _desc, tags, _buckets) in CATALOG.items():
        labels = set(tags) | SERVE_TAGS
        if kind == "histogram":
            out[exported_name(name) + "_bucket"] = labels | {"le"}
            out[exported_name(name) + "_sum"] = labels
            out[exported_name(name) + "_count"] = labels
        else:
            out[exported_name(name)] = labels
    return out


OUR_METRICS = _our_metrics()
KNOWN_METRICS = {**OUR_METRICS, **{name: labels for name, (labels, _src) in RAY_METRICS.items()}}

# ----------------------------------------------------------------------------------- a PromQL lexer
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![\w.]))
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<var>\$\{?\w+\}?)
  | (?P<ident>[a-zA-Z_][\w:]*|:[a-zA-Z_][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>,(){}\[\]:@])
""", re.VERBOSE)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "sum", "min", "max", "avg", "group",
            "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}


def lex(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot lex {expr[pos:pos + 30]!r} in {expr!r}"
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
        pos = m.end()
    return tokens


def parse(expr: str) -> dict:
    """Vector selectors (name, [(label, op, value)]), grouping labels and variables of a PromQL expression."""
    toks, out = lex(expr), {"selectors": [], "grouping": set(), "vars": [], "bare": 0}
    i, depth_sq = 0, 0
    while i < len(toks):
        kind, val = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else (None, None)
        if kind == "op" and val == "[":
            depth_sq += 1
        elif kind == "op" and val == "]":
            depth_sq -= 1
        elif kind == "var":
            out["vars"].append(val)
        elif kind == "op" and val == "{":
            out["bare"] += 1  # a selector without a metric name
        elif kind == "ident" and not depth_sq:
            if val in GROUPING:
                if nxt == ("op", "("):
                    i += 2
                    while toks[i] != ("op", ")"):
                        if toks[i][0] == "ident":
                            out["grouping"].add(toks[i][1])
                        i += 1
            elif val.lower() in KEYWORDS or nxt == ("op", "("):
                pass  # operator, aggregation or function
            else:
                matchers = []
                if nxt == ("op", "{"):
                    i += 2
                    while toks[i] != ("op", "}"):
                        if toks[i] == ("op", ","):
                            i += 1
                            continue
                        (lk, label), (_, op), (vk, value) = toks[i], toks[i + 1], toks[i + 2]
                        assert lk == "ident" and vk == "string", f"bad matcher in {expr!r}"
                        matchers.append((label, op, value[1:-1]))
                        i += 3
                out["selectors"].append((val, matchers))
        i += 1
    return out


def test_the_promql_lexer_finds_metrics_and_ignores_functions_labels_and_durations():
    p = parse('histogram_quantile(0.95, sum by (stage, le) (rate(a_bucket{stage=~"x|y",le!="1.0"}[5m])))'
              ' / ignoring(intent) group_left sum(rate(b_total[1h] offset 5m)) or vector(0) > bool 1e3'
              ' and on() c:rec:rate5m')
    assert [s[0] for s in p["selectors"]] == ["a_bucket", "b_total", "c:rec:rate5m"]
    assert p["selectors"][0][1] == [("stage", "=~", "x|y"), ("le", "!=", "1.0")]
    assert p["grouping"] == {"stage", "le", "intent"}
    assert parse("rate(x[$__rate_interval])")["vars"] == ["$__rate_interval"]


# --------------------------------------------------------------------------------------- dashboards
@pytest.fixture(scope="module")
def grafana_validator():
    schema = json.loads(GRAFANA_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)  # the schema's own $schema: draft-07
    assert cls is jsonschema.Draft7Validator
    cls.check_schema(schema)
    refs = set(re.findall(r'"\$ref":\s*"([^"]+)"', GRAFANA_SCHEMA.read_text()))
    assert refs and all(r.startswith("#/definitions/") for r in refs), "only local $refs resolve offline"
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def test_the_schema_validator_follows_refs(grafana_validator):
    broken = {"schemaVersion": 39, "panels": [{"type": "timeseries", "gridPos": {"x": 0, "y": 0, "w": 12}}]}
    assert not grafana_validator.is_valid(broken)  # gridPos.h is required by #/definitions/GridPos
    assert not grafana_validator.is_valid({"schemaVersion": 39, "panels": [{"type": "timeseries", "bogus": 1}]})


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_dashboard_validates_against_the_grafana_schema(grafana_validator, name):
    errors = [f"{e.json_path}: {e.message[:200]}" for e in grafana_validator.iter_errors(load(name))]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_dashboard_metadata_and_datasource_variable(name):
    d = load(name)
    assert 8 <= len(d["uid"]) <= 40 and d["title"] and "mangaassist" in d["tags"]
    assert d["schemaVersion"] >= 39 and d["refresh"] and d["time"]["from"] and d["time"]["to"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"


def test_dashboard_uids_are_unique():
    uids = [load(n)["uid"] for n in DASHBOARD_NAMES]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_panel_has_description_unit_and_targets_on_the_datasource_variable(name):
    ps = panels(load(name))
    assert ps
    ids = [p["id"] for p in ps]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for p in ps:
        where = f"{name}: panel {p.get('title')!r}"
        assert p.get("title") and p.get("description", "").strip(), f"{where}: title and description"
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: fieldConfig.defaults.unit"
        assert p.get("datasource") == DATASOURCE, f"{where}: panel datasource must be ${{datasource}}"
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{where}: wider than the grid"
        assert p.get("targets"), f"{where}: no targets"
        ref_ids = [t.get("refId") for t in p["targets"]]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), f"{where}: refIds"
        for t in p["targets"]:
            assert t.get("datasource") == DATASOURCE, f"{where} {t['refId']}: target datasource"
            assert t.get("expr", "").strip() and "legendFormat" in t and t["legendFormat"], f"{where} {t['refId']}"


def _dashboard_exprs():
    for name in DASHBOARD_NAMES:
        for p in panels(load(name)):
            for t in p["targets"]:
                yield f"{name}/{p['title']}/{t['refId']}", t["expr"], t["legendFormat"]


def _check_expr(where: str, expr: str, extra_names: set[str] = frozenset()) -> list[str]:
    """Problems with the metric and label names of one PromQL expression."""
    problems = []
    parsed = parse(expr)
    if parsed["bare"]:
        problems.append(f"{where}: selector without a metric name")
    labels_here = set(COMMON_LABELS)
    for metric, matchers in parsed["selectors"]:
        if metric in extra_names:
            continue
        if metric not in KNOWN_METRICS:
            problems.append(f"{where}: unknown metric {metric!r}")
            continue
        allowed = KNOWN_METRICS[metric] | COMMON_LABELS
        labels_here |= allowed
        for label, op, value in matchers:
            if label not in allowed:
                problems.append(f"{where}: {metric} has no label {label!r}")
            if label == "le" and op == "=" and metric in OUR_METRICS:
                buckets = CATALOG[metric.removeprefix("ray_").removesuffix("_bucket")][3]
                if value != "+Inf" and float(value) not in buckets:
                    problems.append(f"{where}: {metric} has no bucket le={value!r}")
    if not extra_names:
        for label in parsed["grouping"] - labels_here:
            problems.append(f"{where}: grouping label {label!r} is on none of its metrics")
    return problems


def test_dashboard_queries_use_only_known_metrics_and_labels():
    problems = []
    for where, expr, legend in _dashboard_exprs():
        parsed = parse(expr)
        assert parsed["selectors"], f"{where}: no metric in {expr!r}"
        # no Grafana variables in queries: every query runs verbatim against Prometheus
        assert not parsed["vars"], f"{where}: uses {parsed['vars']}"
        problems += _check_expr(where, expr)
        kept = parsed["grouping"] | {lbl for _m, ms in parsed["selectors"] for lbl, _o, _v in ms}
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if label not in kept | COMMON_LABELS | {"le"}:
                problems.append(f"{where}: legend label {label!r} is not kept by the query")
    assert not problems, "\n".join(problems)


def test_every_catalog_metric_is_on_a_dashboard():
    used = {m for _w, expr, _l in _dashboard_exprs() for m, _ in parse(expr)["selectors"]}
    missing = [n for n in CATALOG if not any(u == exported_name(n) or u.startswith(exported_name(n) + "_")
                                             for u in used)]
    assert not missing, f"catalog metrics on no dashboard: {missing}"


def test_the_capacity_dashboard_uses_ray_serve_metrics():
    used = {m for p in panels(load("models")) for t in p["targets"] for m, _ in parse(t["expr"])["selectors"]}
    for name in ("ray_serve_deployment_replica_healthy", "ray_serve_autoscaling_target_replicas",
                 "ray_serve_deployment_queued_queries", "ray_serve_num_http_error_requests_total",
                 "ray_node_cpu_utilization", "ray_node_gpus_utilization"):
        assert name in used, name


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_HINT)
    return path


def run_promtool(*args: str, cwd: Path) -> None:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def test_every_dashboard_query_parses(tmp_path):
    rules = [{"record": f"dashboard_query_{i}", "expr": expr} for i, (_w, expr, _l) in enumerate(_dashboard_exprs())]
    (tmp_path / "dashboards.rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run_promtool("check", "rules", "dashboards.rules.yaml", cwd=tmp_path)


# ------------------------------------------------------------------------------------------ alerts
REQUIRED_ALERTS = {
    "MangaAssistHighErrorRatio", "MangaAssistLatencySLOBurnRateFast", "MangaAssistLatencySLOBurnRateSlow",
    "MangaAssistBackpressureRejections", "MangaAssistBedrockThrottling", "MangaAssistBedrockBreakerOpen",
    "MangaAssistDegradedAnswersHigh", "MangaAssistDriftDetected", "MangaAssistReplicasUnhealthy",
}


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    run_promtool("check", "rules", RULES.name, cwd=ALERTS)


def test_promtool_test_rules():
    run_promtool("test", "rules", RULE_TESTS.name, cwd=ALERTS)


def test_every_required_alert_exists_with_severity_summary_description_and_runbook():
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert REQUIRED_ALERTS <= set(alerts), REQUIRED_ALERTS - set(alerts)
    for name, r in alerts.items():
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, name
        for key in ("summary", "description", "runbook"):
            assert r["annotations"].get(key, "").strip(), f"{name}: annotation {key}"
        assert r.get("for"), f"{name}: no `for`"


def test_alert_rules_use_only_known_metrics_and_labels():
    recorded = {r["record"] for r in rules() if "record" in r}
    problems = []
    for r in rules():
        where = r.get("alert") or r.get("record")
        problems += _check_expr(where, r["expr"], extra_names=recorded)
        problems += [f"{where}: unknown metric {m!r}" for m, _ in parse(r["expr"])["selectors"]
                     if m not in KNOWN_METRICS and m not in recorded]
    assert not problems, "\n".join(sorted(set(problems)))


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires, quiet = set(), set()
    problems = []
    for t in tests:
        for series in t["input_series"]:
            problems += _check_expr(f"{t['name']}: {series['series']}", series["series"])
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
            for exp in case.get("exp_alerts") or []:
                assert exp.get("exp_labels", {}).get("severity") and exp.get("exp_annotations"), case["alertname"]
    assert not problems, "\n".join(problems)
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts <= fires, f"never seen firing: {alerts - fires}"
    assert alerts <= quiet, f"never seen quiet: {alerts - quiet}"
