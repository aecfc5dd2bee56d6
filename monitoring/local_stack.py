"""A local Prometheus + Alertmanager (Debian packages) scraping the running app: `make monitor`, and
the system tests.

Prometheus finds Ray's metrics agent through a file service-discovery target list in Ray's own
format (`prom_metrics_service_discovery.json`, which Ray writes only when its dashboard runs; ours
runs without one, so we write it), loads `monitoring/alerts/*.rules.yaml` and sends alerts to the
Alertmanager, which forwards them to an optional webhook.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parent
RULES = sorted((MONITORING / "alerts").glob("*.rules.yaml"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_service_discovery(path: Path, metrics_ports: list[int]) -> Path:
    path.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{p}" for p in metrics_ports]}]))
    return path


def prometheus_config(discovery: Path, alertmanager_port: int, rules: list[Path], interval: str = "5s") -> dict:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(r) for r in rules],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [str(discovery)]}]}],
    }


def alertmanager_config(webhook_url: str | None) -> dict:
    receiver = {"name": "default"}
    if webhook_url:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    return {"route": {"receiver": "default", "group_by": ["alertname"], "group_wait": "1s",
                      "group_interval": "5s", "repeat_interval": "1h"},
            "receivers": [receiver]}


def _wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


@dataclass
class LocalStack:
    """Prometheus and Alertmanager on 127.0.0.1 in `folder`; use as a context manager."""

    folder: Path
    metrics_ports: list[int]
    webhook_url: str | None = None
    rules: list[Path] = field(default_factory=lambda: list(RULES))
    interval: str = "5s"
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def start(self) -> "LocalStack":
        alertmanager = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")  # Debian's name
        if not (shutil.which("prometheus") and alertmanager):
            raise RuntimeError("prometheus and alertmanager are not installed: `make monitor` installs the Debian packages")
        self.folder.mkdir(parents=True, exist_ok=True)
        discovery = write_service_discovery(self.folder / "prom_metrics_service_discovery.json", self.metrics_ports)
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(
            prometheus_config(discovery, self.alertmanager_port, self.rules, self.interval)))
        (self.folder / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(self.webhook_url)))
        cluster_port = free_port()
        logs = open(self.folder / "stack.log", "ab")
        self.processes.append(subprocess.Popen(
            [alertmanager, f"--config.file={self.folder / 'alertmanager.yml'}",
             f"--storage.path={self.folder / 'alertmanager-data'}",
             f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
             f"--cluster.listen-address=127.0.0.1:{cluster_port}"], stdout=logs, stderr=logs))
        self.processes.append(subprocess.Popen(
            ["prometheus", f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}"], stdout=logs, stderr=logs))
        try:
            _wait_ready(self.alertmanager_url, self.processes[0], 30)
            _wait_ready(self.prometheus_url, self.processes[1], 30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict]:
        """An instant PromQL query; raises on a query error."""
        import httpx

        body = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if body["status"] != "success":
            raise ValueError(f"{expr}: {body.get('error')}")
        return body["data"]["result"]
