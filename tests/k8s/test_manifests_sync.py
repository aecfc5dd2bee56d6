"""k8s/ holds the chart rendered for users without Helm: exactly what `k8s/render.py` renders now."""
from __future__ import annotations

import importlib.util

import yaml

from k8s_chart import ROOT, rendered

spec = importlib.util.spec_from_file_location("k8s_render", ROOT / "k8s" / "render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


def test_plain_manifests_equal_a_fresh_render():
    folders = sorted(p.name for p in (ROOT / "k8s").iterdir() if p.is_dir())
    assert folders == sorted(render.SCENARIOS)
    for scenario in render.SCENARIOS:
        fresh = render.render(scenario)
        on_disk = {p.name: p.read_text() for p in (ROOT / "k8s" / scenario).iterdir()}
        assert sorted(on_disk) == sorted(fresh), f"k8s/{scenario}: run .venv/bin/python k8s/render.py"
        for name, text in fresh.items():
            assert on_disk[name] == text, f"k8s/{scenario}/{name} is stale: run .venv/bin/python k8s/render.py"


def test_plain_manifests_hold_every_rendered_object():
    for scenario in render.SCENARIOS:
        objects = [d for p in sorted((ROOT / "k8s" / scenario).glob("*.yaml"))
                   for d in yaml.safe_load_all(p.read_text()) if d]
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
        assert sorted(objects, key=key) == sorted(rendered(scenario), key=key)
        # one namespace for everything that names one, the one the README tells to create
        assert {o["metadata"].get("namespace", render.NAMESPACE) for o in objects} == {render.NAMESPACE}


def test_readme_gives_the_prerequisites_as_install_steps():
    readme = (ROOT / "k8s" / "README.md").read_text()
    for step in ("kuberay-operator --version 1.7.0", "kube-prometheus-stack", "nvidia-device-plugin",
                 "kubectl apply -n mangaassist -f k8s/gpu/", "python k8s/render.py"):
        assert step in readme, step
