"""Intent routing (DESIGN §1) and the small text parsers the gateway needs before retrieval."""
from __future__ import annotations

import re

CATALOG_INTENTS = frozenset({"recommendation", "product_search", "product_question", "price_availability"})
POLICY_INTENTS = frozenset({"shipping", "returns_refunds", "order_status"})


def index_for(intent: str) -> str | None:
    """Which index answers an intent; None means no retrieval (chitchat)."""
    if intent in CATALOG_INTENTS:
        return "catalog"
    if intent in POLICY_INTENTS:
        return "policy"
    return None


_VOLUME = re.compile(r"(?:\b(?:vol(?:ume)?s?\.?|v\.|tomo|band)|#)\s*(\d{1,3})\b", re.I)
_ORDER = re.compile(
    r"\b(MA-\d{6})\b"                       # current format
    r"|(?<![\w-])(\d{4}-\d{4})(?![\w-])"    # 4417-2210
    r"|#\s?(\d{6,10})\b"                    # #88213945
    r"|\border\s*(?:no\.?|number|num|#)?\s*:?\s*(\d{6,10})\b",  # order 12345678
    re.I,
)


def volume_number(text: str) -> int | None:
    match = _VOLUME.search(text)
    return int(match.group(1)) if match else None


def order_number(text: str) -> str | None:
    match = _ORDER.search(text)
    if not match:
        return None
    value = next(g for g in match.groups() if g)
    return value.upper()


def normalize_title(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9]+", " ", text.lower())).strip()


_LIKE = re.compile(r"\b(like|similar to|such as|same vibe as|if i (?:liked|loved|enjoyed)|fans? of)\b", re.I)


def asks_for_similar(text: str) -> bool:
    """'something like Berserk': the named series is the reference, never the answer."""
    return bool(_LIKE.search(text))


def similarity(reference: dict, candidate: dict) -> float:
    """Item-to-item similarity of two catalog entries' metadata, in [0, 1]: what "more like X"
    means to a shopper (shared genres above all, then themes and the demographic)."""
    def jaccard(a, b) -> float:
        a, b = set(a), set(b)
        return len(a & b) / len(a | b) if a | b else 0.0

    return (0.6 * jaccard(reference["genres"], candidate["genres"])
            + 0.2 * jaccard(reference["themes"], candidate["themes"])
            + 0.2 * (reference["demographic"] == candidate["demographic"]))
