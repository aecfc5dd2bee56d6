"""Generator deployment: the embedded template generator (grounded, streamed word by word).

Every title, price, volume count or policy fact in an answer is read from a source document
passed in: catalog facts from the series' metadata, policy facts as verbatim sentences of the
retrieved passage. The generator never invents one.
"""
from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Iterator

from ray import serve

GREETING = re.compile(r"\b(hi|hello|hey|hiya|yo|hola|bonjour|konnichiwa|kon'?nichiwa|ohayo|good (morning|evening|afternoon))\b", re.I)
THANKS = re.compile(r"\b(thanks?|thank you|thx|ty|arigato|arigatou|gracias|merci|danke|salamat)\b", re.I)
BYE = re.compile(r"\b(bye|goodbye|see ya|cya|later|adios|sayonara|ciao)\b", re.I)
WORD = re.compile(r"[a-z0-9]+")
STOP = frozenset("a an the and or of to in on for is are do does you your my i me it can how what when where which with "
                 "be if at by from this that there have has will would could should get any about".split())
INTERRUPTED = "\n\n[The answer was interrupted. From our documents:]\n"
CAPABILITIES = ("I can recommend manga, find series and volumes, check prices and stock, and answer questions "
                "about shipping, returns and orders.")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> set[str]:
    return {_stem(w) for w in WORD.findall(text.lower()) if w not in STOP}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.strip()) > 2]


def money(price: float) -> str:
    return f"${price:.2f}"


def stock(in_stock: bool) -> str:
    return "in stock" if in_stock else "out of stock"


