"""Intent dataset splits: near-duplicate clusters never straddle train/validation/test."""
from __future__ import annotations

import random
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer

from . import INTENT_LABELS
from .datasets import SPLITS, read_jsonl, write_jsonl

# Character n-gram cosine above this = "the same message with a different title/number/typo".
NEAR_DUPLICATE_COSINE = 0.8
SPLIT_FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}
# authored/train_only/<label>.jsonl: messages added to train without re-splitting the others (models/data/README.md)
TRAIN_ONLY = "train_only"


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\d+", "0", text)  # numbers (volumes, order ids) do not make a message new
    text = re.sub(r"[^\w\s]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _similarity(texts_a: list[str], texts_b: list[str]):
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
    vec.fit([normalize(t) for t in texts_a + texts_b])
    a = vec.transform([normalize(t) for t in texts_a])
    b = vec.transform([normalize(t) for t in texts_b])
    return (a @ b.T).tocoo()


def near_duplicate_pairs(texts_a: list[str], texts_b: list[str], threshold: float = NEAR_DUPLICATE_COSINE):
    """(i, j, cosine) for every pair with texts_a[i] ~ texts_b[j]."""
    sim = _similarity(texts_a, texts_b)
    keep = sim.data >= threshold
    return list(zip(sim.row[keep].tolist(), sim.col[keep].tolist(), sim.data[keep].tolist()))


def near_duplicate_clusters(texts: list[str], threshold: float = NEAR_DUPLICATE_COSINE) -> list[int]:
    """Union-find over near-duplicate pairs; returns a cluster id per text."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in near_duplicate_pairs(texts, texts, threshold):
        if i < j:
            parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]


def split_examples(examples: list[dict], seed: int = 13, train_only: list[dict] = ()) -> dict[str, list[dict]]:
    """Stratified by label, grouped by near-duplicate cluster, deterministic for a seed; `train_only` examples
    are appended to train and leave the split of `examples` as it was."""
    seen: set = set()
    unique = _unseen(examples, seen)
    clusters = near_duplicate_clusters([ex["text"] for ex in unique])
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    groups_of: dict[int, list[dict]] = defaultdict(list)
    for ex, cluster in zip(unique, clusters):
        groups_of[cluster].append(ex)
    # a cluster (even one mixing labels) moves as a whole; stratify by its first example's label
    by_label: dict[str, list[list[dict]]] = defaultdict(list)
    for cluster in sorted(groups_of):
        by_label[groups_of[cluster][0]["label"]].append(groups_of[cluster])
    for label in sorted(by_label):
        groups = by_label[label]
        rng.shuffle(groups)
        total = sum(map(len, groups))
        targets = {s: SPLIT_FRACTIONS[s] * total for s in SPLITS}
        counts = dict.fromkeys(SPLITS, 0)
        for group in groups:
            # the group goes where its label is furthest below target
            split = max(SPLITS, key=lambda s: (targets[s] - counts[s]) / targets[s])
            out[split].extend(group)
            counts[split] += len(group)
    for split in SPLITS:
        rng.shuffle(out[split])
    out["train"] += _train_only(train_only, seen, out["validation"] + out["test"])
    return out


def _unseen(examples: list[dict], seen: set) -> list[dict]:
    """Exact duplicates (after normalization) carry no information: the examples not in `seen`, which grows."""
    fresh = []
    for ex in examples:
        key = (normalize(ex["text"]), ex["label"])
        if key not in seen:
            seen.add(key)
            fresh.append(ex)
    return fresh


def _train_only(examples: list[dict], seen: set, held_out: list[dict]) -> list[dict]:
    """New train-only examples; refuses one that is a near-duplicate of a held-out one."""
    fresh = _unseen(examples, seen)
    if not fresh or not held_out:
        return fresh
    leaks = near_duplicate_pairs([ex["text"] for ex in fresh], [ex["text"] for ex in held_out])
    if leaks:
        i, j, cosine = leaks[0]
        raise ValueError(f"{len(leaks)} train-only message(s) are near-duplicates of validation/test messages, e.g. "
                         f"{fresh[i]['text']!r} ~ {held_out[j]['text']!r} (cosine {cosine:.2f}): rewrite them")
    return fresh


def read_authored(directory: Path) -> tuple[list[dict], list[dict]]:
    """(split, train-only) examples: authored/<label>.jsonl and authored/train_only/<label>.jsonl."""
    def read(folder: Path) -> list[dict]:
        examples = []
        for label in INTENT_LABELS:
            path = folder / f"{label}.jsonl"
            for row in read_jsonl(path) if path.exists() else []:
                text = row["text"].strip()
                if text:
                    examples.append({"text": text, "label": label})
        return examples

    return read(directory / "authored"), read(directory / "authored" / TRAIN_ONLY)


def build_splits(directory: Path, seed: int = 13) -> dict[str, int]:
    """Read the authored messages, write train/validation/test.jsonl; returns the sizes."""
    pooled, train_only = read_authored(directory)
    splits = split_examples(pooled, seed, train_only)
    for split, rows in splits.items():
        write_jsonl(directory / f"{split}.jsonl", rows)
    return {s: len(rows) for s, rows in splits.items()}


def cross_split_leaks(splits: dict[str, list[str]], threshold: float = NEAR_DUPLICATE_COSINE):
    """Near-duplicate pairs between different splits (empty when the splits are clean)."""
    leaks = []
    names = list(splits)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            ta, tb = splits[names[a]], splits[names[b]]
            leaks += [(ta[i], tb[j], round(s, 3)) for i, j, s in near_duplicate_pairs(ta, tb, threshold)]
    return leaks


def label_balance(rows: list[dict]) -> dict[str, int]:
    return {label: sum(r["label"] == label for r in rows) for label in INTENT_LABELS}


