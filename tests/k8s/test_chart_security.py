"""Security of what the chart renders: the NetworkPolicy's openings, the restricted Pod Security
Standard on every Ray pod and container (the autoscaler sidecar included), no exposed Ray ports."""
from __future__ import annotations

import pytest

from k8s_chart import SCENARIOS, one, ray_pod_templates, rendered, serve_config

RAY_INTERNAL_PORTS = {8265, 6379, 10001}  # dashboard, GCS, Ray client


def ports(rule: dict) -> set:
    return {p["port"] for p in rule.get("ports", [])}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_network_policy_opens_only_the_serve_port_to_the_outside(scenario):
    objects = rendered(scenario)
    policy = one(objects, "NetworkPolicy")["spec"]
    release = {"app.kubernetes.io/name": "mangaassist", "app.kubernetes.io/instance": "mangaassist"}
    assert policy["podSelector"] == {"matchLabels": release} and policy["policyTypes"] == ["Ingress"]
    # every pod of the RayService is selected by the policy (the labels KubeRay copies onto the pods)
    for pod in ray_pod_templates(objects).values():
        assert release.items() <= pod["metadata"]["labels"].items()
    open_ports: dict[int, list] = {}
    for rule in policy["ingress"]:
        sources = rule.get("from")
        if sources == [{"podSelector": {"matchLabels": release}}]:
            assert "ports" not in rule  # inside the release: Ray's own traffic on any port
            continue
        assert ports(rule), f"a rule opening every port to {sources}"
        for port in ports(rule):
            open_ports.setdefault(port, []).append(sources)
    # the serve port from anywhere (or the configured sources); Ray's ports only to the operator
    assert 8000 in open_ports
    assert set(open_ports) - {8000} <= {8265, 8080}
    for sources in open_ports[8265]:
        (peer,) = sources
        assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}
    for sources in open_ports.get(8080, []):
        (peer,) = sources
        assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert not RAY_INTERNAL_PORTS - {8265} & set(open_ports)


def test_production_narrows_the_serve_port_to_the_ingress_controller():
    policy = one(rendered("production"), "NetworkPolicy")["spec"]
    public = [r for r in policy["ingress"] if ports(r) == {8000}]
    assert public == [{"ports": [{"port": 8000, "protocol": "TCP"}],
                       "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}]


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_no_service_or_ingress_exposes_ray_internals(scenario):
    for obj in rendered(scenario):
        assert obj["kind"] not in {"Ingress", "Route", "Gateway", "HTTPRoute"}
        if obj["kind"] == "Service":
            assert not RAY_INTERNAL_PORTS & {p["port"] for p in obj["spec"]["ports"]}
    cluster = one(rendered(scenario), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert not cluster["headGroupSpec"].get("enableIngress")


def restricted_container(ctx: dict) -> None:
    """Restricted Pod Security Standard, container level."""
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx.get("privileged") in (None, False)
    assert ctx["runAsNonRoot"] is True


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_meet_the_restricted_pod_security_standard(scenario):
    objects = rendered(scenario)
    for name, pod in ray_pod_templates(objects).items():
        spec = pod["spec"]
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000 and sc["runAsUser"] != 0, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys(), name
        for volume in spec["volumes"]:  # restricted allows no hostPath
            assert "hostPath" not in volume, name
        for container in spec["containers"]:
            restricted_container(container["securityContext"])
            assert all("hostPort" not in p for p in container["ports"]), name
    autoscaler = one(objects, "RayService")["spec"]["rayClusterConfig"]["autoscalerOptions"]
    restricted_container(autoscaler["securityContext"])  # KubeRay's sidecar in the head pod


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_only_the_head_mounts_a_kubernetes_api_token(scenario):
    objects = rendered(scenario)
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    for name, pod in ray_pod_templates(objects).items():
        assert pod["spec"]["automountServiceAccountToken"] is (name == "head"), name  # the autoscaler needs it


def test_registry_volume_is_read_only():
    for pod in ray_pod_templates(rendered("cpu-only")).values():
        (container,) = pod["spec"]["containers"]
        store = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
        assert store["readOnly"] is True
        claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "model-store")["persistentVolumeClaim"]
        assert claim == {"claimName": "mangaassist-home", "readOnly": True}


# --- overload, shutdown and API keys in the rendered Serve config --------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_deployment_sheds_load_and_drains_on_shutdown(scenario):
    """Bounded queues everywhere (an overload is a quick 503 with Retry-After, never an unbounded
    queue), and replicas finish in-flight requests before they stop (rolling updates, scale-down)."""
    config = serve_config(rendered(scenario))
    request_timeout = config["http_options"]["request_timeout_s"]
    (app,) = config["applications"]
    deadline = app["args"].get("timeouts", {}).get("request", 15.0)
    assert 0 < deadline < request_timeout  # the app's deadline answers first, in its error JSON
    for deployment in app["deployments"]:
        name = deployment["name"]
        assert deployment["max_queued_requests"] > 0 and deployment["max_ongoing_requests"] > 0, name
        assert deployment["graceful_shutdown_timeout_s"] >= 10, name
        assert deployment["max_surge_percent"] > 0, name  # replacements start before old replicas stop
    gateway = next(d for d in app["deployments"] if d["name"] == "Gateway")
    assert gateway["backpressure_config"]["retry_after_s"] >= 1
    assert gateway["graceful_shutdown_timeout_s"] > deadline  # a request in flight can finish


def test_api_keys_are_digests_from_a_secret_never_rendered():
    objects = rendered(sets=("serve.args.auth.enabled=true", "secrets.apiKeys.existingSecret=mangaassist-api-keys"))
    auth = serve_config(objects)["applications"][0]["args"]["auth"]
    assert auth["enabled"] is True and auth.get("key_hashes", []) == []
    for pod in ray_pod_templates(objects).values():
        (container,) = pod["spec"]["containers"]
        assert {"secretRef": {"name": "mangaassist-api-keys"}} in container["envFrom"]
    assert not [o for o in objects if o["kind"] == "Secret"]  # the chart never renders one itself
