"""Retrieval at catalog scale: FAISS HNSW and IVF (HNSW coarse quantizer) against exact search, 10k to 1M products.

    python -m benchmarks.retrieval [--sizes 10000,100000,1000000] [--embedded 200000] [--out benchmarks/results]

Products come from the seeded catalog expander (every real volume x edition, then synthetic ones)
and are embedded with the served embedder (ONNX int8), once: the vectors are cached under
MANGAASSIST_HOME/bench/ in resumable chunks. Beyond `--embedded` products, vectors are sampled from
a Gaussian mixture fitted to the embedded ones (labelled in the result; `--real-only-sizes` adds runs on
embedded vectors alone). Queries are real shopper messages (the intent dataset's catalog intents).
For each size and each index kind of serve.index (`hnsw`: efSearch sweep; `ivf`: nprobe sweep), both
built by serve.index.build_faiss: build time and memory, then recall@10 against exact inner-product
search over the same vectors and single-query latency on one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.datasets import load_catalog, load_intents
from models.expand import products
from models.paths import home
from models.registry import MANIFEST
from models.runtime import TextModel
from serve.index import EF_CONSTRUCTION, INDEX_KINDS, IndexSpec, build_faiss, knn
from serve.loading import resolve_model
from serve.routing import index_for

from .report import machine, save_result

CHUNK = 50_000


def cache_dir(embedder: Path) -> Path:
    """Keyed by the embedder's int8 ONNX file (its registry checksum), not its version: a version that only
    moved with the pipeline's code embeds the same vectors."""
    sha = json.loads((embedder / MANIFEST).read_text())["files"]["onnx/model.int8.onnx"]
    path = home() / "bench" / f"product-vectors-{sha[:12]}"
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


SWEPT = {"hnsw": "ef_search", "ivf": "nprobe", "ivfpq": "nprobe"}  # what each kind's sweep varies


