"""Shared by the benchmarks: what machine ran them, and results saved with the command that made them."""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path


def machine() -> dict:
    flags = set()
    model = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import numpy
    import onnxruntime
    import ray
    import torch

    return {"cpu": model, "loadavg": os.getloadavg(), "cores": len(os.sched_getaffinity(0)), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "isa": sorted(f for f in flags if f.startswith(("avx512_vnni", "avx512_bf16", "amx", "avx512f", "avx_vnni"))),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "ray": ray.__version__, "numpy": numpy.__version__}}


def command() -> str:
    """How this run was started: `python -m benchmarks.x ...` as typed."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return shlex.join(["python", "-m", spec.name, *sys.argv[1:]] if spec else sys.argv)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def save_result(out: Path, name: str, result: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    stamped = {"benchmark": name, "command": command(), "commit": git_commit(),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_at_end": os.getloadavg(), **result}
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    print(f"wrote {path}")
    return path
