"""The serving side of the `mangaassist` command: index, serve, chat."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "config" / "local.yaml"


def cmd_index(args) -> int:
    if args.backend == "faiss":
        from .drift_monitor import build_reference
        from .index import IndexSpec, build_all

        build_all(args.embedder, args.index_dir, force=args.force,
                  spec=IndexSpec(kind=args.index_kind) if args.index_kind else None)
        build_reference(app_args(Path(args.config)))
        return 0
    return index_opensearch(app_args(Path(args.config)))


def app_args(path: Path):
    """The typed `args` of the (first) application in a Serve config file."""
    from .config import AppArgs

    return AppArgs.model_validate(load_config(path).applications[0].args or {})


def index_opensearch(args) -> int:
    """Embed the catalog and policies with the configured embedder and ingest them into OpenSearch.
    Idempotent: documents whose content is unchanged are not re-sent; removed ones are deleted."""
    from .backends.opensearch import OpenSearchStore
    from .index import INDEXES, build_index

    version, dimensions = args.embedder_identity()
    if args.embedder_backend == "bedrock":
        from .backends.bedrock import TitanEmbedder

        embed = TitanEmbedder(args.bedrock).embed
    else:
        from models.registry import Registry
        from models.runtime import TextModel

        embed = TextModel(Registry().resolve(args.embedder.ref), args.embedder.runtime, args.embedder.precision).embed
    store = OpenSearchStore(args.opensearch)
    rejected = 0
    for name in INDEXES:
        index = build_index(name, embed)  # embeds with a progress bar
        store.ensure_index(name, dimensions, version)
        report = store.ingest(name, index.docs, index.vectors, version)
        print(report.summary())
        rejected += len(report.rejected)
        for item in report.rejected[:20]:
            print(f"  rejected {item['id']}: {item['status']} {item['error']}")
    return 1 if rejected else 0


def load_config(path: Path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from .config import AppArgs

    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in config.applications:
        AppArgs.model_validate(app.args or {})  # fail before starting anything
    return config


def deploy_failure() -> str | None:
    """What Serve says about an application it gave up deploying (a replica's constructor keeps failing:
    a missing index, a model that does not load), or None; None too without a Ray connection here."""
    import ray

    if not ray.is_initialized():
        return None
    from ray import serve

    failed = []
    for name, app in serve.status().applications.items():
        if app.status == "DEPLOY_FAILED":  # the app's message names the deployments; theirs end with the cause
            causes = [f"{d}: {dep.message.strip().splitlines()[-1]}" for d, dep in app.deployments.items()
                      if dep.status != "HEALTHY" and dep.message.strip()]
            failed.append(f"{name}: {app.message} ({'; '.join(causes)})" if causes else f"{name}: {app.message}")
    return "; ".join(failed) or None


def wait_ready(url: str, timeout: float, should_stop=lambda: False) -> dict:
    """Poll /readyz until it answers 200; fails at once when Serve gave up deploying the application."""
    import httpx

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline and not should_stop():
        failure = deploy_failure()
        if failure:
            raise RuntimeError(f"the application failed to deploy: {failure}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            last = r.json()
            if r.status_code == 200:
                return last
        except (httpx.HTTPError, ValueError) as exc:
            last = {"error": str(exc)}
        time.sleep(1)
    raise TimeoutError(f"not ready after {timeout:.0f} s: {last}")


def start_ray(num_cpus: int | None = None, metrics_port: int = 8080) -> None:
    """A private local Ray on 127.0.0.1 (DESIGN §10), no dashboard; its metrics agent serves
    Prometheus text on `metrics_port` (Ray's own and every `ray_mangaassist_*` metric)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray Serve's throughput mode (gRPC between replicas, user code on the replica's event loop): each
    # handle hop 2-3x cheaper here (benchmarks/README.md). Replicas inherit it from Ray;
    # RAY_SERVE_THROUGHPUT_OPTIMIZED=0 in the environment turns it off.
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # ... but not its direct ingress: a port of its own on every Gateway replica for an external load
    # balancer, which makes Serve's proxy head-node only and holds a stopping Gateway open 30 s for that
    # balancer to deregister it. Our clients come through Serve's proxy; the hops are as cheap without it.
    os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
    stale = Path("/tmp/ray/ray_current_cluster")
    options = dict(address="local", namespace="serve", include_dashboard=False, num_cpus=num_cpus,
                   _node_ip_address="127.0.0.1", _metrics_export_port=metrics_port,
                   configure_logging=False, log_to_driver=False)
    try:
        ray.init(**options)
    except Exception:
        if not stale.exists():
            raise
        stale.unlink()  # a previous cluster that did not shut down left its address behind
        ray.init(**options)


def deploy(config) -> str:
    """Deploy a Serve config on the running Ray; returns the HTTP base URL."""
    from ray.serve._private import api as serve_api  # what `serve run config.yaml` itself calls

    from monitoring.tracing import tracing_config_from_env

    # the proxies take their tracing setup at start: the config file's, else OTLP when configured
    tracing = config.tracing_config or tracing_config_from_env()
    client = serve_api.serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location,
                                   global_tracing_config=tracing)
    client.deploy_apps(config, _blocking=False)
    return f"http://{config.http_options.host}:{config.http_options.port}"


def cmd_serve(args) -> int:
    from models.build import build

    config = load_config(Path(args.config))
    if not args.skip_build:
        build()
        from .drift_monitor import build_reference
        from .index import build_all

        build_all()
        build_reference(app_args(Path(args.config)))
    import ray
    from ray import serve

    stop = threading.Event()
    start_ray(args.num_cpus, args.metrics_port)
    # after ray.init, which installs its own SIGTERM handler (kill Ray's processes at once, then exit):
    # ours lets Serve drain in-flight requests (graceful_shutdown_*) before Ray stops, as Ctrl-C does
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = deploy(config)
        print(f"starting MangaAssist on {url} ...", flush=True)
        wait_ready(url, args.ready_timeout, stop.is_set)
        if not stop.is_set():
            print(f"\nMangaAssist is ready on {url}   (OpenAPI: {url}/docs, Ctrl-C to stop)\n\n"
                  f"  curl -s {url}/v1/chat -H 'content-type: application/json' \\\n"
                  f"       -d '{{\"query\": \"dark fantasy manga like Berserk?\"}}'\n\n"
                  f"  mangaassist chat \"do you ship to Canada and how long does it take\"\n", flush=True)
        stop.wait()
    finally:
        print("shutting down Serve and Ray ...", flush=True)
        serve.shutdown()
        ray.shutdown()
    return 0


def cmd_keys(args) -> int:
    """API keys: `new` makes a key and prints it with its digest; `hash` reads keys from standard input
    (never from the command line, which other users and the shell history can see), one digest a line."""
    from .security import hash_key, new_key

    if args.action == "new":
        key = new_key()
        print(f"key:    {key}\nsha256: {hash_key(key)}\n\nGive the key to the client; put only the sha256 in "
              "args.auth.key_hashes or MANGAASSIST_API_KEY_HASHES.", flush=True)
        return 0
    if sys.stdin.isatty():
        import getpass

        keys = [getpass.getpass("API key (not echoed): ")]
    else:
        keys = [line.strip() for line in sys.stdin if line.strip()]
    for key in keys:
        print(hash_key(key))
    return 0 if keys else 1


def cmd_chat(args) -> int:
    """Stream one answer from a running server to the terminal."""
    import httpx

    body = {"query": args.query, "stream": True, "top_k": args.top_k}
    key = os.environ.get("MANGAASSIST_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    final = None
    try:
        with httpx.stream("POST", f"{args.url}/v1/chat", json=body, headers=headers, timeout=60) as r:
            if r.status_code != 200:
                r.read()
                print(f"error {r.status_code}: {r.text}", file=sys.stderr)
                return 1
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "token":
                        print(data["delta"], end="", flush=True)
                    elif event == "final":
                        final = data
    except httpx.ConnectError:
        print(f"error: nothing is serving on {args.url}; start it with `make run`", file=sys.stderr)
        return 1
    if final:
        intent = final["intent"]
        print(f"\n\n[{intent['label']} {intent['confidence']:.2f}"
              f"{', low confidence' if intent['low_confidence'] else ''}] "
              f"sources: {', '.join(s['title'] for s in final['sources']) or 'none'}"
              f"{'; degraded: ' + ', '.join(final['degraded']) if final['degraded'] else ''}")
    return 0


def cmd_monitor(args) -> int:
    """Prometheus + Alertmanager on 127.0.0.1 scraping the running app, until Ctrl-C."""
    from models.paths import home
    from monitoring.local_stack import LocalStack

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalStack(home() / "monitor", [args.metrics_port], webhook_url=args.webhook,
                    prometheus_port=args.prometheus_port, alertmanager_port=args.alertmanager_port) as stack:
        print(f"Prometheus   {stack.prometheus_url}  (scraping 127.0.0.1:{args.metrics_port}; alerts: "
              f"{stack.prometheus_url}/alerts)\nAlertmanager {stack.alertmanager_url}\n"
              f"config and data in {stack.folder}; Ctrl-C to stop", flush=True)
        stop.wait()
    return 0


def add_commands(sub) -> None:
    ix = sub.add_parser("index", help="build the retrieval indexes (catalog, policy): FAISS files, or an OpenSearch cluster")
    ix.add_argument("--backend", choices=["faiss", "opensearch"], default="faiss")
    ix.add_argument("--config", default=str(CONFIG), help="Serve config whose args hold the opensearch/bedrock settings")
    ix.add_argument("--embedder", default="embedder")
    ix.add_argument("--index-dir", default=None)
    ix.add_argument("--force", action="store_true")
    ix.add_argument("--index-kind", choices=["hnsw", "ivfpq", "ivf"], default=None,
                    help="FAISS index kind (serve/index.py): hnsw for the served catalog, ivfpq for 100k+ products; an "
                    "index of another kind is rebuilt (default: the kind on disk, hnsw for a new index)")
    ix.set_defaults(func=cmd_index)

    s = sub.add_parser("serve", help="build what is missing, start Ray on 127.0.0.1 and serve until Ctrl-C")
    s.add_argument("--config", default=str(CONFIG), help="a Ray Serve config file")
    s.add_argument("--skip-build", action="store_true", help="do not build models/indexes first")
    s.add_argument("--num-cpus", type=int, default=None)
    s.add_argument("--ready-timeout", type=float, default=300)
    s.add_argument("--metrics-port", type=int, default=8080, help="Ray metrics agent (Prometheus text)")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("monitor", help="a local Prometheus and Alertmanager scraping the running app, until Ctrl-C")
    m.add_argument("--metrics-port", type=int, default=8080, help="the app's Ray metrics agent")
    m.add_argument("--prometheus-port", type=int, default=9090)
    m.add_argument("--alertmanager-port", type=int, default=9093)
    m.add_argument("--webhook", default=None, help="where the Alertmanager sends alerts (a webhook URL)")
    m.set_defaults(func=cmd_monitor)

    k = sub.add_parser("keys", help="API keys: `new` (a random key and its sha256), `hash` (sha256 of keys on stdin)")
    k.add_argument("action", choices=["new", "hash"])
    k.set_defaults(func=cmd_keys)

    c = sub.add_parser("chat", help="ask the running assistant; the answer streams in the terminal")
    c.add_argument("query")
    c.add_argument("--url", default="http://127.0.0.1:8000")
    c.add_argument("--top-k", type=int, default=5)
    c.set_defaults(func=cmd_chat)
