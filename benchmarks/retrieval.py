"""Retrieval at catalog scale: FAISS HNSW against exact search, 10k to 1M products.

    python -m benchmarks.retrieval [--sizes 10000,100000,1000000] [--out benchmarks/results]

Products come from the seeded catalog expander (every real volume x edition, then synthetic ones)
and are embedded with the served embedder (ONNX int8), once: the vectors are cached under
MANGAASSIST_HOME/bench/ in resumable chunks. Queries are real shopper messages (the intent
dataset's catalog intents). For each size: HNSW build time and memory with the served
parameters (serve.index), then recall@10 against exact inner-product search and single-query
latency over an efSearch sweep.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.datasets import load_catalog, load_intents
from models.expand import products
from models.paths import home
from models.runtime import TextModel
from serve.index import EF_CONSTRUCTION, EF_SEARCH, HNSW_M
from serve.loading import resolve_model
from serve.routing import index_for

from .report import machine, save_result

CHUNK = 50_000


def cache_dir(embedder: Path) -> Path:
    path = home() / "bench" / f"product-vectors-{embedder.name}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_vectors(cache: Path, count: int) -> np.ndarray:
    """The embedded products already in the cache, at most `count` (float32, normalized)."""
    chunks = sorted(p for p in cache.glob("[0-9][0-9][0-9][0-9].npy"))
    chunks = [p for i, p in enumerate(chunks) if p.name == f"{i:04d}.npy"]  # a contiguous prefix only
    if not chunks:
        return np.empty((0, 384), dtype=np.float32)
    vecs = np.concatenate([np.load(p) for p in chunks])[:count].astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def sampled_vectors(real: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` vectors drawn from a 64-component Gaussian mixture fitted to the real product embeddings
    (for sizes beyond what was embedded: the same covariance structure, no real text behind them)."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    fit_on = real[rng.choice(len(real), min(len(real), 50_000), replace=False)]
    gmm = GaussianMixture(64, covariance_type="diag", random_state=seed, max_iter=50).fit(fit_on)
    out, _ = gmm.sample(count)
    rng.shuffle(out)
    out = out.astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def product_vectors(folder: Path, count: int, threads: int) -> np.ndarray:
    """The first `count` products' embeddings (float32, normalized), computed once per embedder version."""
    cache = cache_dir(folder)
    n_chunks = -(-count // CHUNK)
    missing = [c for c in range(n_chunks) if not (cache / f"{c:04d}.npy").exists()]
    if missing:
        import itertools

        model = TextModel(folder, "onnx", "int8", threads=threads)
        stream = products(load_catalog(), extra=n_chunks * CHUNK)  # seeded and ordered: chunk c is fixed
        bar = tqdm(total=len(missing) * CHUNK, desc="embedding products", unit="doc", smoothing=0.05)
        for c in range(n_chunks):
            texts = [p.document() for p in itertools.islice(stream, CHUNK)]
            if c not in missing:
                continue
            order = np.argsort([len(t) for t in texts])  # similar lengths per batch: little padding
            out = np.empty((len(texts), 384), dtype=np.float32)
            for s in range(0, len(texts), 64):
                idx = order[s:s + 64]
                out[idx] = model.embed([texts[i] for i in idx])
                bar.update(len(idx))
            tmp = cache / f"{c:04d}.tmp.npy"
            np.save(tmp, out.astype(np.float16))  # half the disk; recall is measured on these same vectors
            tmp.rename(cache / f"{c:04d}.npy")
        bar.close()
    return cached_vectors(cache, count)


def query_vectors(folder: Path, n: int, threads: int) -> np.ndarray:
    texts = [ex.text for split in ("test", "validation", "train") for ex in load_intents(split)
             if index_for(ex.label) == "catalog"][:n]
    return TextModel(folder, "onnx", "int8", threads=threads).embed(texts)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_size(vectors: np.ndarray, queries: np.ndarray, ef_construction: int, ef_searches: list[int],
               cache: Path) -> dict:
    import faiss

    n, d = vectors.shape
    exact = faiss.IndexFlatIP(d)
    exact.add(vectors)
    truth_scores, truth = exact.search(queries, 10)
    del exact
    before = rss_mb()
    cached = cache / f"hnsw-{n}-m{HNSW_M}-efc{ef_construction}.faiss"
    t0 = time.perf_counter()
    if cached.exists():  # built by an earlier run on the same vectors: its build time is in that run's result
        index, build_s = faiss.read_index(str(cached)), None
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        for s in tqdm(range(0, n, 20_000), desc=f"HNSW build {n:,}", unit="chunk", leave=False):
            index.add(vectors[s:s + 20_000])
        build_s = round(time.perf_counter() - t0, 1)
        faiss.write_index(index, str(cached))
    index_mb = rss_mb() - before
    faiss.omp_set_num_threads(1)  # one query per call on one thread: what a Retriever replica does
    sweep = []
    for ef in ef_searches:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        found, scores, lat = [], [], []
        for q in queries:
            t = time.perf_counter()
            sc, ids = index.search(q[None, :], 10, params=params)
            lat.append(time.perf_counter() - t)
            found.append(ids[0])
            scores.append(sc[0])
        id_recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        # ann-benchmarks' convention: a result counts when it is as close as the 10th true neighbour
        # (volumes and editions of one series embed almost alike: which of the tied ones comes back is arbitrary)
        recall = float(np.mean([(sc >= ts[-1] - 1e-3).mean() for sc, ts in zip(scores, truth_scores)]))
        lat_ms = np.array(lat) * 1000
        sweep.append({"ef_search": ef, "recall@10": round(recall, 4), "id_recall@10": round(id_recall, 4),
                      "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
                      "p99_ms": round(float(np.percentile(lat_ms, 99)), 3), "qps_1_thread": round(len(lat) / sum(lat), 1)})
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return {"products": n, "hnsw_m": HNSW_M, "ef_construction": ef_construction, "build_s": build_s,
            "index_memory_mb": round(index_mb, 1), "vectors_mb": round(vectors.nbytes / 2**20, 1), "sweep": sweep}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in runs:
        axes[0].plot([s["p50_ms"] for s in run["sweep"]], [s["recall@10"] for s in run["sweep"]], "o-",
                     label=f"{run['products']:,} products")
    axes[0].axhline(0.95, color="grey", ls="--", lw=0.8)
    axes[0].set(xlabel="p50 search latency (ms, 1 thread)", ylabel="recall@10 vs exact", title="HNSW: recall vs latency (efSearch sweep)")
    axes[0].legend()
    sizes = [r["products"] for r in runs]
    served = [next(s for s in r["sweep"] if s["ef_search"] == EF_SEARCH) for r in runs]
    axes[1].plot(sizes, [s["p50_ms"] for s in served], "o-", label="p50")
    axes[1].plot(sizes, [s["p99_ms"] for s in served], "s--", label="p99")
    axes[1].set(xscale="log", xlabel="products", ylabel="ms", title=f"search latency at efSearch={EF_SEARCH}")
    axes[1].legend()
    axes[2].plot(sizes, [r["index_memory_mb"] for r in runs], "o-", label="HNSW index (RSS growth)")
    axes[2].plot(sizes, [r["vectors_mb"] for r in runs], "s--", label="raw float32 vectors")
    axes[2].set(xscale="log", yscale="log", xlabel="products", ylabel="MB", title="memory")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef-construction", type=int, default=EF_CONSTRUCTION)
    parser.add_argument("--ef-search", default="16,32,64,128,256")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for embedding and index builds")
    parser.add_argument("--embed-only", action="store_true", help="only fill the vector cache")
    parser.add_argument("--embedded", type=int, default=None, help="embed this many products; beyond them, sample "
                        "from a Gaussian mixture fitted to their embeddings (default: embed every product)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    embedder = resolve_model("embedder")  # verified once: every checksum is a full read
    if args.embed_only:
        product_vectors(embedder, max(sizes), args.threads)
        return 0
    real = product_vectors(embedder, args.embedded or max(sizes), args.threads)
    vectors = real if len(real) >= max(sizes) else np.concatenate([real, sampled_vectors(real, max(sizes) - len(real))])
    import faiss

    faiss.omp_set_num_threads(args.threads)
    queries = query_vectors(embedder, args.queries, args.threads)
    runs = [bench_size(vectors[:n], queries, args.ef_construction, [int(e) for e in args.ef_search.split(",")],
                       cache_dir(embedder)) for n in sizes]
    result = {"machine": machine(), "queries": len(queries), "served_ef_search": EF_SEARCH,
              "embedded_products": len(real), "sampled_vectors": len(vectors) - len(real),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "runs": runs}
    save_result(args.out, "retrieval", result)
    plot(result, args.out / "retrieval.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
