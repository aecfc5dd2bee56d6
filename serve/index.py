"""The embedded retrieval indexes: FAISS HNSW over catalog series and policy passages, with filters.

Built by `mangaassist index` with the registered embedder, persisted under
`<index_dir>/<embedder version>/<name>/` (index.faiss, vectors.npy, docs.jsonl, manifest.json), so
an index is always queried with the embedder that built it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from models.datasets import Policy, Series, load_catalog, load_policies
from models.paths import home

INDEXES = ("catalog", "policy")
HNSW_M = 32
EF_CONSTRUCTION = 200
EF_SEARCH = 128
# Below this many allowed documents an exact scan over them beats (and is exact, unlike) filtered HNSW.
EXACT_SCAN_MAX = 4096


def index_root(index_dir: str | None = None) -> Path:
    return Path(index_dir) if index_dir else home() / "indexes"


@dataclass
class Document:
    id: str
    title: str
    text: str
    metadata: dict

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "text": self.text, "metadata": self.metadata}


def series_document(series: Series) -> Document:
    editions = [e.model_dump() for e in series.editions]
    return Document(series.id, series.title, series.document(), {
        "author": series.author, "year": series.year, "demographic": series.demographic,
        "genres": series.genres, "themes": series.themes, "status": series.status,
        "volumes": series.volumes, "editions": editions,
        "in_stock": any(e.in_stock for e in series.editions),
        "min_price": min(e.price for e in series.editions),
    })


def policy_passages(policy: Policy) -> list[Document]:
    return [Document(f"{policy.id}#{n}", policy.title, text, {"policy_id": policy.id, "category": policy.category, "passage": n})
            for n, text in enumerate(policy.passages())]


def corpus(name: str) -> list[Document]:
    if name == "catalog":
        return [series_document(s) for s in load_catalog()]
    return [d for p in load_policies() for d in policy_passages(p)]


class FilterError(ValueError):
    """A filter that does not apply to this index (client error: 422)."""


def check_filters(index: str, filters: dict | None) -> dict:
    """The filters that are set, or FilterError when one does not apply to `index`."""
    f = {k: v for k, v in (filters or {}).items() if v is not None}
    if index == "policy" and set(f) - {"category"}:
        raise FilterError(f"filters {sorted(set(f) - {'category'})} do not apply to the policy index")
    if index == "catalog" and "category" in f:
        raise FilterError("filter 'category' applies to the policy index only")
    if f.get("price_min") is not None and f.get("price_max") is not None and f["price_min"] > f["price_max"]:
        raise FilterError("price_min is greater than price_max")
    return f


class VectorIndex:
    """HNSW (inner product on normalized vectors = cosine) plus columnar metadata for filtering."""

    def __init__(self, name: str, docs: list[Document], vectors: np.ndarray, index=None):
        import faiss

        self.name, self.docs, self.vectors = name, docs, np.ascontiguousarray(vectors, dtype=np.float32)
        if index is None:
            index = faiss.IndexHNSWFlat(self.vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = EF_CONSTRUCTION
            index.add(self.vectors)
        self.index = index
        self._columns()

    def _columns(self) -> None:
        md = [d.metadata for d in self.docs]
        if self.name == "catalog":
            self.demographic = np.array([m["demographic"] for m in md])
            self.genre_sets = [set(m["genres"]) for m in md]
            rows = [(i, e["edition"], e["price"], e["in_stock"]) for i, m in enumerate(md) for e in m["editions"]]
            self.ed_doc = np.array([r[0] for r in rows], dtype=np.int64)
            self.ed_kind = np.array([r[1] for r in rows])
            self.ed_price = np.array([r[2] for r in rows], dtype=np.float64)
            self.ed_stock = np.array([r[3] for r in rows], dtype=bool)
        else:
            self.category = np.array([m["category"] for m in md])

    @property
    def dimensions(self) -> int:
        return self.vectors.shape[1]

    def mask(self, filters: dict | None) -> np.ndarray | None:
        """Boolean mask of the documents the filters allow (None: no filtering)."""
        f = check_filters(self.name, filters)
        if not f:
            return None
        n = len(self.docs)
        if self.name == "policy":
            return self.category == f["category"]
        allowed = np.ones(n, dtype=bool)
        if "demographic" in f:
            allowed &= np.isin(self.demographic, f["demographic"])
        if "genres" in f:
            wanted = {g.lower() for g in f["genres"]}
            allowed &= np.array([wanted <= s for s in self.genre_sets])
        edition_keys = {"edition", "in_stock", "price_min", "price_max"} & set(f)
        if edition_keys:
            ok = np.ones(len(self.ed_doc), dtype=bool)
            if "edition" in f:
                ok &= self.ed_kind == f["edition"]
            if "in_stock" in f:
                ok &= self.ed_stock == bool(f["in_stock"])
            if "price_min" in f:
                ok &= self.ed_price >= f["price_min"]
            if "price_max" in f:
                ok &= self.ed_price <= f["price_max"]
            allowed &= np.bincount(self.ed_doc[ok], minlength=n) > 0
        return allowed

    def search(self, query: np.ndarray, k: int, filters: dict | None = None, exclude: Iterable[str] = ()) -> list[tuple[int, float]]:
        import faiss

        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        allowed = self.mask(filters)
        excluded = {i for i, d in enumerate(self.docs) if d.id in set(exclude)} if exclude else set()
        if excluded:
            allowed = np.ones(len(self.docs), dtype=bool) if allowed is None else allowed.copy()
            allowed[list(excluded)] = False
        if allowed is not None and allowed.sum() <= EXACT_SCAN_MAX:
            ids = np.flatnonzero(allowed)
            scores = self.vectors[ids] @ query[0]
            top = np.argsort(-scores)[:k]
            return [(int(ids[j]), float(scores[j])) for j in top]
        params = faiss.SearchParametersHNSW(efSearch=max(EF_SEARCH, k))
        if allowed is not None:
            params.sel = faiss.IDSelectorBitmap(len(allowed), np.packbits(allowed, bitorder="little"))
        scores, ids = self.index.search(query, k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    # --- persistence --------------------------------------------------------------------------

    def save(self, folder: Path, meta: dict) -> None:
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        np.save(folder / "vectors.npy", self.vectors)
        with open(folder / "docs.jsonl", "w", encoding="utf-8") as fh:
            for d in self.docs:
                fh.write(json.dumps(d.to_json(), ensure_ascii=False) + "\n")
        (folder / "manifest.json").write_text(json.dumps({**meta, "name": self.name, "documents": len(self.docs),
                                                           "dimensions": self.dimensions, "hnsw_m": HNSW_M,
                                                           "ef_construction": EF_CONSTRUCTION}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "VectorIndex":
        import faiss

        manifest = json.loads((folder / "manifest.json").read_text())
        docs = [Document(**json.loads(line)) for line in open(folder / "docs.jsonl", encoding="utf-8")]
        index = faiss.read_index(str(folder / "index.faiss"))
        return cls(manifest["name"], docs, np.load(folder / "vectors.npy"), index)


def build_index(name: str, embed: Callable[[list[str]], np.ndarray], docs: list[Document] | None = None,
                batch_size: int = 32) -> VectorIndex:
    docs = corpus(name) if docs is None else docs
    chunks = []
    for start in tqdm(range(0, len(docs), batch_size), desc=f"indexing {name}", unit="batch"):
        chunks.append(embed([d.text for d in docs[start:start + batch_size]]))
    return VectorIndex(name, docs, np.concatenate(chunks))


def index_folder(root: Path, embedder_version: str, name: str) -> Path:
    return root / embedder_version / name


def build_all(embedder_ref: str = "embedder", index_dir: str | None = None, force: bool = False,
              log: Callable[[str], None] = print) -> Path:
    """`mangaassist index`: (re)build missing indexes for the current embedder version."""
    from models.registry import Registry
    from models.runtime import TextModel

    registry = Registry()
    folder = registry.resolve(embedder_ref)
    version = json.loads((folder / "manifest.json").read_text())["version"]
    root = index_root(index_dir)
    model = None
    for name in INDEXES:
        target = index_folder(root, version, name)
        if (target / "manifest.json").exists() and not force:
            log(f"index {name}: up to date ({target})")
            continue
        model = model or TextModel(folder, "onnx", "int8")
        started = time.time()
        index = build_index(name, model.embed)
        index.save(target, {"embedder_version": version, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        log(f"index {name}: {len(index.docs)} documents in {time.time() - started:.1f} s -> {target}")
    return root / version
