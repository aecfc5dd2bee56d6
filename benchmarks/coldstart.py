"""Cold start: `mangaassist serve` (what `make run` runs) from process start to the first answer.

    python -m benchmarks.coldstart [--runs 3]             # restart: models and indexes already built
    python -m benchmarks.coldstart --clone                # fresh clone: git clone + make run, empty
                                                          # MANGAASSIST_HOME (venv, models, indexes)
The restart figure is the one a crashed or rescheduled pod pays; the fresh-clone figure is a
newcomer's first `make run`.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from serve.cli import CONFIG

from monitoring.local_stack import free_port

from .report import machine, save_result

ROOT = Path(__file__).resolve().parent.parent


def first_answer(cmd: list[str], cwd: Path, env: dict, port: int, timeout: float) -> dict:
    """Seconds from launching `cmd` to /readyz green and to the first /v1/chat answer; then SIGINT."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ready = answer = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while time.perf_counter() - t0 < timeout and proc.poll() is None:
                try:
                    if ready is None and client.get("/readyz").status_code == 200:
                        ready = time.perf_counter() - t0
                    if ready is not None:
                        r = client.post("/v1/chat", json={"query": "dark fantasy manga like Berserk?"})
                        if r.status_code == 200:
                            answer = time.perf_counter() - t0
                            break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGINT)  # the CLI's clean shutdown of Serve and Ray
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"ready_s": round(ready, 1) if ready else None, "first_answer_s": round(answer, 1) if answer else None}


def config_on_port(port: int, metrics_port: int, folder: Path) -> Path:
    cfg = yaml.safe_load(Path(CONFIG).read_text())
    cfg["http_options"]["port"] = port
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def restart(runs: int) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            port, mport = free_port(), free_port()
            cmd = [str(Path(sys.executable).parent / "mangaassist"), "serve", "--config", str(config_on_port(port, mport, Path(tmp))),
                   "--metrics-port", str(mport)]
            out.append(first_answer(cmd, ROOT, {**os.environ}, port, 600))
    return out


def fresh_clone() -> dict:
    """git clone + `make run` with an empty MANGAASSIST_HOME (the port comes from the clone's config)."""
    with tempfile.TemporaryDirectory() as tmp:
        clone, home = Path(tmp) / "clone", Path(tmp) / "home"
        t0 = time.perf_counter()
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        port = yaml.safe_load((clone / "serve/config/local.yaml").read_text())["http_options"]["port"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        result = first_answer(["make", "run"], clone, {**env, "MANGAASSIST_HOME": str(home)}, port, 3600)
        result["clone_s"] = round(time.perf_counter() - t0, 1)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clone", action="store_true", help="also time a fresh clone's first `make run` (~20 min)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    result = {"machine": machine(), "restart": restart(args.runs)}
    if args.clone:
        result["fresh_clone"] = fresh_clone()
    save_result(args.out, "coldstart", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
