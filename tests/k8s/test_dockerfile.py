"""The Dockerfile (no Docker engine here to build it): its base image is Ray's GPU image of the Ray and
Python versions pyproject.toml pins, it installs every project package, and it runs as non-root."""
from __future__ import annotations

import re
import tomllib

import yaml

from k8s_chart import CHART, ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)  # line continuations
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in instructions() if op == "ARG" and "=" in arg)


def test_base_image_is_the_ray_gpu_image_of_the_pinned_versions():
    ray_pin = next(d for d in PROJECT["project"]["dependencies"] if d.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    python = re.search(r">=(\d+)\.(\d+)", PROJECT["project"]["requires-python"]).groups()
    (base,) = [arg for op, arg in instructions() if op == "FROM"]
    for name, value in build_args().items():
        base = base.replace("${%s}" % name, value)
    assert base == f"rayproject/ray:{ray_version}-py{''.join(python)}-gpu"
    # the chart tells KubeRay the same Ray version
    assert yaml.safe_load((CHART / "values.yaml").read_text())["rayVersion"] == ray_version


def test_runs_as_a_numeric_non_root_user():
    users = [arg for op, arg in instructions() if op == "USER"]
    assert users, "no USER: the image would run as whatever the base sets"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets the kubelet check runAsNonRoot"
    assert gid.isdigit()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (values["runAsUser"], values["runAsGroup"]) == (int(uid), int(gid))
    # nothing after the last USER switches back to root
    ops = [op for op, _ in instructions()]
    assert "USER" not in ops[len(ops) - ops[::-1].index("USER"):]


def test_installs_the_project_with_every_package_and_no_secrets_or_local_state():
    copies = [arg.split() for op, arg in instructions() if op == "COPY"]
    sources = {src for parts in copies for src in parts[:-1] if not src.startswith("--")}
    packages = {p.rstrip("*") for p in PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", PROJECT["project"]["readme"]} <= sources
    for src in sources:
        assert (ROOT / src).exists(), src
    run = " ".join(arg for op, arg in instructions() if op == "RUN")
    assert "pip install --no-cache-dir /tmp/src" in run
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must be an allow-list (.venv, .git, .tools stay out)"
    assert {f"!{s}/" if (ROOT / s).is_dir() else f"!{s}" for s in sources} <= set(patterns)


def test_model_locations_match_the_chart():
    env = dict(re.findall(r"(MANGAASSIST_\w+)=(\S+)", DOCKERFILE))
    rendered_env = (CHART / "templates" / "_helpers.tpl").read_text()
    for name, value in env.items():
        assert f"{name}: {value}" in rendered_env
