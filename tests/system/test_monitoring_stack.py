"""The monitoring proven against the real thing: the running app, a real Prometheus scraping Ray's
metrics agent and a real Alertmanager, on 127.0.0.1.

Real traffic (the embedded default, and a Bedrock-backed app on the Bedrock stand-in with throttling
and a too-tight search deadline, so that the Bedrock, degraded and 503 panels have something to show);
then every query of every dashboard panel must return data from Prometheus; then traffic that drifts
must raise the drift gauge and bring the drift alert to a webhook behind the Alertmanager.
The alert rules are the shipped ones with their `for:` durations cut to 0s (the durations themselves
are covered by `promtool test rules`).
"""
import json
import re
import time
from pathlib import Path

import pytest

from bedrock_standin import BedrockStandIn
from models.datasets import load_intents
from monitoring.local_stack import RULES, LocalStack, free_port
from recording_server import recording_server

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "monitoring" / "dashboards").glob("*.json"))
# queries that need hardware this machine does not have
NEEDS_GPU = re.compile(r"ray_node_gpus_")
# chitchat in other languages, long and rambling: another intent mix, other lengths, other confidence
DRIFTING = [
    "hallo zusammen, ich wollte nur mal kurz hallo sagen und fragen wie es euch heute so geht, alles gut bei euch?",
    "buenas noches a todos, solo pasaba por aquí para saludar y contaros que hoy ha sido un día larguísimo",
    "ciao ragazzi, oggi piove tantissimo qui a milano e non ho proprio voglia di uscire di casa, voi che fate?",
    "bonjour tout le monde, je voulais juste dire merci pour votre gentillesse, vous êtes vraiment super sympas",
    "olá pessoal, tudo bem com vocês? hoje acordei cedo demais e agora estou morrendo de sono no trabalho",
    "kumusta kayo diyan, sana okay lang kayo, ang init dito sa maynila ngayon grabe talaga hindi ako makatulog",
    "konnichiwa minna san, kyou wa totemo atsui desu ne, genki desu ka, watashi wa chotto tsukareta kedo daijoubu",
    "guten morgen, wisst ihr eigentlich wie spät es gerade in tokio ist, ich kann mich nie an die zeitzone erinnern",
    "hola hola, me llamo lucía y estoy aburrida en el autobús, me cuentas un chiste para pasar el rato por favor",
    "salut, tu peux me dire quel temps il fait chez toi aujourd'hui, ici à lyon c'est gris depuis trois jours",
]


@pytest.fixture(scope="module")
def webhook():
    with recording_server() as (url, received):
        yield f"{url}/alerts", received


@pytest.fixture(scope="module")
def stack(base_url, metrics_url, webhook, tmp_path_factory):
    folder = tmp_path_factory.mktemp("monitoring")
    rules = []
    for path in RULES:
        fast = folder / path.name
        fast.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", path.read_text()))
        rules.append(fast)
    metrics_port = int(metrics_url.split(":")[2].split("/")[0])
    # LocalStack's default 5 s scrape interval, not 1 s: a scrape times out at its interval, and late in the suite
    # Ray's metrics agent took over 1 s to answer (318 scrapes of a run, every one `up` 0 at 1.009 s)
    with LocalStack(folder, [metrics_port], webhook_url=webhook[0], rules=rules,
                    prometheus_port=free_port(), alertmanager_port=free_port()) as running:
        yield running


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        stack_ = list(json.loads(path.read_text())["panels"])
        while stack_:
            panel = stack_.pop()
            stack_ += panel.get("panels", [])
            out += [(path.stem, panel["title"], t["expr"]) for t in panel.get("targets", []) if t.get("expr")]
    return out


def send_traffic(client):
    for ex in load_intents("test")[:48]:
        assert client.post("/v1/chat", json={"query": ex.text}).status_code == 200
    unsure = [client.post("/v1/chat", json={"query": q}).json()["intent"]["low_confidence"]
              for q in ("canada", "can you check the price and the shipping", "price", "one piece or naruto",
                        "berserk?", "and the other one", "deluxe", "the box")]
    assert any(unsure)  # the low-confidence panels need at least one
    client.post("/v1/chat", json={"query": "do you ship to canada", "stream": True})
    client.post("/v1/classify", json={"texts": ["hi", "where is my order 4417-2210"]})
    client.post("/v1/embed", json={"texts": ["berserk"]})
    client.post("/v1/search", json={"query": "dark fantasy", "top_k": 3})
    client.post("/v1/rerank", json={"query": "berserk", "documents": ["Berserk", "Yotsuba&!"]})
    assert client.post("/v1/chat", json={"query": "  "}).status_code == 400


def send_bedrock_traffic(bedrock, standin):
    for query in ("hi there", "thanks a lot", "who are you"):
        assert bedrock.post("/v1/chat", json={"query": query}).json()["usage"]["input_tokens"] > 0
    r = bedrock.post("/v1/chat", json={"query": "how many volumes does Monster have"})
    assert r.status_code == 503 and r.headers["retry-after"]
    standin.mode = "throttle"
    for query in ("hello", "good morning", "thank you", "bye"):
        assert bedrock.post("/v1/chat", json={"query": query}).json()["degraded"]
    standin.mode = "ok"


def test_every_dashboard_query_returns_data(client, deploy_app, stack):
    send_traffic(client)
    queries = panel_queries()
    assert len(queries) >= 30
    with BedrockStandIn() as standin:
        args = {"generator_backend": "bedrock",
                "timeouts": {"search": 0.0001},  # every retrieval misses its deadline: 503 + Retry-After
                "bedrock": standin.settings()}
        with deploy_app("bedrock_system", args) as bedrock:
            send_bedrock_traffic(bedrock, standin)
            # A gauge lives as long as the replica that sets it: Ray's metrics agent drops a series not reported
            # for two export intervals (~20 s), so the Bedrock breaker panel has data while the Bedrock app runs,
            # not after: look while it does (deleting it may take longer than 20 s, e.g. the Gateway's drain)
            deadline, empty = time.monotonic() + 120, queries
            while empty and time.monotonic() < deadline:
                empty = [(d, title, expr) for d, title, expr in queries
                         if not NEEDS_GPU.search(expr) and not stack.query(expr)]
                time.sleep(2)
    assert not empty, "\n".join(f"{d} / {title}: {expr}" for d, title, expr in empty)
    assert all("GPU" in title for _, title, expr in queries if NEEDS_GPU.search(expr))  # the only exception


def test_drifting_traffic_raises_the_gauge_and_fires_the_alert(client, stack, webhook):
    _, received = webhook
    for i in range(130):
        assert client.post("/v1/chat", json={"query": DRIFTING[i % len(DRIFTING)]}).status_code == 200
    # The app is shared with the earlier tests (fuzzing among them), so the alert may have fired before this
    # traffic, and the gauge is set at the monitor's next evaluation: wait for both the gauge and the alert
    deadline, share, firing = time.monotonic() + 120, 0.0, []
    while time.monotonic() < deadline and not (share > 0.5 and firing):
        time.sleep(1)
        result = stack.query("max(ray_mangaassist_drift_share)")
        share = float(result[0]["value"][1]) if result else 0.0
        firing = [a for _, body in received for a in json.loads(body)["alerts"]
                  if a["labels"]["alertname"] == "MangaAssistDriftDetected" and a["status"] == "firing"]
    assert share > 0.5
    assert firing, f"no drift alert reached the webhook; drift share {share}"
    assert firing[0]["annotations"]["summary"]
