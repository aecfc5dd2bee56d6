"""Inference runtimes for every model: ONNX Runtime (fp32 / int8), OpenVINO (bf16 / fp32) or torch, behind one
interface.

Deployments and the export parity gates both go through `TextModel`, so what is checked at
export time is exactly what serves.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .modeling import mean_pool

Runtime = Literal["onnx", "openvino", "torch"]
Precision = Literal["fp32", "int8", "bf16"]
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16"), "torch": ("fp32",)}
Device = Literal["cpu", "cuda"]
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def check_runtime(runtime: Runtime, precision: Precision, device: Device) -> None:
    """One rule for the model loader and the app's config: what each runtime can run (torch ignores precision)."""
    if runtime != "torch" and precision not in PRECISIONS[runtime]:
        raise ValueError(f"runtime {runtime} runs precision {' or '.join(PRECISIONS[runtime])}, not {precision}")
    if runtime == "openvino" and device != "cpu":
        raise ValueError("runtime openvino runs on device cpu (use onnx or torch on cuda)")


def onnx_file(model_dir: Path, precision: Precision) -> Path:
    return model_dir / "onnx" / f"model.{precision}.onnx"


def openvino_file(model_dir: Path) -> Path:
    """OpenVINO IR with fp32 weights; the precision it runs at is chosen when it is compiled."""
    return model_dir / "openvino" / "model.xml"


class OrtBackend:
    def __init__(self, path: Path, threads: int | None = None, device: Device = "cpu"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # replicas share cores: spinning threads would steal them from each other (DESIGN §4)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        # what actually runs (get_available_providers() lists what *could*)
        self.providers = self.session.get_providers()

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: features[k] for k in self.inputs})[0]


class OpenVinoBackend:
    """OpenVINO on CPU. bf16 runs the matmuls on AMX (or AVX512-BF16): on the reranker's batches 2-3x faster
    than ONNX Runtime int8 here, and closer to fp32. Without bf16 hardware OpenVINO runs fp32 instead;
    `precision` reports what it actually runs."""

    def __init__(self, path: Path, threads: int, precision: Precision = "bf16"):
        import openvino as ov

        if not path.exists():
            raise FileNotFoundError(f"{path} missing: this model version predates the OpenVINO export; "
                                    "run `mangaassist build` (or serve it with runtime onnx)")
        self.compiled = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,  # replicas share cores (DESIGN §4): pinned threads would collide
        })
        self.precision = "bf16" if self.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "fp32"
        self.inputs = [port.get_any_name() for port in self.compiled.inputs]
        self.output = self.compiled.outputs[0]
        self.providers = ["openvino-CPU"]
        self._local = threading.local()  # an infer request is not thread-safe: one per calling thread

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        # the result aliases the request's output buffer, which the next call overwrites
        return np.array(request.infer({k: features[k] for k in self.inputs})[self.output], dtype=np.float32)


class TorchBackend:
    def __init__(self, hf_dir: Path, kind: str, threads: int, device: Device = "cpu"):
        import torch

        from .modeling import load_classifier, load_encoder, set_threads

        set_threads(threads)
        self.torch = torch
        self.device = device
        self.kind = kind
        model = load_encoder(hf_dir) if kind == "encoder" else load_classifier(hf_dir)
        self.model = model.to(device)
        if device == "cuda":
            self.model = self.model.half()
        self.providers = [f"torch-{device}"]

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        batch = {k: torch.from_numpy(v).to(self.device) for k, v in features.items()}
        with torch.inference_mode():
            out = self.model(**batch)
        tensor = out.last_hidden_state if self.kind == "encoder" else out.logits
        return tensor.float().cpu().numpy()


