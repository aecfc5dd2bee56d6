"""Evaluation metrics and report plots: classification, calibration, ranking."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, y_true: Sequence[int]) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimizing validation NLL."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    y = np.asarray(y_true)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def dcg(relevances: Sequence[float], k: int) -> float:
    rel = np.asarray(relevances, dtype=float)[:k]
    return float(((2 ** rel - 1) / np.log2(np.arange(2, rel.size + 2))).sum())


def ndcg_at_k(ranked_relevances: Sequence[float], all_relevances: Sequence[float], k: int = 10) -> float:
    """NDCG@k of a ranking; the ideal ranking is over every judged document, not just candidates."""
    ideal = dcg(sorted(all_relevances, reverse=True), k)
    return dcg(ranked_relevances, k) / ideal if ideal > 0 else 0.0


def mrr_at_k(ranked_relevances: Sequence[float], k: int = 10) -> float:
    for rank, rel in enumerate(list(ranked_relevances)[:k], 1):
        if rel > 0:
            return 1.0 / rank
    return 0.0


def plot_confusion(matrix: list[list[int]], labels: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, m[i, j], ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(curves: dict[str, tuple[np.ndarray, Sequence[int]]], path: Path, bins: int = 15) -> None:
    """Reliability diagram: accuracy against confidence per bin, one line per calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for name, (probs, y_true) in curves.items():
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == np.asarray(y_true)
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = (conf > lo) & (conf <= hi)
            if in_bin.any():
                xs.append(conf[in_bin].mean())
                ys.append(correct[in_bin].mean())
        ece = expected_calibration_error(probs, y_true, bins)
        ax.plot(xs, ys, "o-", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Intent classifier reliability (test split)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
