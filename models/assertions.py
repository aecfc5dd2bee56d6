"""Answer checks of the graph evaluation, computed from text alone (no LLM judge):

- the knowledge base: the text of every catalog series and policy passage by the id the app cites;
- claims in an answer (titles, prices, volume counts, volume references, other numbers, policy
  terms) and whether the cited sources support each one (faithfulness);
- required-fact coverage and refusal detection;
- Promptfoo-style assertions read from YAML, each reported pass/fail per case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from .datasets import load_catalog
from .paths import DATA_DIR

GOLDEN_DIR = DATA_DIR / "golden"

# --- normalization ------------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def normalize(text: str) -> str:
    """Lowercase, one spelling of volume references ("Vol. 3", "volume 3" -> "vol 3"), one space."""
    text = text.translate(_QUOTES).lower()
    text = re.sub(r"\bvol(?:ume)?s?\b\.?\s*(?=\d)", "vol ", text)
    return re.sub(r"\s+", " ", text).strip()


def bare(text: str) -> str:
    """Letters and digits only: how a shopper may type a title ("haikyu" for "Haikyu!!")."""
    return " ".join(re.findall(r"[a-z0-9]+", text.translate(_QUOTES).lower()))


def contains(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` on word boundaries, after normalization of both."""
    return re.search(rf"(?<![\w$]){re.escape(normalize(phrase))}(?!\w)", normalize(text)) is not None


# --- the knowledge base -------------------------------------------------------------------------


def _money(price: float) -> str:
    return f"${price:.2f}"


@dataclass
class KnowledgeBase:
    """Support text per citable id: a series' catalog document plus its editions (name, price,
    books, stock), or a policy passage verbatim. Ids are the app's: `<series-id>`, `<policy-id>#<n>`."""

    texts: dict[str, str]
    documents: dict[str, str]     # id -> the text the app embeds and reranks
    titles: dict[str, str]        # series id -> title
    volumes: dict[str, int]       # series id -> volume count

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> "KnowledgeBase":
        from serve.index import corpus  # the documents exactly as the app indexes and reranks them

        texts, documents, titles, volumes = {}, {}, {}, {}
        for doc in corpus("catalog"):
            documents[doc.id] = doc.text
            m = doc.metadata
            editions = " ".join(f"{e['name']}: {_money(e['price'])}, {e['books']} books, "
                                f"{'in stock' if e['in_stock'] else 'out of stock'}." for e in m["editions"])
            texts[doc.id] = f"{doc.text} Editions: {editions}"
            titles[doc.id], volumes[doc.id] = doc.title, m["volumes"]
        for doc in corpus("policy"):
            texts[doc.id] = documents[doc.id] = doc.text
        return cls(texts, documents, titles, volumes)

    def document_id(self, cited_id: str) -> str:
        """Graded relevance is per document: a policy passage counts for its policy."""
        return cited_id.split("#", 1)[0]

    def policy_text(self, policy_id: str) -> str:
        return "\n".join(t for i, t in self.texts.items() if i.split("#", 1)[0] == policy_id and "#" in i)

    def support(self, ids: list[str]) -> str:
        """Text of the cited sources; a bare policy id stands for all of its passages."""
        parts = []
        for i in ids:
            parts.append(self.texts.get(i) or self.policy_text(i))
        return "\n".join(p for p in parts if p)


# --- claims and faithfulness ----------------------------------------------------------------------

PRICE = re.compile(r"\$\s?(\d[\d,]*(?:\.\d{1,2})?)")
COUNT = re.compile(r"\b(\d+)\s+(volumes?|books?)\b", re.I)
VOLUME_REF = re.compile(r"\b(no\s+)?vol(?:ume)?\.?\s*(\d{1,3})\b", re.I)
NUMBER = re.compile(r"(?<![\w.$])\d+(?:[.:,]\d+)*(?:-\d+)?%?(?![\w])")
SENTENCE_START = re.compile(r"(^|[.!?]\s+|\n\s*(?:-\s+)?)$")


@dataclass
class Claim:
    kind: str      # title | price | volume_count | volume_ref | number | policy_term
    text: str
    supported: bool


@dataclass
class Faithfulness:
    claims: list[Claim] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """Supported claims / claims (RAGAS); None when the answer makes no checkable claim."""
        return sum(c.supported for c in self.claims) / len(self.claims) if self.claims else None

    def unsupported(self, kinds: tuple[str, ...] | None = None) -> list[Claim]:
        return [c for c in self.claims if not c.supported and (kinds is None or c.kind in kinds)]


