"""Fixtures of the integration and system tests: a real MangaAssist application on a local Ray, on
127.0.0.1, shared by the whole session (unit tests use none of them).

It builds the real models and indexes first (idempotent: seconds when the registry is current).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
from ray.serve.schema import TracingConfig  # noqa: E402

from monitoring.local_stack import free_port  # noqa: E402
from serve.cli import CONFIG, app_args, deploy, load_config, start_ray, wait_ready  # noqa: E402

SESSION: dict = {}  # the Serve config the session deployed (apply_config starts from it)


@pytest.fixture(scope="session")
def base_url():
    from models.build import build
    from serve.drift_monitor import build_reference
    from serve.index import build_all

    build()
    build_all()
    build_reference(app_args(Path(CONFIG)))
    import ray
    from ray import serve

    config = load_config(Path(CONFIG))
    config.http_options.port = free_port()
    # Every request traced, with Ray Serve's default exporter (JSON span files in the session's logs)
    config.tracing_config = TracingConfig(enabled=True, sampling_ratio=1.0)
    # A small drift window evaluated often, so that a test's traffic fills and drifts it in seconds
    config.applications[0].args["drift"] = {"window_size": 120, "interval_s": 2.0, "flush_interval_s": 0.5}
    # Fake credentials for the Bedrock stand-in (boto3 signs every request); no real AWS is reachable.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
    # Logical CPUs: room for a second application (the Bedrock-backed one) beside the default one.
    metrics_port = free_port()
    os.environ["MANGAASSIST_TEST_METRICS_PORT"] = str(metrics_port)
    start_ray(num_cpus=4, metrics_port=metrics_port)
    SESSION["config"] = config
    try:
        url = deploy(config)
        wait_ready(url, 300)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def metrics_url(base_url):
    return f"http://127.0.0.1:{os.environ['MANGAASSIST_TEST_METRICS_PORT']}/metrics"


@pytest.fixture(scope="session")
def deploy_app(base_url):
    """Deploy another application (other backends) beside the default one, under /<name>."""
    from ray import serve

    from serve.app import build_app

    @contextmanager
    def deploy(name: str, args: dict):
        serve.run(build_app(args), name=name, route_prefix=f"/{name}", blocking=False)
        try:
            wait_ready(f"{base_url}/{name}", 300)
            with httpx.Client(base_url=f"{base_url}/{name}", timeout=60) as client:
                yield client
        finally:
            serve.delete(name)

    return deploy


@pytest.fixture(scope="session")
def apply_config(base_url):
    """Apply a Serve config in place, as `serve deploy` and KubeRay do: the session's config with the
    default application unchanged, plus `apps` (Serve config application dicts). Declarative apps of
    an earlier call that are not given again are deleted; `serve.run` apps are left alone."""
    from ray.serve.context import _get_global_client

    def apply(apps: list[dict]) -> None:
        config = SESSION["config"]
        extra = type(config).model_validate({"applications": apps}).applications if apps else []
        _get_global_client().deploy_apps(config.model_copy(update={"applications": config.applications + extra}),
                                         _blocking=False)

    return apply


@pytest.fixture(scope="session")
def spans_dir(base_url) -> Path:
    """Where Ray Serve's default exporter writes every process's spans."""
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve" / "spans"
