"""The DriftMonitor in the running app: fed off the request path, computing drift on its schedule
against the registered reference, exported as gauges and as Evidently's HTML report."""
import time

from models.datasets import load_intents


def wait_for(client, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        status = client.get("/v1/drift").json()
        if predicate(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_the_monitor_has_the_reference_of_the_served_versions(client):
    status = client.get("/v1/drift").json()
    assert status["reference"].startswith("v-") and status["reference_rows"] == 400
    assert status["reference_error"] is None and status["embeddings"] is True


def test_chat_traffic_reaches_the_window_and_is_evaluated(client, metrics_url):
    import httpx

    # records of earlier tests' chats may still be in the gateway's buffer (flushed every 0.5 s): wait until none come
    before, previous = client.get("/v1/drift").json()["records_seen"], None
    while before != previous:
        time.sleep(1.0)
        before, previous = client.get("/v1/drift").json()["records_seen"], before
    queries = [ex.text for ex in load_intents("test")[:40]]
    for query in queries:
        assert client.post("/v1/chat", json={"query": query}).status_code == 200
    client.post("/v1/chat", json={"query": ""})  # refused (400): not a record
    status = wait_for(client, lambda s: s["records_seen"] >= before + 40 and s["latest"]
                      and s["latest"]["window_size"] == min(120, s["records_seen"]))
    assert status["records_seen"] == before + len(queries)
    latest = status["latest"]
    assert latest["reference_size"] == 400 and latest["window_size"] == min(120, status["records_seen"])
    assert set(latest["features"]) == {"intent", "confidence", "query_length", "retrieval_top_score",
                                       "rerank_top_score", "embedding"}
    assert latest["features"]["intent"]["evaluated"]
    names = ("ray_mangaassist_drift_share", "ray_mangaassist_drift_window_size",
             'ray_mangaassist_drift_detected{', 'ray_mangaassist_drift_score{')
    deadline = time.monotonic() + 30  # a gauge set just now reaches Ray's agent at its next export
    while True:
        text = httpx.get(metrics_url, timeout=10).text
        if all(name in text for name in names) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for name in names:
        assert name in text, name


def test_the_html_report_is_evidentlys(client):
    r = client.get("/v1/drift/report", timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert all(name in r.text for name in ("intent", "confidence", "query_length", "retrieval_top_score"))
    assert len(r.text) > 100_000  # Evidently's self-contained page, not the "no data" one