def _prices(text: str) -> set[float]:
    return {float(m.group(1).replace(",", "")) for m in PRICE.finditer(text)}


def _title_spans(answer: str, kb: KnowledgeBase) -> list[tuple[int, int, str]]:
    """Catalog titles in the answer, case-sensitive and longest first. A one-word title that only
    starts a sentence ("Another ...", "Days ...") is not evidence of a title, so it is skipped."""
    spans: list[tuple[int, int, str]] = []
    for sid, title in sorted(kb.titles.items(), key=lambda kv: -len(kv[1])):
        for m in re.finditer(rf"(?<!\w){re.escape(title)}(?!\w)", answer):
            if any(s <= m.start() < e for s, e, _ in spans):
                continue
            if " " not in title and SENTENCE_START.search(answer[: m.start()]):
                continue
            spans.append((m.start(), m.end(), sid))
    return spans


def extract_claims(answer: str, query: str, cited: list[str], kb: KnowledgeBase,
                   policy_terms: list[str] = ()) -> Faithfulness:
    """Every title, price, volume count, volume reference, other number and policy term the answer
    states, each checked against the text of the cited sources. Numbers the shopper wrote
    (an order number, a volume) are echoes, not claims; volume references are always checked
    (a "Vol. 80" of a 72-volume series is unfaithful even when the shopper asked for it)."""
    support = kb.support(cited)
    support_norm = normalize(support)
    cited_docs = {kb.document_id(c) for c in cited}
    result = Faithfulness()
    masked = answer
    for start, end, sid in _title_spans(answer, kb):
        title = kb.titles[sid]
        ok = sid in cited_docs or contains(support, title) or f" {bare(title)} " in f" {bare(query)} "
        result.claims.append(Claim("title", title, ok))
        masked = masked[:start] + " " * (end - start) + masked[end:]   # numbers in titles are not claims
    support_prices = _prices(support) | _prices(query)
    for m in PRICE.finditer(masked):
        value = float(m.group(1).replace(",", ""))
        result.claims.append(Claim("price", m.group(0), value in support_prices))
    masked = PRICE.sub(lambda m: " " * len(m.group(0)), masked)
    cited_volumes = [kb.volumes[d] for d in cited_docs if d in kb.volumes]
    for m in VOLUME_REF.finditer(masked):
        n = int(m.group(2))
        ok = any(n > v for v in cited_volumes) if m.group(1) else any(1 <= n <= v for v in cited_volumes)
        result.claims.append(Claim("volume_ref", m.group(0).strip(), ok))
    masked = VOLUME_REF.sub(lambda m: " " * len(m.group(0)), masked)
    for m in COUNT.finditer(masked):
        n = m.group(1)
        ok = re.search(rf"(?<!\d){n}\s+(?:volumes?|books?)\b", support_norm) is not None
        result.claims.append(Claim("volume_count", m.group(0), ok))
    masked = COUNT.sub(lambda m: " " * len(m.group(0)), masked)
    query_numbers = set(NUMBER.findall(query))
    support_numbers = set(NUMBER.findall(support))
    for token in NUMBER.findall(masked):
        if token in query_numbers:
            continue
        result.claims.append(Claim("number", token, token in support_numbers))
    for term in policy_terms:
        if contains(answer, term):
            result.claims.append(Claim("policy_term", term, contains(support, term)))
    # a claim repeated is one claim (an edition list names its series on every line)
    result.claims = list({(c.kind, c.text): c for c in result.claims}.values())
    return result


def fact_coverage(answer: str, facts: list[list[str]]) -> float | None:
    """Share of required facts the answer states (a fact is a list of accepted phrasings)."""
    if not facts:
        return None
    return sum(any(contains(answer, alt) for alt in fact) for fact in facts) / len(facts)


def missing_facts(answer: str, facts: list[list[str]]) -> list[str]:
    return [fact[0] for fact in facts if not any(contains(answer, alt) for alt in fact)]


def fact_is_verifiable(fact: str, relevant: list[str], kb: KnowledgeBase) -> bool:
    """A golden fact must be read from the files: it occurs in a relevant document's text, or it is
    a volume reference that the relevant series' volume count makes true."""
    if contains(kb.support(relevant), fact):
        return True
    m = VOLUME_REF.fullmatch(fact.strip()) or VOLUME_REF.fullmatch(re.sub(r"^there is ", "", fact.strip()))
    if m:
        volumes = [kb.volumes[r] for r in relevant if r in kb.volumes]
        n = int(m.group(2))
        return any(n > v for v in volumes) if m.group(1) else any(1 <= n <= v for v in volumes)
    return False


