"""Loading the backbone and fine-tuned checkpoints with transformers (the torch side of every model)."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .paths import backbone_dir


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(n: int | None = None) -> int:
    """One intra-op pool, no larger than the CPUs we own (DESIGN §4)."""
    import torch

    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def load_tokenizer(path: Path | None = None):
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(path or backbone_dir())


def load_classifier(path: Path | None = None, num_labels: int | None = None, **kwargs):
    """Sequence classifier on `path` (default: a fresh head on the packaged backbone).

    Eager attention so that the legacy ONNX exporter emits the pattern ORT's BERT fusion recognizes.
    """
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        path or backbone_dir(), attn_implementation="eager", **extra, **kwargs
    )
    return model.eval()


def load_encoder(path: Path | None = None):
    from transformers import AutoModel

    quiet_transformers()
    return AutoModel.from_pretrained(path or backbone_dir(), attn_implementation="eager").eval()


@contextmanager
def inference():
    import torch

    with torch.inference_mode():
        yield


def mean_pool(last_hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence-transformers pooling for all-MiniLM-L6-v2: masked mean, then L2 normalization."""
    mask = attention_mask[..., None].astype(last_hidden.dtype)
    summed = (last_hidden * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
