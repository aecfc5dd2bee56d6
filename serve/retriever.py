"""Retriever deployment: k-NN over catalog series and policy passages with metadata filters, on the
embedded FAISS indexes (serve/index.py: hnsw, ivfpq or ivf) or on Amazon OpenSearch (same filters, same answer shape)."""
from __future__ import annotations

import numpy as np
from ray import serve

from .config import AppArgs
from .index import INDEXES, VectorIndex, corpus, index_folder, index_root
from .routing import normalize_title

class TitleMatcher:
    """Finds catalog series named in a message ("one piece vol 105", "like berserk")."""

    def __init__(self, docs):
        self.docs = docs
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
    def __init__(self, args: AppArgs):
        version, dimensions = args.embedder_identity()
        self.embedder_version = version
        self.store = None
        if args.retriever_backend == "opensearch":
            from .backends.opensearch import OpenSearchStore

            self.store = OpenSearchStore(args.opensearch)
            for name in INDEXES:  # fails clearly when missing or built with another dimension
                self.store.check_index(name, dimensions, version)
            self.titles = TitleMatcher(corpus("catalog"))
            self.info = {"backend": "opensearch", "embedder_version": version, "dimensions": dimensions,
                         "documents": {n: self.store.count(n, version) for n in INDEXES}}
            return
        root = index_root(args.index_dir)
        self.indexes: dict[str, VectorIndex] = {}
        for name in INDEXES:
            folder = index_folder(root, version, name)
            if not (folder / "manifest.json").exists():
                raise RuntimeError(f"no {name} index for embedder {version} under {root}: run `mangaassist index`")
            self.indexes[name] = VectorIndex.load(folder)
        self.titles = TitleMatcher(self.indexes["catalog"].docs)
        kinds = {n: ix.spec.kind for n, ix in self.indexes.items()}
        self.info = {"backend": "faiss-" + "+".join(sorted(set(kinds.values()))),  # faiss-hnsw, faiss-ivfpq, ...
                     "embedder_version": version,
                     "documents": {n: len(ix.docs) for n, ix in self.indexes.items()},
                     "index_kinds": kinds,
                     "dimensions": self.indexes["catalog"].dimensions}

    def search(self, vector: np.ndarray, index: str, k: int, filters: dict | None = None,
               exclude: list[str] | None = None) -> list[dict]:
        if self.store is not None:
            return self.store.search(index, np.asarray(vector), k, filters, exclude or (),
                                     embedder_version=self.embedder_version)
        ix = self.indexes[index]
        return [self._hit(ix.docs[i], score) for i, score in ix.search(np.asarray(vector), k, filters, exclude or ())]

    @staticmethod
    def _hit(doc, score: float) -> dict:
        return {"id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata, "score": score}

    def named_series(self, text: str) -> list[dict]:
        return [self._hit(self.titles.docs[i], 1.0) for i in self.titles.find(text)]

    def ready(self) -> dict:
        return self.info

