"""`make soak`: the default application for 10 minutes at 70% of its measured capacity. Zero errors,
and no replica's resident memory grows by 10% or more. Not part of `make test` (only collected
when named; MANGAASSIST_SOAK_S shortens it)."""
import os
import time

import psutil
import pytest

from load import Load, percentile

pytestmark = pytest.mark.slow  # collected only when named: pyproject's norecursedirs keeps it out of `make test`

SOAK_S = float(os.environ.get("MANGAASSIST_SOAK_S", 600))


def replica_rss(app: str = "mangaassist") -> dict[str, int]:
    """Resident memory of each replica process of `app` (Ray titles them ray::ServeReplica:<app>:<deployment>)."""
    rss = {}
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(p.info["cmdline"] or [])
        if title.startswith(f"ray::ServeReplica:{app}:"):
            rss[title.split()[0].rsplit(":", 1)[1]] = p.info["memory_info"].rss
    return rss


def test_soak_at_70_percent_of_capacity(base_url):
    url = f"{base_url}/v1/chat"
    with Load(url, clients=8, max_s=30) as probe:  # saturating closed loop: the capacity
        time.sleep(20)
    done = [o for o in probe.outcomes if o.status == 200]
    capacity = len(done) / 20
    rate = 0.7 * capacity
    with Load(url, clients=8, rate=rate, max_s=60, stream_every=5) as warm:  # allocations settle
        time.sleep(45)
    before = replica_rss()
    assert len(before) >= 6, before
    t0 = time.monotonic()
    with Load(url, clients=8, rate=rate, max_s=SOAK_S + 30, stream_every=5) as load:
        time.sleep(SOAK_S)
    wall = time.monotonic() - t0
    after = replica_rss()
    outcomes = load.outcomes
    statuses = [o.status for o in outcomes]
    growth = {name: after[name] / before[name] - 1 for name in before}
    latencies = [o.seconds for o in outcomes]
    print(f"\nsoak: capacity {capacity:.1f} chat/s, held {len(outcomes) / wall:.1f}/s (target {rate:.1f}) for "
          f"{wall:.0f} s: {len(outcomes)} requests, {len(outcomes) - statuses.count(200)} errors; p50 "
          f"{percentile(latencies, 0.5):.2f} s p99 {percentile(latencies, 0.99):.2f} s; RSS growth "
          + ", ".join(f"{n} {before[n] / 2**20:.0f}->{after[n] / 2**20:.0f} MiB ({g:+.1%})" for n, g in growth.items()))
    assert all(o.status == 200 for o in warm.outcomes + outcomes), {s: statuses.count(s) for s in set(statuses)}
    assert len(outcomes) >= 0.8 * rate * wall  # the load was held
    assert max(growth.values()) < 0.10, growth
