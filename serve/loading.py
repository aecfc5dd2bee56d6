"""Shared by the model deployments: load a verified registry version with the configured runtime.

A model ref is a registry name (`intent`), `name:version`, a path to a version folder, or an
`s3://bucket/prefix/<name>/<version>` URI: a version folder uploaded as the registry lays it out
(`aws s3 sync ~/.cache/mangaassist/registry/intent/v-... s3://bucket/models/intent/v-...`). An S3
version is downloaded at replica start into the model cache (MANGAASSIST_MODEL_CACHE) and served
only once every file matches its manifest's sha256.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from functools import partial
from pathlib import Path, PurePosixPath

from models.paths import home
from models.registry import MANIFEST, Registry, RegistryError
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


def model_cache_dir() -> Path:
    """Where S3 model versions are downloaded (a registry layout; an emptyDir on Kubernetes)."""
    return Path(os.environ.get("MANGAASSIST_MODEL_CACHE", home() / "model-cache")).expanduser()


def s3_client():
    """S3 client with adaptive retries; credentials from boto3's default chain (IRSA on EKS)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "adaptive", "total_max_attempts": 5}, connect_timeout=5, read_timeout=60)
    return boto3.session.Session().client("s3", config=config)


def s3_parts(uri: str) -> tuple[str, tuple[str, ...]]:
    """`s3://bucket/prefix/<name>/<version>` -> (bucket, key parts ending in name, version)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    parts = PurePosixPath(prefix).parts
    if not bucket or len(parts) < 2:
        raise RegistryError(f"{uri!r}: expected s3://bucket/[prefix/]<name>/<version>")
    return bucket, parts


def fetch_s3_version(uri: str, cache: Path | None = None, client=None) -> Path:
    """Download `s3://bucket/prefix/<name>/<version>` into `<cache>/<name>/<version>` and return it
    verified against its manifest. An intact cached copy is used as is; a damaged one is replaced."""
    bucket, parts = s3_parts(uri)
    name, version = parts[-2:]
    registry = Registry(cache or model_cache_dir())
    target = registry.root / name / version
    if target.exists():
        try:
            return registry.verify(name, version)
        except RegistryError:
            shutil.rmtree(target)  # half-written or altered: fetch it again
    client = client or s3_client()
    staged = registry.staging(name)  # same filesystem as target: the rename below is atomic
    try:
        keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="/".join(parts) + "/") for obj in page.get("Contents", [])]
        if not keys:
            raise RegistryError(f"{uri}: no objects under this prefix")
        for key in (k for k in keys if not k.endswith("/")):  # skip folder markers
            rel = PurePosixPath(key).relative_to(*parts)
            if ".." in rel.parts:
                raise RegistryError(f"{uri}: refusing key {key!r} (outside the version folder)")
            path = staged.joinpath(*rel.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with open(path, "wb") as fh:
                for chunk in body.iter_chunks(1 << 20):
                    fh.write(chunk)
        try:
            staged.rename(target)
        except OSError:  # another replica on this pod finished first: keep its copy if it is intact
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    try:
        return registry.verify(name, version)
    except RegistryError:
        shutil.rmtree(target, ignore_errors=True)  # never leave an unverified copy to be found later
        raise


def model_version(ref: str) -> str:
    """The version a ref names, from its URI or manifest: nothing downloaded, nothing hashed."""
    if ref.startswith("s3://"):
        return s3_parts(ref)[1][-1]
    if Path(ref).is_dir() and (Path(ref) / MANIFEST).exists():
        return json.loads((Path(ref) / MANIFEST).read_text())["version"]
    name, _, version = ref.partition(":")
    return Registry().manifest(name, version or None)["version"]


def resolve_model(ref: str) -> Path:
    """A verified version folder for any model ref (registry name, name:version, folder, s3:// URI)."""
    if ref.startswith("s3://"):
        return fetch_s3_version(ref)
    return Registry().resolve(ref)


def load_model(spec: ModelSpec) -> tuple[TextModel, dict]:
    """The model plus what /readyz reports about it."""
    folder = resolve_model(spec.ref)  # verifies every checksum: a tampered model never serves
    threads = spec.threads or replica_threads()
    model = TextModel(folder, spec.runtime, spec.precision, threads, spec.device)
    model.max_length = spec.max_length or model.max_length
    info = {"model": folder.parent.name, "version": folder.name, "runtime": spec.runtime,
            "precision": model.precision, "providers": model.providers, "threads": threads,
            "max_length": model.max_length}
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
    from monitoring.metrics import set_gauge

    set_gauge("mangaassist_model_info", 1, tags={
        "model": str(info["model"]), "version": str(info["version"]),
        "runtime": str(info["runtime"]), "precision": str(info.get("precision", "n/a"))})
