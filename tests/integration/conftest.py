"""A real MangaAssist application on a local Ray, on 127.0.0.1, shared by the integration tests.

It builds the real models and indexes first (idempotent: seconds when the registry is current).
"""
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from serve.cli import CONFIG, deploy, load_config, start_ray, wait_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def base_url():
    from models.build import build
    from serve.index import build_all

    build()
    build_all()
    import ray
    from ray import serve

    config = load_config(Path(CONFIG))
    config.http_options.port = free_port()
    # Fake credentials for the Bedrock stand-in (boto3 signs every request); no real AWS is reachable.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
    # Logical CPUs: room for a second application (the Bedrock-backed one) beside the default one.
    metrics_port = free_port()
    os.environ["MANGAASSIST_TEST_METRICS_PORT"] = str(metrics_port)
    start_ray(num_cpus=4, metrics_port=metrics_port)
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
