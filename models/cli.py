"""`mangaassist` — the command line: data, build/train/eval, the registry, indexes, serving, chat."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .paths import DATA_DIR


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_build(args) -> int:
    from .build import MODELS, BuildOptions, GateError, build

    try:
        versions = build(BuildOptions(force=args.force), only=tuple(args.only or MODELS))
    except GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    from .registry import Registry

    reg = Registry()
    for name, version in versions.items():
        print(f"{name:9s} {version}  {reg.root / name / version}")
    if not args.no_mlflow:
        track_model_versions(reg)
    return 0


def track_model_versions(registry) -> None:
    """One MLflow run per registered model version (params, metrics, reports), logged once. The
    build already succeeded: a tracking store that is down is a warning, not a failed build."""
    from .tracking import log_model_versions, tracking_uri

    try:
        logged = log_model_versions(registry)
    except Exception as exc:  # noqa: BLE001 - any MLflow/store failure
        print(f"warning: model runs not logged to MLflow ({tracking_uri()}): {exc}", file=sys.stderr)
        return
    new = [f"{name}:{version}" for name, version, _, fresh in logged if fresh]
    print(f"mlflow: {len(new)} new model version run(s){': ' + ', '.join(new) if new else ''} ({tracking_uri()})")


def cmd_train(args) -> int:
    args.only, args.force = [args.model], args.force
    return cmd_build(args)


def cmd_models_list(args) -> int:
    from .registry import Registry

    reg = Registry()
    headline = {"intent": ("test_accuracy", "test_macro_f1", "test_ece_scaled"),
                "reranker": ("ndcg@10", "ndcg@10_gain", "mrr@10"), "embedder": ("int8_min_cosine",)}
    rows = [["model", "version", "current", "created", "metrics", "gates"]]
    for name in reg.names():
        for version in reg.versions(name):
            m = reg.manifest(name, version)
            shown = ", ".join(f"{k}={m['metrics'][k]:.4f}" for k in headline.get(name, ()) if k in m["metrics"])
            rows.append([name, version, "*" if reg.current(name) == version else "", m["created"], shown,
                         {True: "pass", False: "FAIL"}.get(m["metrics"].get("gates_passed"), "-")])  # "-": no gates
    if len(rows) == 1:
        print(f"no models registered in {reg.root}; run `mangaassist build`")
        return 1
    print(f"registry: {reg.root}")
    _print_table(rows)
    return 0


def cmd_eval(args) -> int:
    """Evaluate the registered model with the runtime that serves it (not the training-time torch copy)."""
    from .evaluate import evaluate

    report = evaluate(args.model, runtime=args.runtime, precision=args.precision)
    print(json.dumps(report, indent=2))
    return 0


def cmd_data_split(args) -> int:
    from .splits import build_splits

    print(json.dumps(build_splits(Path(args.dir), seed=args.seed)))
    return 0


def cmd_data_validate(args) -> int:
    from .datasets import SPLITS, load_catalog, load_intents, load_policies

    catalog, policies = load_catalog(), load_policies()
    sizes = {s: len(load_intents(s)) for s in SPLITS}
    print(f"catalog: {len(catalog)} series; policies: {len(policies)}; intents: {sizes}")
    return 0


def cmd_data_expand(args) -> int:
    from .datasets import load_catalog, write_jsonl
    from .expand import products

    rows = products(load_catalog(), extra=args.extra, seed=args.seed)
    write_jsonl(Path(args.out), (p.model_dump() for p in rows))
    print(f"wrote {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mangaassist", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="train, evaluate, export and register every model (idempotent)")
    b.add_argument("--force", action="store_true", help="rebuild even when an identical version is registered")
    b.add_argument("--only", nargs="+", choices=["embedder", "intent", "reranker"])
    b.add_argument("--no-mlflow", action="store_true", help="do not log the model versions to MLflow")
    b.set_defaults(func=cmd_build)

    t = sub.add_parser("train", help="train (and export, register) one model")
    t.add_argument("model", choices=["intent", "reranker"])
    t.add_argument("--force", action="store_true")
    t.add_argument("--no-mlflow", action="store_true", help="do not log the model versions to MLflow")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a registered model (intent, reranker) or a running graph (graph)")
    esub = e.add_subparsers(dest="eval_target", required=True)
    for model in ("intent", "reranker"):
        em = esub.add_parser(model, help=f"re-evaluate the registered {model} model with a serving runtime")
        em.add_argument("--runtime", choices=["onnx", "openvino", "torch"], default="onnx")
        em.add_argument("--precision", choices=["fp32", "int8", "bf16"], default="int8")
        em.set_defaults(func=cmd_eval, model=model)
    from .graph_eval import cmd_eval_graph

    g = esub.add_parser("graph", help="the golden set against a running deployment (HTTP only), tracked in MLflow")
    g.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the deployment")
    g.add_argument("--slice", type=int, default=None, help="first N golden cases (they cover every intent)")
    g.add_argument("--baseline", default=None, metavar="RUN_ID",
                   help="MLflow run to compare with; exit status 1 when a metric regresses beyond tolerances.yaml")
    g.add_argument("--out", default=None, help="report folder (default: $MANGAASSIST_HOME/eval/graph-<time>)")
    g.add_argument("--no-mlflow", action="store_true", help="do not log a run")
    g.add_argument("--no-bertscore", action="store_true", help="skip BERTScore (loads the local backbone)")
    g.set_defaults(func=cmd_eval_graph)

    m = sub.add_parser("models", help="the model registry")
    msub = m.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="versions and metrics").set_defaults(func=cmd_models_list)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("split", help="rebuild intents/{train,validation,test}.jsonl from intents/authored/")
    ds.add_argument("--dir", default=str(DATA_DIR / "intents"))
    ds.add_argument("--seed", type=int, default=13)
    ds.set_defaults(func=cmd_data_split)
    dsub.add_parser("validate", help="load and validate every data file").set_defaults(func=cmd_data_validate)
    dx = dsub.add_parser("expand", help="expand the catalog into products (volumes x editions), plus synthetic ones")
    dx.add_argument("--extra", type=int, default=0, help="synthetic products to add (scale benchmarks)")
    dx.add_argument("--seed", type=int, default=0)
    dx.add_argument("--out", required=True)
    dx.set_defaults(func=cmd_data_expand)

    from serve.cli import add_commands

    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