def sweep(index, spec: IndexSpec, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
          truth_scores: np.ndarray, values: list[int], sampled_from: int | None) -> list[dict]:
    """recall@10 and single-query latency (one thread, serve.index.knn as the Retriever calls it) for each
    efSearch (hnsw) or nprobe (ivf, ivfpq: with the served re-rank count)."""
    import faiss

    faiss.omp_set_num_threads(1)  # one query per call on one thread: what a Retriever replica does
    out = []
    for value in values:
        setting = replace(spec, **{SWEPT[spec.kind]: value})
        found, scores, lat, cpu = [], [], [], []
        for q in queries:
            t, c = time.perf_counter(), time.thread_time()
            hits = knn(index, setting, vectors, q, 10)
            lat.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
            found.append([i for i, _ in hits])
            scores.append(np.array([s for _, s in hits]))
        per_query = np.array([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        # ann-benchmarks' convention: a result counts when it is as close as the 10th true neighbour
        # (volumes and editions of one series embed almost alike: which of the tied ones comes back is arbitrary)
        recall = float(np.mean([(sc >= ts[-1] - 1e-3).sum() / 10 for sc, ts in zip(scores, truth_scores)]))
        lat_ms, cpu_ms = np.array(lat) * 1000, np.array(cpu) * 1000
        row = {SWEPT[spec.kind]: value, "recall@10": round(recall, 4), "id_recall@10": round(float(per_query.mean()), 4),
               "p50_ms": round(float(np.percentile(lat_ms, 50)), 3), "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
               "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 3), "qps_1_thread": round(len(lat) / sum(lat), 1)}
        if sampled_from is not None:  # id recall of the queries whose exact top 10 are all embedded products
            real = (truth < sampled_from).all(axis=1)
            row["id_recall@10_real_truth"] = round(float(per_query[real].mean()), 4) if real.any() else None
        out.append(row)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return out


def build(kind: str, vectors: np.ndarray, spec: IndexSpec, cache: Path, tag: str):
    """(index, spec as built, build seconds, whether the index was read from the cache, RSS growth MB). A cached
    index (same vectors: `tag` names the embedded count) keeps the build time measured when it was built."""
    import faiss

    n = len(vectors)
    name = {"hnsw": f"hnsw-{n}-{tag}-m{spec.m}-efc{spec.ef_construction}",
            "ivf": f"ivf-l2-{n}-{tag}-m{spec.m}-nlist{spec.nlist or 'auto'}",  # l2: lists by L2 (before: inner product)
            "ivfpq": f"ivfpq-l2-{n}-{tag}-m{spec.m}-nlist{spec.nlist or 'auto'}-pq{spec.pq_m}"}[kind]
    cached, meta = cache / f"{name}.faiss", cache / f"{name}.json"
    before = rss_mb()
    if cached.exists() and meta.exists():
        index, built = faiss.read_index(str(cached)), json.loads(meta.read_text())
        return index, IndexSpec(**built["spec"]), built["build_s"], True, round(rss_mb() - before, 1)
    t0 = time.perf_counter()
    index, spec = build_faiss(vectors, spec)
    build_s = round(time.perf_counter() - t0, 1)
    mem = round(rss_mb() - before, 1)
    faiss.write_index(index, str(cached))
    meta.write_text(json.dumps({"spec": asdict(spec), "build_s": build_s, "loadavg_after_build": os.getloadavg()}))
    return index, spec, build_s, False, mem


def bench_size(vectors: np.ndarray, queries: np.ndarray, args, cache: Path, tag: str, embedded: int) -> dict:
    import faiss

    n, d = vectors.shape
    exact = faiss.IndexFlatIP(d)
    exact.add(vectors)
    t = time.perf_counter()
    truth_scores, truth = exact.search(queries, 10)
    exact_ms = (time.perf_counter() - t) / len(queries) * 1000
    del exact
    sampled_from = embedded if n > embedded else None
    run = {"products": n, "embedded": min(n, embedded), "sampled": max(0, n - embedded),
           "vectors_mb": round(vectors.nbytes / 2**20, 1), "exact_ms_per_query_all_threads": round(exact_ms, 2)}
    if sampled_from is not None:
        run["truth_share_sampled"] = round(float((truth >= embedded).mean()), 4)
    for kind, spec, values in (("hnsw", IndexSpec(kind="hnsw", ef_construction=args.ef_construction), args.ef_search),
                               ("ivf", IndexSpec(kind="ivf"), args.nprobe), ("ivfpq", IndexSpec(kind="ivfpq"), args.nprobe)):
        if kind not in args.kinds:
            continue
        print(f"{n:,} vectors ({tag}): building {kind}", flush=True)
        index, spec, build_s, from_cache, mem = build(kind, vectors, spec, cache, tag)
        run[kind] = {"spec": asdict(spec), "build_s": build_s, "built_by_an_earlier_run": from_cache, "index_memory_mb": mem,
                     "sweep": sweep(index, spec, vectors, queries, truth, truth_scores, values, sampled_from)}
        del index
    return run


def served_row(run: dict, kind: str, result: dict) -> dict | None:
    if kind not in run:
        return None
    key = SWEPT[kind]
    return next((s for s in run[kind]["sweep"] if s[key] == result["served"][kind][key]), None)


STYLES = {"hnsw": "o--", "ivf": "^:", "ivfpq": "s-"}
LABELS = {"hnsw": "HNSW M32", "ivf": "IVF-Flat, HNSW quantizer", "ivfpq": "IVF-PQ fast-scan + exact re-rank"}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    every = [(r, "") for r in runs] + [(r, " real only") for r in result.get("real_only_runs", [])]
    for i, (run, note) in enumerate(every):
        for kind, style in STYLES.items():
            if kind in run:
                sw = run[kind]["sweep"]
                ax.plot([s["p50_ms"] for s in sw], [s["recall@10"] for s in sw], style, color=colors[i % len(colors)],
                        alpha=0.5 if note else 1.0, label=f"{LABELS[kind]}, {run['products']:,}{note}")
    ax.axhline(0.95, color="grey", ls=":", lw=0.8)
    ax.axvline(5, color="grey", ls=":", lw=0.8)
    ax.set(xscale="log", xlabel="p50 search latency (ms, 1 thread)", ylabel="recall@10 vs exact",
           title="recall vs latency (efSearch or nprobe swept)")
    ax.legend(fontsize=7)
    sizes = [r["products"] for r in runs]
    for kind, style in STYLES.items():
        rows = [served_row(r, kind, result) for r in runs]
        if all(rows):
            param = f"{SWEPT[kind]} {result['served'][kind][SWEPT[kind]]}"
            axes[0][1].plot(sizes, [s["recall@10"] for s in rows], style, label=f"{kind} ({param})")
            axes[1][0].plot(sizes, [s["p50_ms"] for s in rows], style, label=f"{kind} p50")
            axes[1][0].plot(sizes, [s["p99_ms"] for s in rows], style, alpha=0.4, label=f"{kind} p99")
            axes[1][1].plot(sizes, [r[kind]["build_s"] or float("nan") for r in runs], style, label=f"{kind} build (s)")
    axes[0][1].axhline(0.95, color="grey", ls=":", lw=0.8)
    axes[0][1].set(xscale="log", xlabel="products", ylabel="recall@10", title="recall at the served setting")
    axes[0][1].legend()
    axes[1][0].set(xscale="log", yscale="log", xlabel="products", ylabel="ms", title="search latency at the served setting")
    axes[1][0].legend()
    axes[1][1].plot(sizes, [r["vectors_mb"] for r in runs], "^:", label="raw float32 vectors (MB)")
    for kind, style in STYLES.items():
        if all(kind in r for r in runs):
            axes[1][1].plot(sizes, [r[kind]["index_memory_mb"] for r in runs], style, alpha=0.5, label=f"{kind} index (MB, RSS growth)")
    axes[1][1].set(xscale="log", yscale="log", xlabel="products", title="build time (2 threads) and memory")
    axes[1][1].legend(fontsize=8)
    if result.get("sampled_vectors"):
        fig.suptitle(f"{result['embedded_products']:,} embedded products; beyond them, vectors sampled from a mixture "
                     f"fitted to them ({result['sampled_vectors']:,} at the largest size)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="hnsw,ivfpq", help="index kinds of serve.index to measure (hnsw, ivf, ivfpq)")
    parser.add_argument("--ef-construction", type=int, default=EF_CONSTRUCTION)
    parser.add_argument("--ef-search", default="16,32,64,128,256")
    parser.add_argument("--nprobe", default="64,128,256,384,512,1024", help="ivf, ivfpq: lists scanned per query")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for embedding and index builds")
    parser.add_argument("--embed-only", action="store_true", help="only fill the vector cache")
    parser.add_argument("--embedded", type=int, default=None, help="embed this many products; beyond them, sample "
                        "from a Gaussian mixture fitted to their embeddings (default: embed every product)")
    parser.add_argument("--real-only-sizes", default="", help="also these sizes on embedded vectors alone (<= --embedded)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    real_sizes = [int(s) for s in args.real_only_sizes.split(",") if s]
    args.kinds = args.kinds.split(",")
    args.ef_search = [int(e) for e in args.ef_search.split(",")]
    args.nprobe = [int(e) for e in args.nprobe.split(",")]
    embedder = resolve_model("embedder")  # verified once: every checksum is a full read
    if args.embed_only:
        product_vectors(embedder, max(sizes + real_sizes), args.threads)
        return 0
    real = product_vectors(embedder, max([args.embedded or max(sizes), *real_sizes]), args.threads)
    if real_sizes and max(real_sizes) > len(real):
        parser.error("--real-only-sizes must not exceed the embedded products")
    embedded = min(len(real), args.embedded or max(sizes))
    vectors = real[:embedded]
    if len(vectors) < max(sizes):
        # kept: an index cached by an earlier run must be searched over exactly the vectors it was built on
        kept = cache_dir(embedder) / f"sampled-{embedded}-{max(sizes) - embedded}.npy"
        if not kept.exists():
            np.save(kept.with_suffix(".tmp.npy"), sampled_vectors(vectors, max(sizes) - len(vectors)))
            kept.with_suffix(".tmp.npy").rename(kept)
        vectors = np.concatenate([vectors, np.load(kept)])
    import faiss

    faiss.omp_set_num_threads(args.threads)
    queries = query_vectors(embedder, args.queries, args.threads)
    cache = cache_dir(embedder)
    served = {kind: asdict(IndexSpec(kind=kind)) for kind in INDEX_KINDS}
    result = {"machine": machine(), "embedder_version": embedder.name, "queries": len(queries), "served": served,
              "embedded_products": embedded, "sampled_vectors": len(vectors) - embedded}
    result["runs"] = [bench_size(vectors[:n], queries, args, cache, f"e{embedded}", embedded) for n in sizes]
    # the same sizes on embedded products alone (no sampled vectors): what sampling changes
    result["real_only_runs"] = [bench_size(real[:n], queries, args, cache, f"e{n}", n) for n in real_sizes]
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    save_result(args.out, "retrieval", result)
    plot(result, args.out / "retrieval.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