# --- refusal ----------------------------------------------------------------------------------


def is_refusal(answer: str, refusal_patterns: list[str], affirmative_patterns: list[str]) -> bool:
    """The answer says we do not have it, and does not also claim to carry something."""
    said_no = any(re.search(p, answer, re.I) for p in refusal_patterns)
    said_yes = any(re.search(p, answer, re.I) for p in affirmative_patterns)
    return said_no and not said_yes


# --- Promptfoo-style assertions ----------------------------------------------------------------


@dataclass
class AssertionSpec:
    name: str
    type: str
    description: str = ""
    when: dict = field(default_factory=dict)
    value: object = None

    def applies(self, case: dict) -> bool:
        """`when` selects cases: intents (expected), tags (any of), retrieval (expected intent retrieves)."""
        w = self.when
        if "intents" in w and case["intent"] not in w["intents"]:
            return False
        if "tags" in w and not set(w["tags"]) & set(case.get("tags", [])):
            return False
        if "not_tags" in w and set(w["not_tags"]) & set(case.get("tags", [])):
            return False
        if "retrieval" in w and bool(case.get("index")) != bool(w["retrieval"]):
            return False
        return True


@dataclass
class EvalConfig:
    """assertions.yaml: the assertions plus the vocabularies the checks use."""

    assertions: list[AssertionSpec]
    policy_terms: list[str]
    refusal_patterns: list[str]
    affirmative_patterns: list[str]

    @classmethod
    def load(cls, path: Path = GOLDEN_DIR / "assertions.yaml") -> "EvalConfig":
        raw = yaml.safe_load(Path(path).read_text())
        specs = [AssertionSpec(**a) for a in raw["assertions"]]
        unknown = {s.type for s in specs} - set(CHECKS)
        if unknown:
            raise ValueError(f"{path}: unknown assertion types {sorted(unknown)}; known: {sorted(CHECKS)}")
        return cls(specs, raw.get("policy_terms", []), raw["refusal_patterns"], raw["affirmative_patterns"])


def _check_cites_source(case, result, spec, cfg) -> bool:
    return bool(result["sources"])


def _check_no_sources(case, result, spec, cfg) -> bool:
    return not result["sources"]


def _check_no_unsupported(case, result, spec, cfg) -> bool:
    kinds = tuple(spec.value) if spec.value else None
    return not result["faithfulness"].unsupported(kinds)


def _check_intent(case, result, spec, cfg) -> bool:
    return result["intent"] == case["intent"]


def _check_refusal(case, result, spec, cfg) -> bool:
    return is_refusal(result["answer"], cfg.refusal_patterns, cfg.affirmative_patterns)


def _check_not_contains(case, result, spec, cfg) -> bool:
    values = spec.value if isinstance(spec.value, list) else [spec.value]
    return not any(contains(result["answer"], v) for v in values)


def _check_not_regex(case, result, spec, cfg) -> bool:
    return re.search(str(spec.value), result["answer"]) is None


def _check_facts(case, result, spec, cfg) -> bool:
    coverage = fact_coverage(result["answer"], case.get("facts", []))
    return coverage is None or coverage >= float(spec.value if spec.value is not None else 1.0)


def _check_no_reference_title(case, result, spec, cfg) -> bool:
    """'Something like X' never recommends X itself."""
    return not set(case.get("exclude", [])) & {s["id"] for s in result["sources"]}


def _check_latency(case, result, spec, cfg) -> bool:
    return result["latency_ms"] <= float(spec.value)


def _check_not_degraded(case, result, spec, cfg) -> bool:
    return not result["degraded"]


CHECKS = {
    "cites-source": _check_cites_source,
    "no-sources": _check_no_sources,
    "no-unsupported-claims": _check_no_unsupported,
    "intent-equals": _check_intent,
    "refusal": _check_refusal,
    "not-contains": _check_not_contains,
    "not-regex": _check_not_regex,
    "facts-covered": _check_facts,
    "excludes-reference": _check_no_reference_title,
    "latency-below-ms": _check_latency,
    "not-degraded": _check_not_degraded,
}


def run_assertions(case: dict, result: dict, cfg: EvalConfig) -> dict[str, bool]:
    """{assertion name: passed} for the assertions that apply to this case (global, then the case's own)."""
    outcome = {}
    specs = cfg.assertions + [AssertionSpec(**a) for a in case.get("assert", [])]
    for spec in specs:
        if spec.applies(case):
            outcome[spec.name] = bool(CHECKS[spec.type](case, result, spec, cfg))
    return outcome
