"""Retriever deployment: the embedded FAISS HNSW indexes (catalog series, policy passages) with filters."""
from __future__ import annotations

import numpy as np
from ray import serve

from models.registry import Registry

from .index import INDEXES, VectorIndex, index_folder, index_root
from .routing import normalize_title

class TitleMatcher:
    """Finds catalog series named in a message ("one piece vol 105", "like berserk")."""

    def __init__(self, docs):
        self.aliases: list[tuple[str, int]] = []
        for i, doc in enumerate(docs):
            names = {doc.title, doc.title.split(":")[0], doc.title.split(" - ")[0], doc.title.removeprefix("The ")}
            for name in names:
                norm = normalize_title(name)
                if len(norm) >= 4 or norm == normalize_title(doc.title):
                    self.aliases.append((norm, i))
        self.aliases.sort(key=lambda a: -len(a[0]))  # longest first: "hunter x hunter" before "x"

    def find(self, text: str) -> list[int]:
        haystack = f" {normalize_title(text)} "
        found = []
        for alias, i in self.aliases:
            needle = f" {alias} "
            if needle in haystack and i not in found:
                found.append(i)
                haystack = haystack.replace(needle, " | ")
        return found

@serve.deployment(ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=64)
class Retriever:
    def __init__(self, embedder_ref: str = "embedder", index_dir: str | None = None):
        version = Registry().resolve(embedder_ref).name
        root = index_root(index_dir)
        self.indexes: dict[str, VectorIndex] = {}
        for name in INDEXES:
            folder = index_folder(root, version, name)
            if not (folder / "manifest.json").exists():
                raise RuntimeError(f"no {name} index for embedder {version} under {root}: run `mangaassist index`")
            self.indexes[name] = VectorIndex.load(folder)
        self.titles = TitleMatcher(self.indexes["catalog"].docs)
        self.info = {"backend": "faiss-hnsw", "embedder_version": version,
                     "documents": {n: len(ix.docs) for n, ix in self.indexes.items()},
                     "dimensions": self.indexes["catalog"].dimensions}

    def search(self, vector: np.ndarray, index: str, k: int, filters: dict | None = None,
               exclude: list[str] | None = None) -> list[dict]:
        ix = self.indexes[index]
        return [self._hit(ix, i, score) for i, score in ix.search(np.asarray(vector), k, filters, exclude or ())]

    @staticmethod
    def _hit(ix: VectorIndex, i: int, score: float) -> dict:
        doc = ix.docs[i]
        return {"id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata, "score": score}

    def named_series(self, text: str) -> list[dict]:
        ix = self.indexes["catalog"]
        return [self._hit(ix, i, 1.0) for i in self.titles.find(text)]

    def ready(self) -> dict:
        return self.info