class PairEncoder:
    """A cross-encoder's inputs for one query and its documents: the same arrays as the tokenizer makes for the
    pairs (longest-first truncation to `max_length`, [CLS] query [SEP] document [SEP], right padding to the
    longest), but each document's word pieces are cached. Candidates come from a fixed catalog, and documents
    are tokenized whole before truncation: that was ~10 ms of CPU per 34-pair request, on the cores the
    model's threads need."""

    def __init__(self, tokenizer, cache_size: int = 4096):
        from tokenizers import Tokenizer

        self.pad_id, self.side = tokenizer.pad_token_id or 0, tokenizer.truncation_side
        spec = tokenizer.backend_tokenizer.to_str()
        self.words = Tokenizer.from_str(spec)  # whole texts: truncation depends on both lengths of a pair
        self.words.no_truncation()
        self.words.no_padding()
        self.pairs = Tokenizer.from_str(spec)  # post_process: truncation, special tokens
        self.pairs.no_padding()
        self.document = functools.lru_cache(maxsize=cache_size)(self._encode)

    def _encode(self, text: str):
        return self.words.encode(text, add_special_tokens=False)

    def __call__(self, query: str, documents: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
        if (self.pairs.truncation or {}).get("max_length") != max_length:  # the served length may differ from the card's
            self.pairs.enable_truncation(max_length, strategy="longest_first", direction=self.side)
        q = self._encode(query)
        encodings = [self.pairs.post_process(q, self.document(d)) for d in documents]
        length = max((len(e.ids) for e in encodings), default=0)
        out = {name: np.zeros((len(encodings), length), dtype=np.int64) for name in ONNX_INPUTS}
        out["input_ids"].fill(self.pad_id)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            out["input_ids"][i, :n], out["attention_mask"][i, :n], out["token_type_ids"][i, :n] = \
                e.ids, e.attention_mask, e.type_ids
        return out


class TextModel:
    """A registered model version (tokenizer + runtime). `kind` is classifier, cross_encoder or encoder."""

    def __init__(
        self,
        model_dir: Path,
        runtime: Runtime = "onnx",
        precision: Precision = "int8",
        threads: int | None = None,
        device: Device = "cpu",
    ):
        from .modeling import load_tokenizer

        self.model_dir = Path(model_dir)
        self.card = json.loads((self.model_dir / "model_card.json").read_text())
        self.kind: str = self.card["kind"]
        self.max_length: int = self.card["max_length"]
        self.labels: list[str] | None = self.card.get("labels")
        self.temperature: float = self.card.get("temperature", 1.0)
        self.runtime = runtime
        check_runtime(runtime, precision, device)
        self.precision = precision if runtime != "torch" else "fp32"
        self.tokenizer = load_tokenizer(self.model_dir / "hf")
        threads = threads or len(os.sched_getaffinity(0))
        if runtime == "onnx":
            self.backend = OrtBackend(onnx_file(self.model_dir, precision), threads, device)
        elif runtime == "openvino":
            self.backend = OpenVinoBackend(openvino_file(self.model_dir), threads, precision)
            self.precision = self.backend.precision
        else:
            self.backend = TorchBackend(self.model_dir / "hf", self.kind, threads, device)
        self.lexical_weight: float = self.card.get("lexical_weight", 1.0)
        self.lexical = None
        if self.lexical_weight < 1.0:
            from .lexical import LexicalModel

            self.lexical = LexicalModel.load(self.model_dir / "lexical")

    @property
    def providers(self) -> list[str]:
        return self.backend.providers

    def features(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            list(texts), list(pairs) if pairs is not None else None,
            padding=True, truncation=True, max_length=self.max_length, return_tensors="np",
        )
        return {k: enc[k].astype(np.int64) for k in ONNX_INPUTS}

    def token_counts(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[int]:
        enc = self.tokenizer(list(texts), list(pairs) if pairs is not None else None,
                             truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        return self.backend(self.features(texts, pairs))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        feats = self.features(texts)
        return mean_pool(self.backend(feats), feats["attention_mask"]).astype(np.float32)

    def class_scores(self, texts: Sequence[str]) -> np.ndarray:
        """A classifier's scores before temperature: its logits, or their blend with the lexical model's."""
        logits = self.logits(texts)
        if self.lexical is None:
            return logits
        from .lexical import blend

        return blend(logits, self.lexical.log_proba(texts), self.lexical_weight)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated class probabilities (temperature fitted on validation)."""
        return softmax(self.class_scores(texts) / self.temperature)

    @functools.cached_property
    def _pair_encoder(self) -> PairEncoder:
        return PairEncoder(self.tokenizer)

    def pair_features(self, query: str, documents: Sequence[str]) -> dict[str, np.ndarray]:
        """features([query] * n, documents) at `max_length` (which serving may set), documents' tokens cached."""
        return self._pair_encoder(query, documents, self.max_length)

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        return self.backend(self.pair_features(query, documents))[:, 0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
