"""The systems under test, started and stopped by the benchmarks: ours (the MangaAssist Ray Serve
application from a Serve config file) and the naive baseline (benchmarks/baseline_app.py)."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from serve.cli import CONFIG

from monitoring.local_stack import free_port

from .loadgen import wait_port


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@contextmanager
def ours(config: Path = Path(CONFIG), args: dict | None = None, deployments: dict | None = None):
    """Private Ray + the app; yields (base URL, seconds from ray.init to /readyz green)."""
    import ray
    from ray import serve

    from serve.cli import deploy, load_config, start_ray, wait_ready

    cfg = load_config(config)
    cfg.http_options.port = free_port()
    app = cfg.applications[0]
    app.args = merge(app.args or {}, args or {})
    for d in app.deployments:
        for k, v in (deployments or {}).get(d.name, {}).items():
            setattr(d, k, merge(getattr(d, k), v) if isinstance(v, dict) else v)
    t0 = time.perf_counter()
    start_ray(metrics_port=free_port())
    try:
        url = deploy(cfg)
        wait_ready(url, 600)
        yield url, time.perf_counter() - t0
    finally:
        serve.shutdown()
        ray.shutdown()


@contextmanager
def baseline(rerank_max_length: int | None):
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.baseline_app", "--port", str(port)]
    if rerank_max_length:
        cmd += ["--rerank-max-length", str(rerank_max_length)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parent.parent, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        wait_port(port, 180)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
