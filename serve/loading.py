"""Shared by the model deployments: load a verified registry version with the configured runtime."""
from __future__ import annotations

import asyncio
from functools import partial

from models.registry import Registry
from models.runtime import TextModel

from .config import Batching, ModelSpec


def replica_threads() -> int:
    """The replica's whole CPUs (from its `ray_actor_options`), at least one: one intra-op pool
    per process, never more threads than the cores the replica owns (DESIGN §4)."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # outside a Ray worker (unit tests)
        cpus = 1.0
    return max(1, int(cpus))


def load_model(spec: ModelSpec) -> tuple[TextModel, dict]:
    """The model plus what /readyz reports about it."""
    folder = Registry().resolve(spec.ref)  # verifies every checksum: a tampered model never serves
    threads = spec.threads or replica_threads()
    model = TextModel(folder, spec.runtime, spec.precision, threads, spec.device)
    info = {"model": folder.parent.name, "version": folder.name, "runtime": spec.runtime,
            "precision": model.precision, "providers": model.providers, "threads": threads}
    return model, info


def configure_batching(handler, batching: Batching) -> None:
    """`@serve.batch` takes constants; the documented setters apply the configured values."""
    handler.set_max_batch_size(batching.max_batch_size)
    handler.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)


async def off_loop(fn, *args, **kwargs):
    """Run inference off the event loop, so the replica keeps accepting requests into the next batch."""
    return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args, **kwargs))


def model_info_metric(info: dict) -> None:
    """`ray_mangaassist_model_info` = 1 for what this replica loaded (Ray adds the deployment tag)."""
    from monitoring.metrics import metric

    metric("mangaassist_model_info").set(1, tags={
        "model": str(info["model"]), "version": str(info["version"]),
        "runtime": str(info["runtime"]), "precision": str(info.get("precision", "n/a"))})
