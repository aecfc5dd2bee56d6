"""The embedded retrieval indexes: FAISS HNSW over catalog series and policy passages, with filters.

Built by `mangaassist index` with the registered embedder, persisted under
`<index_dir>/<embedder version>/<name>/` (index.faiss, vectors.npy, docs.jsonl, manifest.json), so
an index is always queried with the embedder that built it.

Kinds of FAISS index (`IndexSpec.kind`, recorded in the manifest and used again on load; `mangaassist index
--index-kind`):
- `hnsw` (the default: the 364 series and 174 policy passages served today): one HNSW graph over the vectors.
- `ivfpq`: for product-scale catalogs (100k-1M+ products). Inverted lists (an exact scan of the list
  centroids picks `nprobe` of them) holding 4-bit PQ codes of each vector's residual, scanned with FAISS's
  SIMD fast-scan; the best `rerank` candidates are re-scored on the exact vectors, so scores are exact
  inner products. Shopper queries sit far from every product (cosine ~0.5 to their nearest product, ~0.93
  between products) and their exact top 10 is spread over many series: HNSW's greedy walk misses most of
  it at 100k+ (benchmarks/results/retrieval.json).
- `ivf`: IVF-Flat behind an HNSW coarse quantizer (kept for comparison: below ivfpq at 50k, see benchmarks/README.md).

Both IVF kinds cluster and probe by L2 distance. The vectors are normalized, so L2 ranks them exactly as
inner product does, but the lists are not alike: k-means cells are L2 cells, and the lists whose centroids
are nearest in L2 hold the query's neighbours, while the largest inner product with a centroid favours the
tight clusters (their centroids are longer). At 1M products, the 256 nearest of 1024 lists hold 97.6% of a
query's exact top 10 by L2 and 89% by inner product.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
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
INDEX_KINDS = ("hnsw", "ivf", "ivfpq")
IVF_NPROBE = 64
IVF_TRAIN_PER_LIST = 64  # k-means points per list (FAISS wants 39+): a seeded sample, not every vector
IVFPQ_NPROBE = 256  # of 1024 lists at 1M products: recall@10 0.96 at ~4 ms p50 (benchmarks/results/retrieval.json)
PQ_M = 96  # ivfpq: 4-bit sub-quantizers of 4 dimensions (48 bytes per vector)
PQ_RERANK = 2000  # ivfpq: candidates re-scored exactly per query (at least 10 k)


def ivf_lists(n: int) -> int:
    """Lists for `n` vectors: the power of two nearest 4 sqrt(n) (1M -> 4096), at least 1, and at most
    n / 39 so that k-means has enough points per centroid."""
    target = 2 ** round(np.log2(max(1.0, 4 * np.sqrt(n))))
    return int(max(1, min(target, n // 39)))


@dataclass(frozen=True)
class IndexSpec:
    """How a VectorIndex is built and searched (persisted in its manifest)."""

    kind: str = "hnsw"
    m: int = HNSW_M  # HNSW links per node: the graph over the vectors (hnsw) or over the list centroids (ivf)
    ef_construction: int = EF_CONSTRUCTION
    ef_search: int = EF_SEARCH  # hnsw: candidates per query; ivf: at least 2 nprobe, for the coarse quantizer
    nlist: int | None = None  # ivf: inverted lists (None: ivf_lists(n) at build time)
    nprobe: int | None = None  # ivf, ivfpq: lists scanned per query (None: IVF_NPROBE, IVFPQ_NPROBE)
    pq_m: int = PQ_M  # ivfpq: 4-bit sub-quantizers per vector
    rerank: int = PQ_RERANK  # ivfpq: candidates from the compressed scan, re-scored on the exact vectors

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind {self.kind!r} is not one of {INDEX_KINDS}")
        if self.nprobe is None and self.kind != "hnsw":
            object.__setattr__(self, "nprobe", IVFPQ_NPROBE if self.kind == "ivfpq" else IVF_NPROBE)


def _sample(vectors: np.ndarray, count: int) -> np.ndarray:
    n = len(vectors)
    return vectors if n <= count else vectors[np.sort(np.random.default_rng(0).choice(n, count, replace=False))]


def build_faiss(vectors: np.ndarray, spec: IndexSpec = IndexSpec()):
    """The FAISS index of `spec` over `vectors` (float32, normalized: inner product = cosine) and the spec
    as built (nlist resolved). Seeded: the same vectors give the same index."""
    import faiss

    n, d = vectors.shape
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.add(vectors)
        return index, spec
    if spec.kind == "ivf":
        nlist = spec.nlist or ivf_lists(n)
        quantizer = faiss.IndexHNSWFlat(d, spec.m, faiss.METRIC_L2)
        quantizer.hnsw.efConstruction = spec.ef_construction
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    else:
        # a quarter of ivf's lists (1M -> 1024): few enough for an exact coarse scan (0.4M multiply-adds per query),
        # large enough that queries unlike any product still find their neighbours in the lists scanned; the
        # vectors as 4-bit PQ codes scanned with SIMD lookups (FAISS fast-scan); the exact vectors
        # (VectorIndex.vectors) re-rank the best `rerank` candidates
        if d % spec.pq_m:
            raise ValueError(f"pq_m {spec.pq_m} does not divide {d} dimensions")
        nlist = spec.nlist or max(1, ivf_lists(n) // 4)
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, spec.pq_m, 4, faiss.METRIC_L2)
        # codes of the vectors, not of their residuals to the list centroids: one lookup table per query instead
        # of one per list (fast-scan re-quantizes each to 8 bits); at 1M: recall@10 0.91 -> 0.97, 5.1 -> 3.4 ms
        index.by_residual = False
    index.cp.seed, index.cp.niter = 1234, 20
    index.cp.min_points_per_centroid = 1  # small test sets: fewer points than 39 per list is fine
    index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
    # k-means assigns with an exact scan (the HNSW quantizer gets the final centroids): exact assignment
    # keeps the lists balanced and the build deterministic
    index.clustering_index = faiss.IndexFlatL2(d)
    index.train(_sample(vectors, max(nlist * IVF_TRAIN_PER_LIST, 65_536 if spec.kind == "ivfpq" else 0)))  # PQ too
    if spec.kind == "ivf":
        quantizer.hnsw.efSearch = max(spec.ef_search, 2 * spec.nprobe)  # assignment of the vectors to lists
    index.add(vectors)
    index.nprobe = spec.nprobe
    return index, replace(spec, nlist=nlist)


def knn(index, spec: IndexSpec, vectors: np.ndarray, query: np.ndarray, k: int,
        allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """The `k` best (row, inner product) of `index` (built by build_faiss over `vectors`) for one query, best
    first, among the `allowed` rows only when given (a boolean mask)."""
    import faiss

    query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    n = index.ntotal
    wanted = min(k, n if allowed is None else int(allowed.sum()))
    probe = query
    if spec.kind != "hnsw":  # L2 lists: the same as inner product for a unit query (scores use the query as given)
        probe = query / max(float(np.linalg.norm(query)), 1e-12)
    if spec.kind == "ivfpq":
        # no IDSelector in FAISS's fast-scan: filter the candidates, and fetch more while too few are allowed
        fetch, nprobe = max(spec.rerank, 10 * k), min(spec.nprobe, spec.nlist)  # fast-scan needs nprobe <= nlist
        while True:
            _, cand = index.search(probe, min(fetch, n), params=faiss.SearchParametersIVF(nprobe=nprobe))
            cand = cand[0][cand[0] >= 0]
            if allowed is not None:
                cand = cand[allowed[cand]]
            if len(cand) >= wanted or (fetch >= n and nprobe >= spec.nlist):
                break
            fetch, nprobe = 4 * fetch, min(4 * nprobe, spec.nlist)
        scores = vectors[cand] @ query[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(cand[j]), float(scores[j])) for j in top]
    sel, bitmap = None, None
    if allowed is not None:  # the bitmap must outlive the selector, which only holds its pointer
        bitmap = np.packbits(allowed, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    nprobe = min(spec.nprobe or 1, spec.nlist or 1)
    while True:
        if spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(spec.ef_search, k))
        else:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            params.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(spec.ef_search, 2 * nprobe))
        if sel is not None:
            params.sel = sel
        scores, ids = index.search(probe, k, params=params)
        if spec.kind == "ivf":  # squared L2 distances, in inner-product order: the inner products themselves
            scores = (vectors[np.maximum(ids[0], 0)] @ query[0])[None]
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        # IVF: the lists probed may hold fewer than k allowed documents: probe more (all of them at worst)
        if spec.kind != "ivf" or len(hits) >= wanted or nprobe >= spec.nlist:
            return hits
        nprobe = min(4 * nprobe, spec.nlist)


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


def manifest_spec(manifest: dict) -> IndexSpec:
    """The IndexSpec an index was built with, from its manifest.json."""
    # indexes built before IndexSpec existed are HNSW with the manifest's M and efConstruction
    return IndexSpec(**manifest.get("index", {"kind": "hnsw", "m": manifest.get("hnsw_m", HNSW_M),
                                              "ef_construction": manifest.get("ef_construction", EF_CONSTRUCTION)}))


def spec_changes(built: IndexSpec, wanted: IndexSpec) -> dict[str, tuple]:
    """The settings (name: (built, wanted)) in which an index built with `built` is not what `wanted` asks for;
    empty when it is. A `wanted` nlist of None (resolved from the vector count at build time) matches any."""
    if wanted.nlist is None:
        wanted = replace(wanted, nlist=built.nlist)
    old, new = asdict(built), asdict(wanted)
    return {k: (old[k], new[k]) for k in new if old[k] != new[k]}


class VectorIndex:
    """A FAISS index (`IndexSpec`: hnsw, ivf or ivfpq; inner product on normalized vectors = cosine) plus
    columnar metadata for filtering."""

    def __init__(self, name: str, docs: list[Document], vectors: np.ndarray, index=None, spec: IndexSpec = IndexSpec()):
        self.name, self.docs, self.vectors = name, docs, np.ascontiguousarray(vectors, dtype=np.float32)
        if index is None:
            index, spec = build_faiss(self.vectors, spec)
        self.index, self.spec = index, spec
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
        return knn(self.index, self.spec, self.vectors, query, k, allowed)

    # --- persistence --------------------------------------------------------------------------

    def save(self, folder: Path, meta: dict) -> None:
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        # the manifest goes first and comes back last: a save cut short leaves no index, never a manifest that
        # describes other files (build_all then builds it again)
        (folder / "manifest.json").unlink(missing_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        np.save(folder / "vectors.npy", self.vectors)
        with open(folder / "docs.jsonl", "w", encoding="utf-8") as fh:
            for d in self.docs:
                fh.write(json.dumps(d.to_json(), ensure_ascii=False) + "\n")
        (folder / "manifest.json").write_text(json.dumps({**meta, "name": self.name, "documents": len(self.docs),
                                                           "dimensions": self.dimensions, "hnsw_m": self.spec.m,
                                                           "ef_construction": self.spec.ef_construction,
                                                           "index": asdict(self.spec)}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "VectorIndex":
        import faiss

        manifest = json.loads((folder / "manifest.json").read_text())
        docs = [Document(**json.loads(line)) for line in open(folder / "docs.jsonl", encoding="utf-8")]
        index = faiss.read_index(str(folder / "index.faiss"))
        return cls(manifest["name"], docs, np.load(folder / "vectors.npy"), index, manifest_spec(manifest))


def build_index(name: str, embed: Callable[[list[str]], np.ndarray], docs: list[Document] | None = None,
                batch_size: int = 32, spec: IndexSpec = IndexSpec()) -> VectorIndex:
    docs = corpus(name) if docs is None else docs
    chunks = []
    for start in tqdm(range(0, len(docs), batch_size), desc=f"indexing {name}", unit="batch"):
        chunks.append(embed([d.text for d in docs[start:start + batch_size]]))
    return VectorIndex(name, docs, np.concatenate(chunks), spec=spec)


def index_folder(root: Path, embedder_version: str, name: str) -> Path:
    return root / embedder_version / name


def build_all(embedder_ref: str = "embedder", index_dir: str | None = None, force: bool = False,
              log: Callable[[str], None] = print, spec: IndexSpec | None = None) -> Path:
    """`mangaassist index`: (re)build the indexes for the current embedder version that are missing, or (`spec`
    given) built with another kind or other settings than `spec`. `spec` None: an index on disk stays as it
    is, whatever its kind, and a missing one is built as IndexSpec() (hnsw)."""
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
            built = manifest_spec(json.loads((target / "manifest.json").read_text()))
            changes = spec_changes(built, spec) if spec is not None else {}
            if not changes:
                log(f"index {name}: up to date ({built.kind}, {target})")
                continue
            log(f"index {name}: rebuilding, built with other settings than asked: "
                + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items()))
        # the served local runtime (closer to fp32 than int8, and 2x faster on AMX); fp32 on CPUs without bf16
        model = model or TextModel(folder, "openvino", "bf16")
        started = time.time()
        index = build_index(name, model.embed, spec=spec or IndexSpec())
        index.save(target, {"embedder_version": version, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        log(f"index {name}: {len(index.docs)} documents ({index.spec.kind}) in {time.time() - started:.1f} s -> {target}")
    return root / version
