"""benchmarks/retrieval.py end to end on seeded vectors (no embedder, no plot): what its result records."""
import numpy as np

from benchmarks import retrieval


def unit(n, seed):
    v = np.random.default_rng(seed).normal(size=(n, 32))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_the_result_records_the_embedder_version(tmp_path, monkeypatch):
    results = {}
    embedder = tmp_path / "embedder" / "v-test"
    monkeypatch.setattr(retrieval, "resolve_model", lambda ref: embedder)
    monkeypatch.setattr(retrieval, "cache_dir", lambda folder: tmp_path)
    monkeypatch.setattr(retrieval, "product_vectors", lambda folder, count, threads: unit(count, 0))
    monkeypatch.setattr(retrieval, "query_vectors", lambda folder, n, threads: unit(n, 1))
    monkeypatch.setattr(retrieval, "machine", lambda: {})
    monkeypatch.setattr(retrieval, "save_result", lambda out, name, result: results.update({name: result}))
    monkeypatch.setattr(retrieval, "plot", lambda result, path: None)
    assert retrieval.main(["--sizes", "500", "--queries", "20", "--kinds", "hnsw", "--ef-search", "16",
                           "--threads", "1", "--out", str(tmp_path)]) == 0
    result = results["retrieval"]
    assert result["embedder_version"] == "v-test"
    assert [run["products"] for run in result["runs"]] == [500] and "hnsw" in result["runs"][0]
