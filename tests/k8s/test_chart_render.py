"""The chart renders, for every ci/ scenario, objects an API server would accept, and a Serve config
that Ray and the app accept; the GPU, monitoring and production scenarios carry what they promise."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from k8s_chart import (CHART, CRDS, ROOT, SCENARIOS, crd_schema, one, ray_pod_templates, rendered, run_helm,
                      serve_config)
from serve.config import AppArgs

K8S_VERSION = "1.35"  # the kubectl/helm client line `make helm` installs (KubeClientVersion v1.35)
DEPLOYMENTS = ["Gateway", "IntentClassifier", "Embedder", "Retriever", "Reranker", "Generator", "DriftMonitor"]


def test_scenarios_are_the_promised_ones():
    assert SCENARIOS == ["cpu-only", "gpu", "monitoring-off", "production"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario):
    done = run_helm("lint", "--strict", str(CHART), "-f", str(CHART / "ci" / f"{scenario}-values.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_every_object_validates_against_its_schema(scenario):
    objects = rendered(scenario)
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        key = (obj["apiVersion"], obj["kind"])
        if key in CRDS:  # kubernetes-validate only warns on custom resources
            errors = sorted(jsonschema.Draft202012Validator(crd_schema(*key)).iter_errors(obj), key=str)
            assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {e.message} at {list(e.path)}")


def test_crd_validation_catches_mistakes():
    """The CRD check is strict like the API server: unknown fields and wrong types fail."""
    service = json.loads(json.dumps(one(rendered("gpu"), "RayService")))
    schema = crd_schema("ray.io/v1", "RayService")
    jsonschema.validate(service, schema)
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicaz"] = 1
    with pytest.raises(jsonschema.ValidationError, match="replicaz"):
        jsonschema.validate(service, schema)
    del service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicaz"]
    service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(service, schema)


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_serve_config_is_valid_for_ray_and_the_app(scenario):
    config = serve_config(rendered(scenario))
    ServeDeploySchema.model_validate(config)  # what KubeRay submits to the Serve REST API
    (app,) = config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    AppArgs.model_validate(app["args"])  # what build_app will parse
    assert [d["name"] for d in app["deployments"]] == DEPLOYMENTS
    local = yaml.safe_load((ROOT / "serve" / "config" / "local.yaml").read_text())["applications"][0]
    assert (app["import_path"], app["route_prefix"]) == (local["import_path"], local["route_prefix"])
    assert {d["name"] for d in local["deployments"]} <= set(DEPLOYMENTS)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000, "request_timeout_s": 30}
    for deployment in app["deployments"]:
        assert {"max_ongoing_requests", "max_queued_requests", "ray_actor_options"} <= deployment.keys()
        assert ("num_replicas" in deployment) != ("autoscaling_config" in deployment)


def test_the_chart_configures_every_deployment_the_app_builds():
    from ray.serve import Deployment

    built = {o.name for o in vars(importlib.import_module("serve.app")).values() if isinstance(o, Deployment)}
    assert built == set(DEPLOYMENTS)
    # without drift monitoring build_app has no DriftMonitor, and Ray refuses settings for it
    app = serve_config(rendered(None, ("serve.args.drift.enabled=false",)))["applications"][0]
    assert [d["name"] for d in app["deployments"]] == DEPLOYMENTS[:-1]
    assert AppArgs.model_validate(app["args"]).drift.enabled is False


def test_values_reach_the_serve_config():
    config = serve_config(rendered(None, ("serve.deployments.Reranker.max_queued_requests=7",
                                          "serve.args.retrieve_k=12")))
    app = config["applications"][0]
    assert next(d for d in app["deployments"] if d["name"] == "Reranker")["max_queued_requests"] == 7
    assert app["args"]["retrieve_k"] == 12


def gpus(pod: dict) -> int:
    (container,) = pod["spec"]["containers"]
    return int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_only_the_gpu_scenario_asks_for_gpus_and_only_for_classifier_and_reranker(scenario):
    objects = rendered(scenario)
    app = serve_config(objects)["applications"][0]
    with_gpu = {d["name"] for d in app["deployments"] if d["ray_actor_options"].get("num_gpus", 0) > 0}
    pods = ray_pod_templates(objects)
    if scenario != "gpu":
        assert not with_gpu and "worker-gpu" not in pods
        assert all(gpus(p) == 0 for p in pods.values())
        return
    assert with_gpu == {"IntentClassifier", "Reranker"}
    assert app["args"]["intent"]["device"] == app["args"]["reranker"]["device"] == "cuda"
    assert app["args"]["embedder"]["device"] == "cpu"
    gpu_pod = pods["worker-gpu"]
    assert gpus(gpu_pod) == 1
    assert gpu_pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["spec"]["tolerations"]
    assert gpus(pods["head"]) == gpus(pods["worker-cpu"]) == 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ray_cluster_shape(scenario):
    objects = rendered(scenario)
    spec = one(objects, "RayService")["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for name, pod in ray_pod_templates(objects).items():
        (container,) = pod["spec"]["containers"]
        shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"], name
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"], name
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
        # KubeRay injects its own probes (raylet/GCS, and the Serve proxy on workers) only where none are set
        assert not {"readinessProbe", "livenessProbe", "startupProbe"} & container.keys(), name
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == 8080, name


def test_incremental_upgrade_needs_its_options():
    done = run_helm("template", "x", str(CHART), "--set", "rayService.upgradeStrategy=NewClusterWithIncrementalUpgrade")
    assert done.returncode != 0  # values.schema.json: the options KubeRay requires for it
    assert "/rayService/clusterUpgradeOptions" in done.stderr and "gatewayClassName" in done.stderr
    service = one(rendered(None, ("rayService.upgradeStrategy=NewClusterWithIncrementalUpgrade",
                                  "rayService.clusterUpgradeOptions.gatewayClassName=istio",
                                  "rayService.clusterUpgradeOptions.stepSizePercent=10",
                                  "rayService.clusterUpgradeOptions.intervalSeconds=30")), "RayService")
    assert service["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]["stepSizePercent"] == 10
    jsonschema.validate(service, crd_schema("ray.io/v1", "RayService"))


def test_monitoring_objects_carry_the_monitoring_files_as_they_are():
    objects = rendered("cpu-only")
    dashboards = {o["metadata"]["name"]: o for o in objects
                  if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"}
    files = sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))
    assert len(dashboards) == len(files) == 3
    for path in files:
        cm = dashboards[f"mangaassist-dashboard-{path.stem}"]
        assert cm["data"] == {path.name: path.read_text()}  # byte for byte
    rule = one(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((ROOT / "monitoring" / "alerts" / "mangaassist.rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodMonitor"}
    assert sorted(monitors) == ["mangaassist-ray-head", "mangaassist-ray-worker"]
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
        node_type = monitor["spec"]["selector"]["matchLabels"]["ray.io/node-type"]
        assert name.endswith(node_type) and monitor["spec"]["namespaceSelector"] == {"matchNames": ["mangaassist"]}


def test_chart_files_are_links_to_the_monitoring_folder():
    """One source of truth: the chart reads monitoring/ through symlinks (helm follows them)."""
    for name in ("dashboards", "alerts"):
        link = CHART / "files" / name
        assert link.is_symlink() and link.resolve() == ROOT / "monitoring" / name


def test_monitoring_off_renders_no_monitoring_object():
    kinds = [o["kind"] for o in rendered("monitoring-off")]
    assert "PodMonitor" not in kinds and "PrometheusRule" not in kinds
    assert not [o for o in rendered("monitoring-off") if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    policy = one(rendered("monitoring-off"), "NetworkPolicy")
    assert 8080 not in {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}


def env_of(pod: dict) -> tuple[list, list]:
    (container,) = pod["spec"]["containers"]
    return container.get("env", []), container.get("envFrom", [])


def test_production_uses_irsa_s3_models_and_secret_refs():
    objects = rendered("production")
    account = one(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mangaassist-serve"}
    args = serve_config(objects)["applications"][0]["args"]
    assert args["intent"]["ref"].startswith("s3://") and args["reranker"]["ref"].startswith("s3://")
    assert (args["embedder_backend"], args["retriever_backend"], args["generator_backend"]) == ("bedrock", "opensearch", "bedrock")
    assert args["opensearch"]["auth"] == "sigv4"
    for pod in ray_pod_templates(objects).values():
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
        _, env_from = env_of(pod)
        assert {"secretRef": {"name": "mangaassist-api-keys"}} in env_from
    env = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mangaassist-env")["data"]
    assert env["AWS_REGION"] == "eu-west-1" and env["MANGAASSIST_MODEL_CACHE"] == "/home/ray/model-cache"


def test_opensearch_credentials_come_from_an_existing_secret_only():
    objects = rendered("production", ("secrets.opensearch.existingSecret=opensearch-creds",))
    for pod in ray_pod_templates(objects).values():
        env, _ = env_of(pod)
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env}
        assert refs == {"OPENSEARCH_USERNAME": {"name": "opensearch-creds", "key": "username"},
                        "OPENSEARCH_PASSWORD": {"name": "opensearch-creds", "key": "password"}}
    for scenario in [None, *SCENARIOS]:
        assert "Secret" not in {o["kind"] for o in rendered(scenario)}  # never inline, whatever the values


def test_serve_throughput_mode_without_direct_ingress_by_default():
    """Serve's throughput mode (cheaper hops) without its direct ingress, which would leave Serve's HTTP proxy on
    the head pod only; both can be set from values."""
    def env(*sets):
        objects = rendered("cpu-only", sets)
        return next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mangaassist-env")["data"]

    default = env()
    assert (default["RAY_SERVE_THROUGHPUT_OPTIMIZED"], default["RAY_SERVE_ENABLE_DIRECT_INGRESS"]) == ("1", "0")
    assert env("serve.throughputOptimized=false")["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
    assert env("env.RAY_SERVE_ENABLE_DIRECT_INGRESS=1")["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"  # once, from env


def test_env_changes_roll_the_pods_and_serve_changes_do_not():
    def checksum(objects):
        return {p["metadata"]["annotations"]["checksum/env"] for p in ray_pod_templates(objects).values()}

    base = checksum(rendered("cpu-only"))
    assert len(base) == 1
    assert checksum(rendered("cpu-only", ("env.LOG_LEVEL=debug",))) != base  # a new cluster: pods read env at start
    assert checksum(rendered("cpu-only", ("serve.args.retrieve_k=10",))) == base  # in-place Serve update


def test_notes_tell_how_to_reach_the_endpoint_and_dashboards():
    done = run_helm("install", "mangaassist", str(CHART), "--dry-run=client", "--namespace", "mangaassist",
                    "-f", str(CHART / "ci" / "gpu-values.yaml"))
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/mangaassist-serve-svc 8000:8000" in notes
    assert "/v1/chat" in notes and "grafana_dashboard" in notes and "8265" in notes
    assert "WARNING" not in notes
    done = run_helm("install", "x", str(CHART), "--dry-run=client")
    assert "WARNING: modelStore.existingClaim is empty" in done.stdout


def test_chart_package_includes_the_linked_files(tmp_path):
    done = run_helm("package", str(CHART), "-d", str(tmp_path))
    assert done.returncode == 0, done.stderr
    import tarfile

    (archive,) = tmp_path.glob("mangaassist-*.tgz")
    names = tarfile.open(archive).getnames()
    assert {"mangaassist/files/dashboards/overview.json", "mangaassist/files/alerts/mangaassist.rules.yaml"} <= set(names)
    assert not [n for n in names if n.endswith(".test.yaml") or n.endswith(".gotmpl")]


def test_chart_and_app_versions_match_the_project():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray["))
    assert ray_pin.endswith("==" + yaml.safe_load((CHART / "values.yaml").read_text())["rayVersion"])
    assert Path(CHART / "README.md").exists()
