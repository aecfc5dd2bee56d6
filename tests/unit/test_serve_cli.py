"""`mangaassist serve` stops Serve, then Ray, on SIGTERM as on Ctrl-C (ray.init installs a SIGTERM
handler of its own that kills Ray's processes at once: ours must be installed after it)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from serve import cli


# Run in a fresh interpreter: the test sends a real signal to its own process, and the pytest process
# has loaded torch, ONNX Runtime and OpenVINO thread pools by then (a SIGTERM there crashed the suite once).
SIGNAL_CHILD = """
import json, os, signal, sys, threading, types
import ray
from ray import serve
from serve import cli

sig = int(sys.argv[1])
calls = []

def fake_start_ray(*args):
    calls.append("ray.init")
    def rays_own(*_):  # what ray.init installs: kill Ray's processes, then exit
        calls.append("ray's own handler")
        raise SystemExit(1)
    signal.signal(signal.SIGTERM, rays_own)

cli.load_config = lambda path: object()
cli.start_ray = fake_start_ray
cli.deploy = lambda config: "http://127.0.0.1:1"
cli.wait_ready = lambda *a: threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()
serve.shutdown = lambda: calls.append("serve.shutdown")
ray.shutdown = lambda: calls.append("ray.shutdown")
args = types.SimpleNamespace(config="x.yaml", skip_build=True, num_cpus=None, metrics_port=0, ready_timeout=1)
try:
    assert cli.cmd_serve(args) == 0
except SystemExit:
    calls.append("exit")
print(json.dumps(calls))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_drains_serve_then_stops_ray_on_a_signal(sig):
    done = subprocess.run([sys.executable, "-c", SIGNAL_CHILD, str(int(sig))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["ray.init", "serve.shutdown", "ray.shutdown"]


def test_start_ray_defaults_to_serve_throughput_mode_without_direct_ingress(monkeypatch):
    import ray

    for name in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_DIRECT_INGRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ray, "init", lambda **options: None)
    cli.start_ray(metrics_port=0)
    assert (os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"], os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"]) == ("1", "0")
    monkeypatch.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")  # the environment's choice wins
    cli.start_ray(metrics_port=0)
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"


@pytest.mark.parametrize("argv,spec", [([], None), (["--index-kind", "ivfpq"], "ivfpq"), (["--index-kind", "hnsw"], "hnsw")])
def test_index_kind_is_only_imposed_when_asked(monkeypatch, argv, spec):
    """Without --index-kind the indexes on disk keep their kind (build_all builds hnsw where one is missing)."""
    import argparse

    from serve import drift_monitor, index

    calls = []
    monkeypatch.setattr(index, "build_all", lambda *a, **kw: calls.append(kw["spec"]))
    monkeypatch.setattr(drift_monitor, "build_reference", lambda args: None)
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["index", *argv])
    assert args.func(args) == 0
    assert [s and s.kind for s in calls] == [spec]


def test_wait_ready_fails_at_once_when_serve_gave_up_deploying(monkeypatch):
    """A replica constructor that keeps failing (here: no index for the embedder) ends the wait with Serve's
    reason instead of polling /readyz until the timeout."""
    import types

    import ray
    from ray import serve

    dep = lambda status, message: types.SimpleNamespace(status=status, message=message)  # noqa: E731
    apps = {"mangaassist": types.SimpleNamespace(
        status="DEPLOY_FAILED", message="Failed to update the deployments ['Retriever'].",
        deployments={"Gateway": dep("HEALTHY", ""),
                     "Retriever": dep("DEPLOY_FAILED", "Traceback ...\nRuntimeError: no catalog index: run `mangaassist index`\n")})}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(serve, "status", lambda: types.SimpleNamespace(applications=apps))
    with pytest.raises(RuntimeError, match=r"failed to deploy: mangaassist: .*\(Retriever: RuntimeError: no catalog index"):
        cli.wait_ready("http://127.0.0.1:9", 600)
    apps["mangaassist"].status = "DEPLOYING"  # still deploying: keep waiting (here until the short timeout)
    with pytest.raises(TimeoutError):
        cli.wait_ready("http://127.0.0.1:9", 0.5)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # no Ray connection here: /readyz alone
    assert cli.deploy_failure() is None