class TemplateGenerator:
    """Composes the answer for an intent from reranked sources (dicts with id, title, text, metadata)."""

    def compose(self, intent: str, query: str, sources: list[dict], context: dict | None = None) -> str:
        context = context or {}
        if context.get("low_confidence"):
            return self._conservative(intent, query, sources)
        method = getattr(self, f"_{intent}", None)
        if intent == "chitchat" or method is None:
            return self._chitchat(query)
        if not sources:
            return ("I couldn't find anything in our catalog or store policies that matches that. "
                    "Could you rephrase, or give me a title or a topic?")
        return method(query, sources, context)

    def stream(self, *args, **kwargs) -> Iterator[str]:
        """Word-by-word deltas whose concatenation is exactly `compose(...)`."""
        for token in re.findall(r"\S+\s*", self.compose(*args, **kwargs)):
            yield token

    # --- catalog intents ------------------------------------------------------------------------

    @staticmethod
    def _series_line(doc: dict) -> str:
        m = doc["metadata"]
        return (f"{doc['title']} by {m['author']} ({m['demographic']}; {', '.join(m['genres'])}; "
                f"{m['status']}, {m['volumes']} volumes)")

    def _recommendation(self, query, sources, context):
        lines = [f"- {self._series_line(d)}" for d in sources]
        reference = context.get("reference")
        intro = f"If you liked {reference}, try these:" if reference else "Here are some picks for you:"
        return "\n".join([intro, *lines])

    def _editions(self, doc: dict, volume: int | None) -> list[str]:
        out = []
        for e in doc["metadata"]["editions"]:
            if volume is not None and e["edition"] == "standard":
                out.append(f"{doc['title']}, Vol. {volume} ({e['name']}): {money(e['price'])}, {stock(e['in_stock'])}")
            elif volume is None or e["edition"] != "standard":
                books = f", {e['books']} books" if e["edition"] != "box_set" else ""
                out.append(f"{doc['title']} {e['name']}{books}: {money(e['price'])}"
                           f"{' per book' if e['edition'] != 'box_set' else ''}, {stock(e['in_stock'])}")
        return out

    def _volume_note(self, doc: dict, volume: int | None) -> str | None:
        volumes = doc["metadata"]["volumes"]
        if volume is not None and volume > volumes:
            return f"{doc['title']} has {volumes} volumes, so there is no Vol. {volume}."
        return None

    def _product_search(self, query, sources, context):
        top = sources[0]
        volume = context.get("volume")
        note = self._volume_note(top, volume)
        head = note or f"Yes, we carry {self._series_line(top)}."
        lines = [f"- {line}" for line in self._editions(top, None if note else volume)]
        others = [d["title"] for d in sources[1:3]]
        tail = [f"You might also be looking for: {', '.join(others)}."] if others else []
        return "\n".join([head, *lines, *tail])

    def _price_availability(self, query, sources, context):
        top = sources[0]
        volume = context.get("volume")
        note = self._volume_note(top, volume)
        lines = [f"- {line}" for line in self._editions(top, None if note else volume)]
        return "\n".join([note or f"Prices and stock for {top['title']}:", *lines])

    def _product_question(self, query, sources, context):
        top = sources[0]
        m = top["metadata"]
        synopsis = _sentences(top["text"].split(f"{m['volumes']} volumes.", 1)[-1])
        facts = (f"{top['title']} is a {m['demographic']} manga by {m['author']}, first serialized in {m['year']}. "
                 f"It is {m['status']}, with {m['volumes']} volumes. Genres: {', '.join(m['genres'])}.")
        return " ".join([facts, *synopsis[:1]])

    # --- policy intents ---------------------------------------------------------------------------

    def _quote(self, query: str, sources: list[dict], limit: int = 3) -> str:
        """The sentences of the top policy (its passages among the sources) that share the most
        terms with the question, verbatim, in document order. Headings ("...:") are not facts."""
        wanted = _terms(query)
        policy = sources[0]["metadata"].get("policy_id")
        passages = [d for d in sources if d["metadata"].get("policy_id") == policy] or sources[:1]
        passages.sort(key=lambda d: d["metadata"].get("passage", 0))
        sentences = [s for d in passages for s in _sentences(d["text"].removeprefix(d["title"] + "."))
                     if not s.endswith(":")]
        ranked = sorted(range(len(sentences)), key=lambda i: (-len(_terms(sentences[i]) & wanted), i))
        chosen = sorted(ranked[:limit])
        return f"From our {sources[0]['title']} policy: " + " ".join(sentences[i] for i in chosen)

    def _shipping(self, query, sources, context):
        return self._quote(query, sources)

    def _returns_refunds(self, query, sources, context):
        return self._quote(query, sources)

    def _order_status(self, query, sources, context):
        order = context.get("order_number")
        lead = (f"I can't look up live orders here, so I can't see order {order} itself. " if order
                else "I can't look up live orders here. ")
        return lead + self._quote(query, sources)

    # --- no retrieval -----------------------------------------------------------------------------

    @staticmethod
    def _chitchat(query: str) -> str:
        if THANKS.search(query):
            return "You're welcome! Anything else I can help you find?"
        if BYE.search(query):
            return "Bye for now, and happy reading!"
        if GREETING.search(query):
            return f"Hi! I'm MangaAssist, the store's shopping assistant. {CAPABILITIES}"
        return f"I'm MangaAssist, the store's shopping assistant, so that's outside what I can help with. {CAPABILITIES}"

    def _conservative(self, intent: str, query: str, sources: list[dict]) -> str:
        """Low confidence: say so, point at the closest document, state no specifics."""
        if not sources:
            return f"I'm not sure I understood. {CAPABILITIES} Could you rephrase?"
        titles = ", ".join(d["title"] for d in sources[:2])
        return (f"I'm not sure I understood. Were you asking about {titles}? "
                "Tell me a bit more and I can give you the details.")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class Generator:
    """Grounded answers: the template (default), or Claude on Bedrock with the template as fallback.

    Both methods return/yield dicts: `{"answer"|"delta", ...}` then `degraded` reasons and token
    usage, so the gateway can say what degraded and count what it cost."""

    def __init__(self, backend: str = "template", bedrock: dict | None = None):
        from .security import install_log_redaction

        install_log_redaction("ray.serve")  # Bedrock's errors are logged here
        self.template = TemplateGenerator()
        self.claude = None
        if backend == "bedrock":
            from .backends.bedrock import BedrockSettings, ClaudeGenerator

            self.claude = ClaudeGenerator(BedrockSettings.model_validate(bedrock or {}))
            # the breaker's state from the start (closed), not only after the first Bedrock call: a replica
            # that has not called Claude yet shows on the dashboard, and its alert has a series to watch
            for operation in ("converse", "converse_stream"):
                bedrock_health(operation, self.claude.breaker)
        self.backend = backend

    def generate(self, intent: str, query: str, sources: list[dict], context: dict) -> dict:
        if self.claude is None:
            return {"answer": self.template.compose(intent, query, sources, context), "degraded": [], "usage": None}
        from .backends.bedrock import BackendUnavailable

        try:
            result = self.claude.generate(intent, query, sources, context)
        except BackendUnavailable as exc:
            bedrock_health("converse", self.claude.breaker, exc.reason)
            return {"answer": self.template.compose(intent, query, sources, context), "degraded": [exc.reason],
                    "usage": None}
        bedrock_health("converse", self.claude.breaker)
        return {"answer": result.text, "degraded": _truncation(result), "usage": _usage(result)}

    async def stream(self, intent: str, query: str, sources: list[dict], context: dict) -> AsyncIterator[dict]:
        """Async, so that a cancelled request (the shopper went away, or the gateway's deadline)
        stops here between two deltas and closes Claude's stream: no orphaned generation."""
        items = self._stream(intent, query, sources, context)
        if self.claude is None:  # the template: microseconds, nothing to offload
            for item in items:
                yield item
            return
        # botocore blocks: pull each item in a thread of this stream's own, so that the close below
        # runs after a pending read, never beside it (a generator cannot be closed while it runs)
        pull = ThreadPoolExecutor(1, thread_name_prefix="claude-stream")
        try:
            while (item := await asyncio.wrap_future(pull.submit(next, items, None))) is not None:
                yield item
        finally:
            pull.submit(items.close)  # GeneratorExit in Claude's stream closes the HTTP response
            pull.shutdown(wait=False)

    def _stream(self, intent: str, query: str, sources: list[dict], context: dict) -> Iterator[dict]:
        if self.claude is None:
            for token in self.template.stream(intent, query, sources, context):
                yield {"delta": token}
            yield {"degraded": [], "usage": None}
            return
        from .backends.bedrock import BackendUnavailable, GenerationResult

        sent = False
        try:
            for item in self.claude.stream(intent, query, sources, context):
                if isinstance(item, GenerationResult):
                    bedrock_health("converse_stream", self.claude.breaker)
                    yield {"degraded": _truncation(item), "usage": _usage(item)}
                    return
                sent = True
                yield {"delta": item}
        except BackendUnavailable as exc:
            bedrock_health("converse_stream", self.claude.breaker, exc.reason)
            # the shopper still gets a grounded answer; if Claude's was cut off, say where it restarts
            if sent:
                yield {"delta": INTERRUPTED}
            for token in self.template.stream(intent, query, sources, context):
                yield {"delta": token}
            yield {"degraded": [exc.reason], "usage": None}

    def ready(self) -> dict:
        return {"backend": self.backend, **({"model": self.claude.name} if self.claude else {})}


BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def bedrock_health(operation: str, breaker, reason: str | None = None) -> None:
    """Breaker state and throttles, after every Bedrock call (the SRE's view of the dependency)."""
    from monitoring.metrics import metric, set_gauge

    set_gauge("mangaassist_bedrock_breaker_state", BREAKER_STATES[breaker.state], tags={"operation": operation})
    if reason == "bedrock_throttled":
        metric("mangaassist_bedrock_throttles").inc(tags={"operation": operation})


def _truncation(result) -> list[str]:
    return ["generation_truncated"] if result.truncated else []


def _usage(result) -> dict:
    return {"model": result.model_id, "input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
            "cost_usd": result.cost_usd, "stop_reason": result.stop_reason}
